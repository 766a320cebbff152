"""celerylab.engine.inspection on a real worker: prefetch window, reserved and running tasks, pool size; and a
Worker started with concurrency=None, which leaves the pool size to the app's worker_concurrency."""

from __future__ import annotations

import pytest

from celerylab.engine import inspection
from celerylab.engine.timeline import ATTEMPT_START, Recorder
from celerylab.engine.workers import start_worker

TASKS = """
import time
from celery import Celery
app = Celery("inspectiontest")

@app.task
def nap(seconds):
    time.sleep(seconds)
    return seconds
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspectiontest")
    (path / "tasks.py").write_text(TASKS)
    return path


def test_a_busy_worker_holds_its_window_and_the_rest_stays_on_the_broker(ns, folder, no_orphans):
    app = ns.app()
    with (
        Recorder(ns.app("recorder")) as recorder,
        start_worker(ns, folder, concurrency=1, prefetch_multiplier=1) as worker,
    ):
        timeline = recorder.timeline()
        running = app.send_task("tasks.nap", (3.0,))
        queued = [app.send_task("tasks.nap", (0.01,)) for _ in range(3)]
        timeline.wait_for(lambda tl: tl.events(ATTEMPT_START, running.id), 10, "the long nap to start")
        # Early ack: the running task's message is acked, so the window of one holds one more.
        reserved = inspection.wait_reserved(worker, 1, 5.0)
        snap = inspection.holding(worker)
        assert reserved == [queued[0].id]
        assert snap.prefetch_count == 1 and snap.processes == 1
        assert snap.active == (running.id,) and snap.reserved == (queued[0].id,)
        assert ns.queue_depth() == 2
        assert "1 running, 1 reserved" in snap.describe()
        assert inspection.holdings([worker])[worker.name] == snap


def test_a_worker_without_c_takes_the_app_s_concurrency_and_c_wins_over_it(ns, folder, no_orphans):
    with start_worker(ns, folder, concurrency=None, settings={"worker_concurrency": 3}) as worker:
        assert inspection.pool_size(worker) == 3 == len(worker.pool_pids())
        assert inspection.prefetch_count(worker) == 12  # 3 x the default multiplier, 4
    with start_worker(ns, folder, concurrency=1, settings={"worker_concurrency": 3}) as worker:
        assert inspection.pool_size(worker) == 1
