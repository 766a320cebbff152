"""The notebooks' "play with it" widget: controls, a Run button, and one output that each run replaces.

    explore(run, status=pg.status, max_retries=(1, 4), backoff_cap=(1, 4), jitter=True)

``ipywidgets.interact_manual`` plus a first call of the function would leave two outputs (the first run's
under the widget, the next ones in it); here the first run, with the defaults, goes into the widget's own
output, so a re-run replaces it. Labels show in full (a setting's name cut to "visibility_t..." says
nothing), and a run that takes more than a moment shows what it is waiting for, from ``status()``
(``Playground.status``: the tasks it waits on and where each one stands), refreshed from a thread while
the run holds the kernel.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

SHOW_AFTER = 1.0  # seconds: quicker runs finish before a progress line would help
EVERY = 0.5  # seconds between two refreshes of the progress line


class Explorer(widgets.interactive):
    """An ``interactive`` with a Run button, full labels, a progress line and a first run at display."""

    def __init__(
        self, function: Callable[..., Any], status: Callable[[], str] | None = None, **controls: Any
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
        self.update()  # the defaults' run, in the widget's own output: the next run replaces it

    def update(self, *args: Any) -> None:
        self.runs += 1
        done = threading.Event()
        began = time.monotonic()
        ticker = threading.Thread(
            target=self._tick, args=(done, began), name="explorer-progress", daemon=True
        )
        ticker.start()
        try:
            super().update(*args)
        finally:
            done.set()
            ticker.join(timeout=2 * EVERY)
            took = time.monotonic() - began
            self.progress.value = (
                f"<small>run {self.runs} took {took:.1f} s</small>" if took >= SHOW_AFTER else ""
            )

    def _tick(self, done: threading.Event, began: float) -> None:
        """Runs beside the callback (which holds the kernel): widget updates from a thread still reach
        the page, so the line moves while the run waits."""
        if done.wait(SHOW_AFTER):
            return
        while not done.is_set():
            what = ""
            if self.status is not None:
                try:
                    what = self.status()
                except Exception as exc:  # a status is a courtesy: never break the run for it
                    what = f"({type(exc).__name__} reading the status)"
            seconds = time.monotonic() - began
            line = f"⏳ running for {seconds:.0f} s" + (f": {what}" if what else "")
            self.progress.value = f"<small>{html.escape(line)}</small>"
            done.wait(EVERY)


def explore(
    function: Callable[..., Any], status: Callable[[], str] | None = None, **controls: Any
) -> Explorer:
    """Build, run once with the defaults, and display the widget (a cell's last line may call it)."""
    from IPython.display import display

    explorer = Explorer(function, status, **controls)
    display(explorer)
    return explorer
