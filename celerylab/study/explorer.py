"""The notebooks' "play with it" widget: controls, a Run button, and one output that each run replaces.

    explore(run, status=pg.status, max_retries=(1, 4), backoff_cap=(1, 4), jitter=True)

``ipywidgets.interact_manual`` plus a first call of the function would leave two outputs (the first run's
under the widget, the next ones in it); here the first run, with the defaults, goes into the widget's own
output, so a re-run replaces it. Labels show in full (a setting's name cut to "visibility_t..." says
nothing), and a run that takes more than a moment shows what it is waiting for, from ``status()``
(``Playground.status``: the tasks it waits on and where each one stands).

The line is refreshed by :func:`tick`, which the Playground calls while it waits, on the kernel's main
thread, and only in a run the widget's own button started. The first run, from the cell, sends no widget
message until it is done (:meth:`Explorer.run_quietly`): with widget updates during a cell (a progress
line, an Output widget capturing) nbclient missed the cell's end until its timeout in 4 of 9 headless
runs of notebook 05. A click is a comm message, which nbclient never sends.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

SHOW_AFTER = 1.0  # seconds: quicker runs finish before a progress line would help
EVERY = 0.5  # seconds between two refreshes of the progress line


class Explorer(widgets.interactive):
    """An ``interactive`` with a Run button, full labels and a progress line."""

    def __init__(
        self,
        function: Callable[..., Any],
        status: Callable[[], str] | None = None,
        **controls: Any,
    ):
        super().__init__(function, {"manual": True, "manual_name": "Run"}, **controls)
        self.status = status
        self.progress = widgets.HTML(layout=widgets.Layout(min_height="1.5em"))
        for control in self.kwargs_widgets:
            control.style.description_width = "initial"  # the whole name, however long
            if isinstance(control, widgets.Checkbox):
                control.indent = False
        *controls_, button, out = self.children
        button.button_style = "primary"
        self.children = (*controls_, button, self.progress, out)
        self.runs = 0
        self._began = self._shown = 0.0
        self._clicked = False  # whether the run under way was started by the button (see the module doc)

    def update(self, *args: Any) -> None:
        self.runs += 1
        self._began = self._shown = time.monotonic()
        self._clicked = _handling_a_widget_message()
        _running.append(self)
        try:
            super().update(*args)
        finally:
            _running.remove(self)
            took = time.monotonic() - self._began
            line = f"<small>run {self.runs} took {took:.1f} s</small>" if took >= SHOW_AFTER else ""
            self.progress.value = line

    def run_quietly(self) -> Any:
        """One run whose output is collected in this kernel and handed to the widget in one piece (its
        text first, then its plots). No widget message while the cell runs: several of them (the
        Output widget capturing, clearing, the button disabled and enabled) made nbclient miss the
        end of the cell until its timeout in headless runs. An error propagates: the cell shows it."""
        from IPython.utils.capture import capture_output
        from ipywidgets.widgets.interaction import show_inline_matplotlib_plots

        self.runs += 1
        kwargs = {w._kwarg: w.get_interact_value() for w in self.kwargs_widgets}
        with capture_output() as captured:
            self.result = self.f(**kwargs)
            show_inline_matplotlib_plots()
        outputs = (
            [{"output_type": "stream", "name": "stdout", "text": captured.stdout}] if captured.stdout else []
        )
        outputs += [
            {"output_type": "display_data", "data": shown.data, "metadata": shown.metadata or {}}
            for shown in captured.outputs
        ]
        self.out.outputs = tuple(outputs)
        return self.result

    def tick(self) -> None:
        """Refresh the progress line (at most every ``EVERY`` s, from ``SHOW_AFTER`` s into a run)."""
        now = time.monotonic()
        if not self._clicked or now - self._began < SHOW_AFTER or now - self._shown < EVERY:
            return
        self._shown = now
        what = ""
        if self.status is not None:
            try:
                what = self.status()
            except Exception as exc:  # a status is a courtesy: never break the run for it
                what = f"({type(exc).__name__} reading the status)"
        line = f"⏳ running for {now - self._began:.0f} s" + (f": {what}" if what else "")
        self.progress.value = f"<small>{html.escape(line)}</small>"


def _handling_a_widget_message() -> bool:
    """Is the kernel handling a widget's message (a click) rather than running a cell?"""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        return kernel is not None and kernel.get_parent().get("header", {}).get("msg_type") == "comm_msg"
    except Exception:  # no kernel (a script, a test): no widget to refresh either
        return False


_running: list[Explorer] = []  # the explorers whose run is under way (innermost last)


def tick() -> None:
    """Refresh the progress line of the run under way, if any: what a long wait calls now and then."""
    if _running:
        _running[-1].tick()


def explore(
    function: Callable[..., Any],
    status: Callable[[], str] | None = None,
    first_run: bool = True,
    **controls: Any,
) -> Explorer:
    """Show the widget with (``first_run``) the output of one run with the defaults already inside it, so
    the next run replaces it. Assign the result (``control = explore(...)``): as a cell's bare last line
    it would be shown twice."""
    from IPython.display import display

    explorer = Explorer(function, status, **controls)
    try:
        if first_run:
            explorer.run_quietly()
    finally:
        display(explorer)
    return explorer
