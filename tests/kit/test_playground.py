"""The notebooks' Playground: usable in any cell order, and nothing left when the kernel goes away."""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis

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
