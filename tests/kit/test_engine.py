"""The engine on real processes: workers, namespaces, the timeline, the import probe, the HTTP stub."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from celery import Celery
from celery.schedules import crontab

from celerylab.engine import runtime
from celerylab.engine.cron import fire_times
from celerylab.engine.namespaces import Namespace
from celerylab.engine.stubs import ScriptedHTTPServer
from celerylab.engine.timeline import Recorder
from celerylab.engine.workers import Worker, WorkerError, start_worker
from tests.kit.conftest import is_gone, kit_processes

TASKS = """
import os, time
from celery import Celery
app = Celery("enginetest")

@app.task
def add(x, y):
    return x + y

@app.task(bind=True, max_retries=2, default_retry_delay=0)
def flaky(self):
    raise self.retry(exc=ValueError("nope"))

@app.task
def nap(seconds):
    time.sleep(seconds)
    return os.getpid()
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("enginetest")
    (path / "tasks.py").write_text(TASKS)
    return path


def test_worker_runs_tasks_on_prefork_children_and_leaves_nothing(ns, folder, no_orphans):
    with start_worker(ns, folder, concurrency=2) as worker, Recorder(ns.app("rec")) as rec:
        timeline = rec.timeline()
        result = ns.app().send_task("tasks.nap", (0.2,))
        assert result.get(timeout=10) in worker.pool_pids()
        timeline.wait_final([result.id], 5)
        (attempt,) = timeline.attempts(result.id)
        assert attempt.pid in worker.pool_pids() and attempt.pid != worker.pid
        assert attempt.outcome == "success" and 0.15 < attempt.duration < 2
    assert not worker.alive


def test_timeline_counts_retries(ns, folder):
    with start_worker(ns, folder, concurrency=1), Recorder(ns.app("rec")) as rec:
        timeline = rec.timeline()
        result = ns.app().send_task("tasks.flaky")
        timeline.wait_final([result.id], 10)
        attempts = timeline.attempts(result.id)
        assert [a.outcome for a in attempts] == ["retry", "retry", "failure"]
        assert timeline.state(result.id) == "FAILURE" and len(timeline.gaps(result.id)) == 2
        assert "flaky" in timeline.table() and timeline.describe(result.id).startswith("flaky[")


def test_namespaces_do_not_see_each_others_tasks(broker, folder):
    ours, theirs = Namespace(broker, "a"), Namespace(broker, "b")
    try:
        with start_worker(theirs, folder, concurrency=1), Recorder(theirs.app("rec")) as rec:
            timeline = rec.timeline()
            stray = ours.app().send_task("tasks.add", (1, 1))
            mine = theirs.app().send_task("tasks.add", (2, 2))
            assert mine.get(timeout=10) == 4
            timeline.wait_final([mine.id], 5)
            assert stray.id not in timeline.task_ids() and stray.state == "PENDING"
    finally:
        ours.cleanup()
        theirs.cleanup()


def test_cold_stop_kills_the_pool_children_too(ns, folder, no_orphans):
    worker = Worker(ns, folder, concurrency=2).start()
    children = worker.pool_pids()
    assert len(children) == 2
    worker.stop()
    assert all(is_gone(pid) for pid in children)


def test_warm_stop_lets_the_running_task_finish(ns, folder, no_orphans):
    with Recorder(ns.app("rec")) as rec:
        worker = Worker(ns, folder, concurrency=1).start()
        timeline = rec.timeline()
        result = ns.app().send_task("tasks.nap", (1.0,))
        timeline.wait_for(lambda tl: tl.attempts(result.id), 10, "the task to start")
        worker.stop(warm=True)
        assert timeline.state(result.id) == "SUCCESS"
        assert worker.proc.returncode == 0, "it should have exited by itself on SIGTERM, not been killed"


def test_a_worker_that_cannot_import_reports_its_log(ns, tmp_path, no_orphans):
    (tmp_path / "tasks.py").write_text(
        "from celery import Celery\napp = Celery('x')\nraise RuntimeError('boom at import')\n"
    )
    with pytest.raises(WorkerError, match="boom at import"):
        Worker(ns, tmp_path).start(ready_timeout=20)


@pytest.mark.parametrize(
    "source, kind, words",
    [
        ("def broken(:\n", "syntax", "line 1"),
        ("import not_a_module_anywhere\n", "import", "ModuleNotFoundError"),
        ("x = 1\n", "no-app", "no Celery app"),
        ("import sys\nsys.exit(3)\n", "import", "SystemExit"),
    ],
)
def test_probe_turns_broken_modules_into_verdicts(tmp_path, source, kind, words):
    (tmp_path / "tasks.py").write_text(source)
    report = runtime.probe(str(tmp_path))
    assert report["ok"] is False and report["kind"] == kind and words in report["message"]


def test_probe_lists_tasks_with_their_options(tmp_path):
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        from celery import Celery
        app = Celery("p")
        @app.task(autoretry_for=(OSError,), max_retries=3, acks_late=True)
        def job(): pass
    """)
    )
    report = runtime.probe(str(tmp_path))
    options = report["tasks"]["tasks.job"]
    assert (
        options["autoretry_for"] == ["builtins.OSError"]
        and options["max_retries"] == 3
        and options["acks_late"]
    )


def test_stub_server_follows_its_script_and_records_requests():
    with ScriptedHTTPServer() as stub:
        url = stub.script("/s", [503, 200])
        assert [httpx.get(url).status_code for _ in range(3)] == [503, 200, 200]
        assert len(stub.hits("/s")) == 3
        with pytest.raises(httpx.TransportError):
            httpx.get(stub.script("/r", ["reset"]), timeout=2)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(stub.script("/h", ["hang"]), timeout=0.3)


def start_owner(tmp_path, folder) -> subprocess.Popen:
    """A separate Python process that starts an embedded broker and a worker, then idles: a stand-in
    for a grader, to be stopped from outside."""
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(f"""
        import time
        from celerylab.engine.brokers import open_broker
        from celerylab.engine.namespaces import Namespace
        from celerylab.engine.workers import Worker
        with open_broker("embedded") as b:
            Worker(Namespace(b, "own"), {str(folder)!r}, concurrency=2).start()
            print("ready", flush=True)
            time.sleep(60)
    """)
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "ready"
    return owner


def test_sigterm_to_the_owner_kills_its_children(tmp_path, folder, no_orphans):
    """A grader stopped by SIGTERM (CI cancelling, a closed terminal) takes its workers with it."""
    owner = start_owner(tmp_path, folder)
    owner.send_signal(signal.SIGTERM)
    owner.wait(timeout=20)


def test_a_paused_worker_leaves_messages_on_the_broker(ns, folder):
    with start_worker(ns, folder, concurrency=1) as worker:
        worker.pause_queue()
        assert not worker.consuming()
        result = ns.app().send_task("tasks.add", (1, 2))
        deadline = time.monotonic() + 10
        while ns.queue_depth() != 1:
            assert time.monotonic() < deadline, "the message never showed up in the queue"
            time.sleep(0.05)
        worker.resume_queue()
        assert result.get(timeout=10) == 3 and ns.queue_depth() == 0


def test_fire_times_replays_beat_without_waiting():
    app = Celery("cron", set_as_current=False)
    app.conf.timezone = "UTC"
    monday = datetime(2026, 1, 5, tzinfo=UTC)
    nightly = fire_times(crontab(minute=0, hour=1), monday, monday + timedelta(days=2), app)
    assert nightly == [monday + timedelta(hours=1), monday + timedelta(days=1, hours=1)]
    weekdays = fire_times(
        crontab(minute="*/15", day_of_week="mon-fri"), monday, monday + timedelta(days=7), app
    )
    # start counts as the last run (as beat's first tick does), so Monday 00:00 itself is not repeated
    assert weekdays[0] == monday + timedelta(minutes=15) and len(weekdays) == 5 * 24 * 4 - 1
    assert all(t.weekday() < 5 and t.minute % 15 == 0 for t in weekdays)
    every_30s = fire_times(30, monday, monday + timedelta(minutes=5), app, step=timedelta(seconds=10))
    assert [t - monday for t in every_30s] == [timedelta(seconds=s) for s in range(30, 300, 30)]


def test_a_killed_owner_takes_its_workers_and_broker_with_it(tmp_path, folder, no_orphans):
    """kill -9 of the grader: no cleanup code runs, yet the parent-death signal ends what it started."""
    owner = start_owner(tmp_path, folder)
    started = kit_processes(no_orphans)
    assert len(started) >= 2, "a worker and a valkey server should be running"
    owner.kill()
    owner.wait(timeout=10)
    deadline = time.monotonic() + 10
    while kit_processes(no_orphans):
        assert time.monotonic() < deadline, f"still running: {kit_processes(no_orphans)}"
        time.sleep(0.1)


def test_a_long_run_of_identical_attempts_folds_into_one_line():
    from celerylab.engine.timeline import ATTEMPT_END, ATTEMPT_START, Event, Recorder, Timeline

    recorder = Recorder(app=None)
    t = 1000.0
    for _ in range(30):
        for kind, extra in (
            (ATTEMPT_START, {}),
            (ATTEMPT_END, {"state": "RETRY", "exception": "ServerError('503')"}),
        ):
            fields = {"pid": 7, "name": "tasks.fetch", **extra}
            recorder.events.append(Event(kind, "abcdef123456", t, "w1@host", fields))
            t += 0.1
    lines = Timeline(recorder).table().splitlines()
    assert len(lines) == 1 + 2 + 1, lines  # header, two rows, one folded line
    assert "28 x retry (tries 3-30" in lines[-1] and "ServerError('503')" in lines[-1]


def test_a_plot_keeps_its_labels_on_the_axis_whatever_the_lifecycle_not_drawn(recwarn):
    """A short attempt, and the other pool process coming up 1.5 s before it (no bar, so no marker): its
    label stays on the axis. Counting that moment widened the label's width in seconds until the label
    sat far left of the axis, and tight_layout warned (seen under load, in a notebook's widget)."""
    import matplotlib

    matplotlib.use("Agg")
    from celerylab.engine.timeline import ATTEMPT_END, ATTEMPT_START, PROCESS_UP, Event, Timeline

    recorder = Recorder(app=None)
    t = 1000.0
    recorder.events += [
        Event(PROCESS_UP, None, t - 1.5, "w1@host", {"pid": 8}),
        Event(ATTEMPT_START, "abcdef123456", t, "w1@host", {"pid": 7, "name": "tasks.remind"}),
        Event(ATTEMPT_END, "abcdef123456", t + 0.005, "w1@host", {"pid": 7, "state": "SUCCESS"}),
    ]
    ax = Timeline(recorder).plot()
    left, right = ax.get_xlim()
    assert all(left <= text.get_position()[0] <= right for text in ax.texts), ax.texts
    assert not [w for w in recwarn if "ight layout" in str(w.message)], [str(w.message) for w in recwarn]


class DeafFirst(Recorder):
    """A recorder whose first connection is accepted but never delivers (a blocked or half-open one)."""

    def _on_event(self, raw):
        if self._generation > 1:
            super()._on_event(raw)


def test_a_recorder_whose_first_connection_hears_nothing_listens_again(ns):
    rec = DeafFirst(ns.app("rec")).start(timeout=3)
    try:
        assert rec._generation == 2
        timeline = rec.timeline()
        with ns.app("send").events.default_dispatcher() as dispatcher:
            dispatcher.send("celerylab-probe-event", token="once")
        timeline.wait_for(lambda tl: tl.events("celerylab-probe-event"), 10, "the event")
    finally:
        rec.stop()
    assert len(timeline.events("celerylab-probe-event")) == 1  # the first receiver's copy is dropped


def test_a_recorder_that_never_hears_the_broker_blames_the_kit_not_the_code(ns):
    class Deaf(Recorder):
        def _on_event(self, raw):
            pass

    recorder = Deaf(ns.app("rec"))
    with pytest.raises(AssertionError, match="not your code") as caught:
        recorder.start(timeout=1.5)
    recorder.stop()
    assert "could not hear the broker within 2 s" in str(caught.value)
    assert recorder._generation == 3


def test_life_cycle_and_signals_are_on_the_timeline(ns, folder, no_orphans):
    """Online, a pool process replacing one that exited, the kit's SIGTERM, the exit: all on the timeline."""
    settings = {"worker_max_tasks_per_child": 1, runtime.POOL_MAINTENANCE: 0.25}
    with Recorder(ns.app("rec")) as rec:
        timeline = rec.timeline()
        worker = Worker(ns, folder, concurrency=1, settings=settings).start()
        try:
            pids = [ns.app().send_task("tasks.nap", (0.0,)).get(timeout=10) for _ in range(2)]
            assert pids[0] != pids[1], "one task per child: the second ran in a new process"
            sent = worker.send_signal(signal.SIGTERM)
            assert worker.wait_exit(15) == 0
            timeline.wait_for(lambda tl: tl.exited(worker.hostname), 5, "the exit mark")
        finally:
            worker.stop()
        kinds = [life.kind for life in timeline.lifecycle(worker.hostname)]
        assert kinds[0] in ("online", "process-up") and kinds[-1] == "offline", kinds
        assert set(pids) <= set(timeline.pool_processes(worker.hostname))
        assert timeline.signalled(worker.hostname, "SIGTERM") == pytest.approx(sent, abs=0.5)
        assert "exit code 0" in timeline.lifecycle(worker.hostname)[-1].detail
        import matplotlib

        matplotlib.use("Agg")
        ax = timeline.plot()
        assert any("SIGTERM" in text.get_text() for text in ax.texts), "the signal is marked on the plot"


def test_a_cold_shutdown_ends_the_running_attempt_as_cancelled(ns, folder, no_orphans):
    with Recorder(ns.app("rec")) as rec, start_worker(ns, folder, concurrency=1) as worker:
        timeline = rec.timeline()
        result = ns.app().send_task("tasks.nap", (10.0,))
        # accepted by the main process too (task-started): only then is it among the requests it cancels
        timeline.wait_for(lambda tl: tl.attempts(result.id) and tl.events("task-started"), 10, "the start")
        worker.send_signal("SIGQUIT")  # no soft shutdown: the running task is cancelled at once
        assert worker.wait_exit(15) is not None
        timeline.wait_for(lambda tl: tl.attempts(result.id)[0].outcome == "cancelled", 5, "the cancel")
        (attempt,) = timeline.attempts(result.id)
        assert attempt.duration is not None and attempt.duration < 5


def test_a_terminated_revoke_ends_the_running_attempt_as_revoked(ns, folder, no_orphans):
    """revoke(terminate=True) kills the pool process's task: it sends no end of its own, only task-revoked."""
    with Recorder(ns.app("rec")) as rec, start_worker(ns, folder, concurrency=1) as worker:
        timeline = rec.timeline()
        app = ns.app()
        result = app.send_task("tasks.nap", (30.0,))
        timeline.wait_for(lambda tl: tl.attempts(result.id) and tl.events("task-started"), 10, "the start")
        app.control.revoke(result.id, terminate=True, signal="SIGKILL")
        timeline.wait_for(lambda tl: tl.attempts(result.id)[0].outcome == "revoked", 10, "the revoke")
        (attempt,) = timeline.attempts(result.id)
        assert attempt.end is not None and attempt.duration < 20
        assert "signal 9" in attempt.exception
        assert worker.alive


def test_settle_returns_on_a_live_worker_and_names_a_frozen_one(ns, folder, no_orphans):
    worker = Worker(ns, folder, concurrency=1).start()
    try:
        worker.settle(5.0)
        worker.proc.send_signal(signal.SIGSTOP)  # alive as a process, deaf as a worker
        began = time.monotonic()
        with pytest.raises(WorkerError, match="did not answer a ping within 1 s"):
            worker.settle(1.0)
        assert time.monotonic() - began < 3.0
    finally:
        worker.proc.send_signal(signal.SIGCONT)
        worker.stop()


def test_a_recorder_whose_sends_fail_is_tried_again_then_reported_as_deaf(ns, monkeypatch):
    """A connection error while the recorder checks it can hear (a socket timeout on a loaded host) costs an
    attempt, not the grade's setup: three tries, then a verdict that names the error."""
    from celerylab.engine.timeline import DeadlineExceeded

    rec = Recorder(ns.app("rec"))
    tries = []

    def failing_send(timeout: float) -> None:
        tries.append(timeout)
        raise ConnectionError("Timeout reading from socket")

    monkeypatch.setattr(rec, "_wait_listening", failing_send)
    with pytest.raises(DeadlineExceeded, match="could not hear the broker.*Timeout reading from socket"):
        rec.start(timeout=3.0, attempts=3)
    assert tries == [1.0, 1.0, 1.0]
    rec.stop()


def test_a_worker_on_the_learners_own_command_line_gets_the_kits_settings(ns, tmp_path, no_orphans):
    """lab.toml's `command`: the worker is `celery -A tasks worker -l info` as typed, its app's own URLs
    (a broker nobody runs) replaced by the namespace's, and its attempts on the timeline."""
    (tmp_path / "tasks.py").write_text(
        'from celery import Celery\napp = Celery("tasks", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1")\n'
        "@app.task\ndef add(x, y):\n    return x + y\n"
    )
    command = "celery -A tasks worker -l info"
    with start_worker(ns, tmp_path, command=command) as worker, Recorder(ns.app("rec")) as rec:
        argv = worker.proc.args
        assert argv[2 : 2 + len(command.split())] == command.split(), argv  # after `python -m`
        timeline = rec.timeline()
        result = ns.app().send_task("tasks.add", (2, 3))
        assert result.get(timeout=10) == 5
        timeline.wait_final([result.id], 5)
        (attempt,) = timeline.attempts(result.id)
        assert attempt.pid in worker.pool_pids() and attempt.hostname == worker.hostname
    assert not worker.alive


@pytest.mark.parametrize(
    "command", ["celery worker -A tasks", "python -m celery -A tasks worker", "rm -rf /"]
)
def test_a_command_that_is_not_a_worker_on_one_app_is_refused(tmp_path, command):
    from celerylab.grading.labs import CatalogueError, load_lab

    lab = tmp_path / "labs" / "x"
    lab.mkdir(parents=True)
    toml = (
        'title = "x"\norder = 99\nsections = [3]\nexpected_seconds = 1\nnotebook = "n"\nquiz = "q"\n'
        f'hints = ["h"]\ncommand = "{command}"\n'
    )
    (lab / "lab.toml").write_text(toml)
    with pytest.raises(CatalogueError, match="command"):
        load_lab(lab / "lab.toml", tmp_path)
