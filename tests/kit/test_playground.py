"""The notebooks' Playground: usable in any cell order, and nothing left when the kernel goes away."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import redis

from celerylab.study import explorer
from celerylab.study.playground import Playground
from tests.kit.conftest import is_gone

ADD = """
from celery import Celery
app = Celery("demo")

@app.task
def add(x, y):
    return x + y
"""


def namespace_keys(url: str, namespace: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=f"{namespace}:*", count=1000))
    finally:
        client.close()


def test_a_closed_playground_comes_back_when_a_widget_uses_it(no_orphans):
    """Run All ends with pg.close(); a widget clicked afterwards must still work, on the same tasks.py."""
    pg = Playground(broker="redis")
    try:
        pg.write_tasks(ADD)
        pg.start(concurrency=1)
        first = pg.session.ns.name
        pg.close()
        assert pg.closed and not pg._scratch.exists()
        assert namespace_keys(pg.broker.url, first) == []
        result = pg.send("add", 2, 3)  # what a widget does: the worker comes back with the same options
        pg.wait(result)
        assert result.get(timeout=5) == 5
    finally:
        pg.close()
    assert pg.closed and not pg._scratch.exists()


KERNEL_CELL = """
from celerylab.study import explorer
from celerylab.study.playground import Playground
pg = Playground(broker="redis")
pg.write_tasks('''{code}''')
worker = pg.start(concurrency=1)
result = pg.send("add", 2, 3)
assert result.get(timeout=10) == 5
print("STATE " + __import__("json").dumps({{"namespace": pg.session.ns.name, "scratch": str(pg._scratch),
      "pids": [worker.pid, *worker.pool_pids()], "url": pg.broker.url}}))
"""


def test_a_kernel_shut_down_mid_notebook_leaves_no_worker_folder_or_key(tmp_path, no_orphans):
    """As JupyterLab's "Shut Down Kernel" does it, with no closing cell run."""
    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    try:
        output: list[str] = []
        reply = kc.execute_interactive(
            KERNEL_CELL.format(code=ADD),
            timeout=90,
            output_hook=lambda msg: output.append(msg["content"].get("text", "")),
        )
        assert reply["content"]["status"] == "ok", (reply["content"], "".join(output))
        line = next(x for x in "".join(output).splitlines() if x.startswith("STATE "))
        state = json.loads(line.removeprefix("STATE "))
        assert Path(state["scratch"]).exists() and namespace_keys(state["url"], state["namespace"])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)  # a shutdown request, then the kernel exits on its own
    assert all(is_gone(pid) for pid in state["pids"]), "a worker outlived its kernel"
    assert not Path(state["scratch"]).exists(), "the scratch folder outlived its kernel"
    assert namespace_keys(state["url"], state["namespace"]) == [], "the namespace's keys outlived its kernel"


def test_status_says_what_a_wait_is_waiting_for(no_orphans, monkeypatch):
    """A widget's progress line: which tasks, and where each one stands (here: a countdown not yet due)."""
    pg = Playground(broker="redis")
    try:
        pg.write_tasks(ADD)
        assert pg.status() == ""
        pg.start(concurrency=1)
        ticks = []
        monkeypatch.setattr(explorer, "tick", lambda: ticks.append(time.monotonic()))
        result = pg.send("add", 2, 3, countdown=3)
        seen: list[str] = []
        waiter = threading.Thread(target=pg.wait, args=(result,))
        waiter.start()
        deadline = time.monotonic() + 30
        while "due in" not in (line := pg.status()) and time.monotonic() < deadline:
            seen.append(line)
            time.sleep(0.05)  # polling what a progress line polls
        waiter.join(30)
        assert "waiting for 1 of 1 task(s): add[" in line and "try 1 due in" in line, seen[-3:]
        assert ticks, "the wait let a progress line refresh between beats"
        assert pg.status() == "" and result.get(timeout=5) == 5
    finally:
        pg.close()


def test_explorer_labels_in_full_runs_once_at_display_and_shows_progress(monkeypatch):
    from ipywidgets import Checkbox, IntSlider

    from celerylab.study import explorer as module
    from celerylab.study.explorer import Explorer

    calls, shown = [], []

    def run(visibility_timeout=2, acks_late=True):
        calls.append((visibility_timeout, acks_late))
        if len(calls) == 2:  # what a playground's wait does between beats, on this thread
            module.tick()
            shown.append(widget.progress.value)
        return len(calls)

    widget = Explorer(run, status=lambda: "waiting for the rescue worker", visibility_timeout=(1, 6))
    assert calls == [] and widget.result is None
    widget.update()  # what explore() does once it has shown the widget: the defaults' run, from a cell
    assert calls == [(2, True)] and widget.result == 1 and widget.progress.value == ""
    slider, box = widget.kwargs_widgets
    assert isinstance(slider, IntSlider) and isinstance(box, Checkbox)
    assert slider.style.description_width == "initial" and slider.description == "visibility_timeout"
    assert widget.children[-2] is widget.progress and widget.children[-3].description == "Run"
    monkeypatch.setattr(module, "_handling_a_widget_message", lambda: True)  # a click, not a cell
    monkeypatch.setattr(module, "SHOW_AFTER", 0.0)  # show it at once
    monkeypatch.setattr(module, "EVERY", 0.0)
    widget.manual_button.click()
    assert calls[-1] == (2, True) and widget.result == 2
    assert "running for" in shown[0] and "waiting for the rescue worker" in shown[0], shown
    assert "run 2 took" in widget.progress.value
    module.tick()  # no run under way: nothing to refresh
    assert "run 2 took" in widget.progress.value


def test_the_first_run_lands_in_the_widgets_output_in_one_piece():
    """explore() runs once before the widget is shown; its text reaches the widget's output whole."""
    from celerylab.study.explorer import Explorer

    def run(copies=4):
        print(f"{copies} copies")
        return copies

    widget = Explorer(run, copies=(1, 8))
    assert widget.run_quietly() == 4 and widget.result == 4 and widget.runs == 1
    assert widget.out.outputs == ({"output_type": "stream", "name": "stdout", "text": "4 copies\n"},)
