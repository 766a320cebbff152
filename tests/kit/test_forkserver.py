"""The fork server: workers forked from a pre-imported zygote behave as exec'd ones (real workers on the
local Redis).

No timing assertions here: how fast a forked worker is ready is benchmarks/worker_start.py's business.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from celery.exceptions import TimeLimitExceeded

from celerylab.engine import forkserver, processes
from celerylab.engine.forkserver import ForkServer, ServedProcess
from celerylab.engine.workers import Worker, WorkerError, start_worker
from tests.kit.conftest import ROOT, is_gone, kit_processes, wait_until

TASKS = """
import os, random, time
from celery import Celery
app = Celery("forktest")
VERSION = "one"

@app.task
def version():
    return VERSION

@app.task(time_limit=1)
def stuck():
    time.sleep(30)

@app.task
def nap(seconds):
    time.sleep(seconds)
    return os.getpid()

@app.task
def rand():
    return random.random()

@app.task
def daemon(path):
    # a grandchild in a session of its own, which outlives the pool process that started it
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
        os._exit(0)
    os.wait()
    return True
"""

# What a worker's main process looks like when it imports tasks.py: written to $FACTS_OUT, compared
# between an exec'd worker and a forked one.
FACTS = """
import atexit, faulthandler, json, logging, os, random, re, signal, sys, tempfile, threading, time, warnings
from celery import Celery, signals

app = Celery("facts")


def _fds():
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def _stream(s):
    return [s.encoding, s.errors, s.line_buffering, s.write_through]


def _here(module):
    return (getattr(module, "__file__", "") or "").startswith(os.getcwd())


def _facts():
    import __main__

    handlers = {}
    for sig in signal.valid_signals():
        if sig in signal.Signals._value2member_map_:
            handlers[signal.Signals(sig).name] = re.sub(r" at 0x[0-9a-f]+", "", str(signal.getsignal(sig)))
    return {
        "argv": sys.argv,
        "orig_argv": sys.orig_argv,
        "path": sys.path,
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "signals": handlers,
        "mask": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "fds": _fds(),
        "atexit": atexit._ncallbacks(),
        "warnings": [str(f) for f in warnings.filters],
        "root_handlers": [type(h).__name__ for h in logging.root.handlers],
        "root_level": logging.root.level,
        "stdout": _stream(sys.stdout),
        "stderr": _stream(sys.stderr),
        "stdin": [sys.stdin.encoding, sys.stdin.errors, sys.stdin.fileno()],
        "main": sorted(vars(__main__)),
        "main_file": getattr(__main__, "__file__", None),
        "tzname": list(time.tzname),
        "threads": threading.active_count(),
        "meta_path": [f.__name__ if isinstance(f, type) else type(f).__name__ for f in sys.meta_path],
        "faulthandler": faulthandler.is_enabled(),
        "receivers": {n: len(v.receivers or []) for n, v in vars(signals).items() if hasattr(v, "send")},
        "excepthook": repr(sys.excepthook),
        "session_leader": os.getsid(0) == os.getpid() == os.getpgid(0),
        "tempdir": tempfile.gettempdir(),
        "cmdline": open("/proc/self/cmdline", "rb").read().rstrip(b"\\0").split(b"\\0"),
        "comm": open("/proc/self/comm").read().strip(),
        "own_modules": sorted(n for n, m in sys.modules.items() if _here(m)),
        "owner_modules": sorted({"pytest", "prometheus_client", "httpx", "helper"} & set(sys.modules)),
        "random": random.random(),
    }


with open(os.environ["FACTS_OUT"], "w") as out:
    json.dump(_facts(), out, default=repr)


@app.task
def add(x, y):
    return x + y
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "tasks.py").write_text(TASKS)
    return tmp_path / "lab"


@pytest.fixture
def served(monkeypatch):
    """The fork server on, whatever the environment says; the one this process uses."""
    monkeypatch.delenv(forkserver.ENV, raising=False)
    server = forkserver.current()
    assert server is not None, f"no fork server: {forkserver._launch_error!r}"
    return server


@pytest.fixture
def own_server(served):
    """A zygote of the test's own, installed for it, stopped after it (the shared one is put back)."""
    server = ForkServer.launch()
    forkserver.install(server)
    yield server
    replacement = forkserver._installed  # one launched after the test killed its own
    forkserver.install(served)
    for stale in {server, replacement} - {served, None}:
        stale.close()


def _facts(ns, folder: Path, tmp_path: Path, forked: bool, env: dict | None = None) -> dict:
    """Start worker w1 (same hostname, log and output file each time) and read what it saw at import."""
    out = tmp_path / "facts.json"
    out.unlink(missing_ok=True)
    worker = Worker(ns, folder, env={"FACTS_OUT": str(out), **(env or {})}, log_path=tmp_path / "w1.log")
    worker.forked = forked
    try:
        worker.start()
        assert isinstance(worker.proc, ServedProcess) == forked
        assert ns.app().send_task("tasks.add", (2, 3)).get(timeout=10) == 5
    finally:
        worker.stop()
    return json.loads(out.read_text())


def _differences(spawned: dict, forked: dict) -> dict:
    return {key: (spawned[key], forked.get(key)) for key in spawned if spawned[key] != forked.get(key)}


def test_a_forked_worker_sees_what_an_execd_one_sees(ns, tmp_path, served):
    """argv, environment, folder, sys.path, signals, descriptors, streams, hooks, /proc: all the same."""
    facts = tmp_path / "facts"
    facts.mkdir()
    (facts / "tasks.py").write_text(FACTS)
    env = {"TZ": "Asia/Tokyo", "PYTHONPATH": str(tmp_path / "extra")}
    spawned = _facts(ns, facts, tmp_path, forked=False, env=env)
    forked = _facts(ns, facts, tmp_path, forked=True, env=env)
    assert spawned["random"] != forked["random"]
    assert _differences(spawned, forked).keys() == {"random"}, _differences(spawned, forked)
    assert forked["environ"][processes.OWNER] == str(os.getpid()) and forked["environ"]["TZ"] == "Asia/Tokyo"
    assert forked["tzname"] == ["JST", "JST"] and forked["cwd"] == str(facts)
    assert forked["orig_argv"][:3] == [sys.executable, "-m", "celery"] and "worker" in forked["argv"]
    assert forked["path"][:2] == [str(facts), str(tmp_path / "extra")] and forked["comm"] == "celerylab-w"


def test_an_edit_between_two_workers_is_seen(ns, folder, served):
    with start_worker(ns, folder, concurrency=1) as worker:
        assert isinstance(worker.proc, ServedProcess)
        assert ns.app().send_task("tasks.version").get(timeout=10) == "one"
    (folder / "tasks.py").write_text(TASKS.replace('VERSION = "one"', 'VERSION = "two, edited"'))
    with start_worker(ns, folder, concurrency=1) as worker:
        assert ns.app().send_task("tasks.version").get(timeout=10) == "two, edited"


def test_random_is_reseeded_in_every_fork(ns, folder, served):
    draws = []
    for name in ("w1", "w2"):
        with start_worker(ns, folder, name=name, concurrency=2) as worker:
            results = [ns.app().send_task("tasks.rand") for _ in range(4)]
            draws += [r.get(timeout=10) for r in results]
            assert len(worker.pool_pids()) == 2
    assert len(set(draws)) == len(draws), draws


def test_a_hard_time_limit_kills_the_pool_process(ns, folder, served):
    with start_worker(ns, folder, concurrency=1) as worker:
        (before,) = worker.pool_pids()
        result = ns.app().send_task("tasks.stuck")
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=15)
        assert result.state == "FAILURE"
        assert before not in worker.wait_pool_replaced(before)
        wait_until(lambda: is_gone(before), "the killed pool process is gone", 5)


def test_sigterm_is_a_warm_shutdown_with_the_exit_code_of_an_execd_worker(ns, folder, served, tmp_path):
    codes, outcomes = {}, {}
    for forked in (True, False):
        worker = Worker(ns, folder, concurrency=1, log_path=tmp_path / f"{forked}.log")
        worker.forked = forked
        try:
            worker.start()
            assert isinstance(worker.proc, ServedProcess) == forked
            result = ns.app().send_task("tasks.nap", (1.0,))
            wait_until(worker.busy, "the task started", 10)
            worker.send_signal(signal.SIGTERM)
            codes[forked] = worker.wait_exit(20)
            result.get(timeout=10)
            outcomes[forked] = result.state
        finally:
            worker.stop()
        assert "worker: Warm shutdown" in (tmp_path / f"{forked}.log").read_text()
    assert codes[True] == codes[False] == 0
    assert outcomes[True] == outcomes[False] == "SUCCESS"


def test_kill_leaves_no_process(ns, folder, served):
    worker = Worker(ns, folder, concurrency=2).start()
    pids = {worker.pid, *worker.pool_pids()}
    assert len(pids) == 3
    worker.kill()
    assert worker.proc.returncode == -signal.SIGKILL
    assert all(is_gone(pid) for pid in pids), [pid for pid in pids if not is_gone(pid)]
    assert worker.pid not in processes.live_pids()
    worker.stop()


def test_killing_the_zygote_kills_its_workers(ns, folder, own_server):
    worker = Worker(ns, folder, concurrency=2).start()
    try:
        assert isinstance(worker.proc, ServedProcess)
        pids = {worker.pid, *worker.pool_pids()}
        os.kill(own_server.pid, signal.SIGKILL)
        wait_until(lambda: all(is_gone(pid) for pid in pids), "the workers died with their zygote", 10)
        assert worker.proc.wait(timeout=5) == -signal.SIGKILL
        assert not own_server.alive
    finally:
        worker.stop()
    with start_worker(ns, folder, concurrency=1) as worker:  # the next one gets a zygote of its own
        assert isinstance(worker.proc, ServedProcess) and worker.ping()


def test_a_zygote_launched_from_a_thread_ends_with_its_owners_socket(ns, folder, served):
    """Launched from a thread, the zygote takes no parent-death signal (it would die with the thread);
    it ends, and takes its workers with it, when its owner's end of the socket closes (as at the owner's
    death)."""
    servers: list[ForkServer] = []
    launcher = threading.Thread(target=lambda: servers.append(ForkServer.launch()))
    launcher.start()
    launcher.join(30)
    (server,) = servers
    forkserver.install(server)
    try:
        worker = Worker(ns, folder, concurrency=1).start()
        assert worker.ping() and server.alive, "the zygote outlived the thread that launched it"
        pids = {server.pid, worker.pid, *worker.pool_pids()}
        server._channel._close()
        wait_until(lambda: all(is_gone(pid) for pid in pids), "the zygote and its worker ended", 10)
        worker.stop()
    finally:
        forkserver.install(served)
        server.close()


def test_orphan_checks_see_forked_workers_and_what_they_leave(ns, folder, tmp_path, served, no_orphans):
    """kit_processes (ps args, comm, the test's mark in /proc/PID/environ) finds a forked worker and its
    pool; a daemon a task started is a stray once the worker is gone, and sweep_strays kills it."""
    worker = Worker(ns, folder, concurrency=2).start()
    try:
        pids = {worker.pid, *worker.pool_pids()}
        assert pids <= kit_processes(no_orphans), "the orphan check would not see a forked worker"
        assert not set(processes.strays()) & pids
        marker = tmp_path / "daemon.pid"
        assert ns.app().send_task("tasks.daemon", (str(marker),)).get(timeout=10)
        wait_until(lambda: marker.exists() and marker.read_text(), "the daemon started", 5)
        daemon = int(marker.read_text())
    finally:
        worker.stop()
    assert daemon in processes.strays()
    assert daemon in processes.sweep_strays()
    wait_until(lambda: is_gone(daemon), "the daemon is gone", 5)
    assert not kit_processes(no_orphans)


def test_a_worker_whose_app_logs_no_ready_line_is_still_found_ready(ns, folder, served):
    """An app that configures logging its own way (setup_logging) writes no "ready." line: pinged."""
    quiet = "\nfrom celery import signals\nsignals.setup_logging.connect(lambda **_: None, weak=False)\n"
    (folder / "tasks.py").write_text(TASKS + quiet)
    with start_worker(ns, folder, concurrency=1) as worker:
        assert "ready." not in worker.log()
        assert ns.app().send_task("tasks.version").get(timeout=10) == "one"


def test_with_the_fork_server_off_workers_are_execd(ns, folder, monkeypatch):
    monkeypatch.setenv(forkserver.ENV, "0")
    assert forkserver.current() is None
    with start_worker(ns, folder, concurrency=1) as worker:
        assert isinstance(worker.proc, subprocess.Popen)
        assert ns.app().send_task("tasks.version").get(timeout=10) == "one"


def test_nothing_that_fails_in_a_child_reaches_the_zygote(ns, folder, tmp_path, own_server):
    """A bad folder or log fails the spawn as with Popen; a tasks.py that raises at import ends its worker
    with the exit code of an exec'd one; the zygote serves on, unchanged."""
    argv = [sys.executable, "-m", "celery", "--version"]
    with pytest.raises(FileNotFoundError):
        own_server.spawn(argv, log_path=tmp_path / "a.log", cwd=tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        own_server.spawn(argv, log_path=tmp_path / "missing" / "a.log", cwd=tmp_path)
    with pytest.raises(ValueError):
        own_server.spawn(["celery", "--version"], log_path=tmp_path / "a.log")
    proc = own_server.spawn(argv, log_path=tmp_path / "version.log", cwd=tmp_path)
    assert proc.wait(timeout=30) == 0 and "5." in (tmp_path / "version.log").read_text()
    (folder / "tasks.py").write_text("raise RuntimeError('broken at import')\n")
    codes = {}
    for forked in (True, False):
        worker = Worker(ns, folder, log_path=tmp_path / f"broken-{forked}.log")
        worker.forked = forked
        with pytest.raises(WorkerError, match="exited before it was ready"):
            worker.start()
        codes[forked] = worker.proc.returncode
        assert "RuntimeError: broken at import" in worker.log()
        worker.stop()
    assert codes[True] == codes[False] != 0
    assert own_server.alive and own_server.process.poll() is None


def test_threads_spawn_and_wait_at_once(ns, folder, served):
    workers = [Worker(ns, folder, name=f"t{n}", concurrency=1) for n in range(3)]
    errors = []

    def start(worker: Worker) -> None:
        try:
            worker.start()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(w,)) for w in workers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert all(isinstance(w.proc, ServedProcess) and w.ping() for w in workers)
        waiters = [threading.Thread(target=w.proc.wait, args=(30,)) for w in workers]
        for waiter in waiters:
            waiter.start()
        for worker in workers:
            worker.kill()
        for waiter in waiters:
            waiter.join(30)
        assert all(w.proc.poll() == -signal.SIGKILL for w in workers)
    finally:
        for worker in workers:
            worker.stop()


def test_fork_here_refuses_a_process_with_threads():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="single-threaded"):
            ForkServer.fork_here()
    finally:
        stop.set()
        thread.join()


BUSY_OWNER = """
import atexit, json, logging, os, sys, tempfile, threading, warnings
from pathlib import Path
import pytest, prometheus_client, httpx, redis  # what a grader has loaded
from celery import shared_task, signals
from celerylab.engine import forkserver
from celerylab.engine.brokers import open_broker
from celerylab.engine.namespaces import Namespace
from celerylab.engine.workers import Worker

folder, facts, out = sys.argv[1:4]
logging.basicConfig(filename=os.path.join(out, "owner.log"))
warnings.simplefilter("error")
sys.path.insert(0, os.path.join(out, "elsewhere"))
import helper  # a module of the owner's that the worker's folder has too
atexit.register(lambda: open(os.path.join(out, f"atexit-{os.getpid()}"), "w").close())
def receiver(**_):
    open(os.path.join(out, "owner-receiver"), "w").close()
signals.worker_process_init.connect(receiver, weak=False)
signals.import_modules.connect(receiver, weak=False)

@shared_task(name="tasks.owners_task")
def owners_task():
    return "the owner's"

tmp = tempfile.NamedTemporaryFile(dir=out, delete=True)
tmp.write(b"buffered, never flushed by anyone but the owner")
report = {"owner": os.getpid()}
with open_broker("redis") as broker:
    client = redis.Redis.from_url(broker.url)
    client_id = client.client_id()  # one connection, opened before the fork: it must stay the same
    ns = Namespace(broker, "busy")
    app = ns.app()
    app.control.ping(timeout=0.1)  # a live broker connection in the owner
    forkserver.install(forkserver.ForkServer.fork_here())
    try:
        log = Path(out) / "w.log"
        worker = Worker(ns, folder, env={"FACTS_OUT": os.path.join(out, "forked.json")}, log_path=log)
        worker.start()
        report["forked"] = type(worker.proc).__name__
        report["helper"] = app.send_task("tasks.helper_says").get(timeout=10)
        inspect = app.control.inspect(destination=[worker.hostname])
        report["registered"] = sorted(inspect.registered()[worker.hostname])
        worker.stop()
        worker = Worker(ns, folder, env={"FACTS_OUT": os.path.join(out, "spawned.json")}, log_path=log)
        worker.forked = False
        worker.start()
        worker.stop()
        report["owner_connection_kept"] = client.client_id() == client_id
        tmp.flush()
        tmp.seek(0)
        report["owner_tempfile"] = tmp.read().decode() if os.path.exists(tmp.name) else None
        zygote = forkserver.current()
        report["zygote_alive"] = zygote.alive
        fds = f"/proc/{zygote.pid}/fd"
        report["zygote_fds"] = sorted(os.readlink(f"{fds}/{fd}").split(":")[0] for fd in os.listdir(fds))
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            forkserver.ForkServer.fork_here()
        except RuntimeError as exc:
            report["with_threads"] = str(exc)
        stop.set()
        thread.join()
    finally:
        ns.cleanup()
print("REPORT " + json.dumps(report), flush=True)
"""

HELPER_TASKS = (
    FACTS
    + """
import helper


@app.task
def helper_says():
    return helper.WHO
"""
)


def test_a_zygote_forked_from_a_busy_process_forgets_the_owners_state(tmp_path):
    """What a pytest shard holds (modules, logging, warning filters, atexit handlers, signal receivers,
    shared tasks, sys.path, open sockets and files) reaches neither the zygote's workers nor, through
    them, the owner: the forked worker sees what an exec'd one sees."""
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "tasks.py").write_text(HELPER_TASKS)
    (folder / "helper.py").write_text("WHO = 'the worker folder'\n")
    elsewhere = tmp_path / "out" / "elsewhere"
    elsewhere.mkdir(parents=True)
    (elsewhere / "helper.py").write_text("WHO = 'the owner'\n")
    script = tmp_path / "owner.py"
    script.write_text(BUSY_OWNER)
    env = {k: v for k, v in os.environ.items() if k != forkserver.ENV}
    done = subprocess.run(
        [sys.executable, str(script), str(folder), str(folder), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["forked"] == "ServedProcess"
    assert report["helper"] == "the worker folder"
    assert "tasks.owners_task" not in report["registered"] and "tasks.helper_says" in report["registered"]
    assert report["owner_connection_kept"] and report["zygote_alive"]
    assert report["owner_tempfile"] == "buffered, never flushed by anyone but the owner"
    assert report["zygote_fds"] == ["/dev/null"] * 3 + ["pipe", "pipe", "socket"], (
        "the zygote keeps nothing of the owner's: stdio on /dev/null, its socket and its wake-up pipe"
    )
    assert "single-threaded" in report["with_threads"]
    spawned = json.loads((tmp_path / "out" / "spawned.json").read_text())
    forked = json.loads((tmp_path / "out" / "forked.json").read_text())
    different = _differences(spawned, forked)
    different.pop("random")
    environ = different.pop("environ", None)
    assert environ is None or _only_facts_out(*environ), environ
    fds = different.pop("fds", None)
    assert fds is None or fds[0].keys() == fds[1].keys(), fds
    assert not different, different
    assert not {"pytest", "httpx", "helper"} & set(forked["owner_modules"])
    assert not (tmp_path / "out" / "owner-receiver").exists()
    atexits = [p.name for p in (tmp_path / "out").glob("atexit-*")]
    assert atexits == [f"atexit-{report['owner']}"], "the owner's atexit handler ran in a child"


def _only_facts_out(spawned: dict, forked: dict) -> bool:
    return {k: v for k, v in spawned.items() if k != "FACTS_OUT"} == {
        k: v for k, v in forked.items() if k != "FACTS_OUT"
    }


def test_the_preload_constants_match_a_fresh_preload():
    """IMPORT_ENV lists every variable a pre-imported module reads at import; CORE every package the
    preload loads; nothing connects a Celery signal or registers a shared task, and the atexit handlers
    that modules register at import are the ones a forked child registers again."""
    done = subprocess.run(
        [sys.executable, "-m", "celerylab.engine.forkserver", "--inspect"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert set(seen["env"]) <= forkserver.IMPORT_ENV, set(seen["env"]) - forkserver.IMPORT_ENV
    assert set(seen["tops"]) - forkserver.CORE <= {"django"}, set(seen["tops"]) - forkserver.CORE
    assert seen["receivers"] == {}
    assert set(seen["finalizers"]) == {"celery.app.builtins"}
    assert seen["atexit"] == ["logging.shutdown", "multiprocessing.util._exit_function"]


def test_launched_zygote_leaves_room_to_rewrite_a_workers_environment(served):
    environ = Path(f"/proc/{served.pid}/environ").read_bytes()
    assert re.search(rb"CELERYLAB_FORKSERVER_ROOM=\.{1000,}", environ)
    assert Path(f"/proc/{served.pid}/comm").read_text().strip() == "celerylab-fork"
