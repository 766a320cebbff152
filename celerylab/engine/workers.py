"""Real ``celery worker`` and ``celery beat`` processes on a learner's tasks module.

    with start_worker(ns, "labs/retries", concurrency=2) as worker:
        ...  # ready: it answered a control ping

Ready means a remote-control ping came back, never a fixed sleep. Stopping is cold (SIGKILL to the whole
process group, prefork children included) unless a warm shutdown is the point. Output goes to a log file
that the grader shows when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from celery import Celery

from celerylab.engine import forkserver, processes, runtime, timeline
from celerylab.engine.namespaces import Namespace

READY_TIMEOUT = 30.0


def learner_command(command: str) -> list[str]:
    """``"celery -A tasks worker -l info"`` as argv, checked: Celery's worker, on one app."""
    argv = shlex.split(command)
    if len(argv) < 4 or argv[0] != "celery" or argv[1] not in ("-A", "--app") or argv[3] != "worker":
        raise ValueError(f"not a worker command of the form `celery -A APP worker ...`: {command!r}")
    return argv


class WorkerError(RuntimeError):
    """A worker or beat died or never became ready; the message carries its log's tail."""


class _Process:
    """What workers and beat share: a spec'd ``celery -A celerylab.engine.runtime`` child with a log."""

    kind = "process"
    forked = True  # started by the fork server (celerylab.engine.forkserver) when it is on

    def __init__(
        self,
        ns: Namespace,
        folder: Path | str,
        settings: dict[str, Any] | None = None,
        module: str = "tasks",
        log_path: Path | None = None,
    ) -> None:
        self.ns = ns
        self.folder = Path(folder).resolve()
        self.module = module
        self.settings = runtime.merge_settings(ns.config(), settings or {})
        self._own_dir = None if log_path else Path(tempfile.mkdtemp(prefix="celerylab-"))  # removed by stop()
        self.log_path = log_path or self._own_dir / f"{self.kind}.log"
        self.proc = None
        self.env: dict[str, str] = {}  # environment variables of its own (a worker's ``env=``)
        self._log_start = 0  # where this run's output starts in the log (a restarted worker appends)

    def _spawn(self, argv: Sequence[str], hostname: str = "", command: str | None = None) -> None:
        """``celery -A celerylab.engine.runtime <argv>``; or, given the learner's own ``command`` (``celery -A
        tasks worker -l info``), exactly that with ``argv`` after it, the kit's settings laid over their
        app by :class:`celerylab.engine.runtime.LearnerLoader`."""
        spec = {
            "folder": str(self.folder),
            "module": self.module,
            "config": self.settings,
            "command": command,
        }
        env = {**os.environ, **self.env, runtime.ENV: json.dumps(spec), "PYTHONUNBUFFERED": "1"}
        if (
            hostname
        ):  # its pool processes name themselves in their life-cycle events (celerylab.engine.runtime)
            env[runtime.HOSTNAME_ENV] = hostname
        if command:
            env["CELERY_LOADER"] = runtime.LEARNER_LOADER
            cmd = [sys.executable, "-m", *learner_command(command), *argv]
        else:
            cmd = [sys.executable, "-m", "celery", "-A", "celerylab.engine.runtime", *argv]
        try:
            self._log_start = self.log_path.stat().st_size
        except OSError:
            self._log_start = 0
        start = forkserver.spawn if self.forked else processes.spawn
        self.proc = start(cmd, log_path=self.log_path, env=env, cwd=self.folder)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill(self) -> None:
        """Cold stop: SIGKILL to the whole group (main process and pool children)."""
        if self.proc is not None:
            processes.kill_group(self.proc, signal.SIGKILL)

    def _forget_own_dir(self) -> None:
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def _died(self, what: str) -> WorkerError:
        code = self.proc.returncode if self.proc else None
        return WorkerError(
            f"the {self.kind} {what} (exit code {code}). Its log ends with:\n{self.log_tail()}"
        )


class Worker(_Process):
    kind = "worker"
    _says_ready = True  # its log gets Celery's "<hostname> ready." line (it logs at INFO)

    def __init__(
        self,
        ns: Namespace,
        folder: Path | str,
        *,
        name: str = "w1",
        concurrency: int | None = 2,
        pool: str = "prefork",
        queues: Sequence[str] | None = None,
        prefetch_multiplier: int | None = None,
        settings: dict[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        module: str = "tasks",
        log_path: Path | None = None,
        command: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(ns, folder, settings, module, log_path)
        self.command = command  # the learner's own worker command line (lab.toml `command`), if any
        self.env = dict(
            env or {}
        )  # what a deployment gives it, e.g. a metrics port (celerylab.engine.metrics)
        self.name, self.hostname = name, ns.hostname(name)
        self.concurrency, self.pool = concurrency, pool
        self.queues = list(queues or [ns.queue])
        if prefetch_multiplier is not None:
            self.settings["worker_prefetch_multiplier"] = prefetch_multiplier
        self.extra_args = list(extra_args)
        self.control: Celery = ns.app("control")
        self._exit_announced = False

    def start(self, ready_timeout: float = READY_TIMEOUT) -> Worker:
        self.spawn()
        self.wait_ready(ready_timeout)
        return self

    def spawn(self) -> None:
        """Start the process without waiting: other work can overlap its ~1 s of start-up."""
        options = [
            "-P",
            self.pool,
            *(["-c", str(self.concurrency)] if self.concurrency else []),  # None: the app's own setting
            "-n",
            self.hostname,
            "-Q",
            ",".join(self.queues),
            "-E",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *self.extra_args,
        ]
        if self.command:  # its own `-l info` and the rest, then the kit's options
            self._says_ready = _logs_info(learner_command(self.command))
            self._spawn(options, hostname=self.hostname, command=self.command)
        else:
            self._says_ready = True
            self._spawn(["worker", *options, "-l", "INFO"], hostname=self.hostname)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the worker answers a ping. A ping sent before the worker consumes its pidbox is lost and
        costs its whole timeout, so the wait first watches this run's log for Celery's "<hostname> ready."
        line, which comes one event-loop turn before the pidbox is read, and then pings with a timeout
        that doubles from 50 ms. A worker that logs above INFO (or whose app configures logging its own
        way) may write no such line: without it, it is pinged every 0.25 s, from the start if its command
        line says so, else after a second."""
        begun = time.monotonic()
        deadline = begun + timeout
        watch = _LogWatch(self.log_path, self._log_start, f"{self.hostname} ready.")
        seen, wait = False, 0.05
        blind_from = begun + (1.0 if self._says_ready else 0.0)
        while True:
            seen = seen or watch.seen()
            if seen:
                if self.ping(wait):
                    return
                wait = min(1.0, wait * 2)
            elif time.monotonic() >= blind_from:
                if self.ping(0.25):
                    return
            else:
                time.sleep(0.005)  # polling the log for the ready line, bounded by the deadline below
            if not self.alive:
                raise self._died("exited before it was ready")
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerError(
                    f"the worker did not answer a ping within {timeout:.0f} s. Does importing tasks.py "
                    f"take that long, or loop forever? Its log ends with:\n{self.log_tail()}"
                )

    def ping(self, timeout: float = 1.0) -> bool:
        replies = self.control.control.ping(destination=[self.hostname], timeout=timeout)
        return any(self.hostname in reply for reply in replies or [])

    def settle(self, timeout: float = 5.0) -> None:
        """Return once the main process has gone round its event loop since this call: two pings answered
        one after the other. What it deferred to its next turn has run by then. Celery 5.7 defers an early
        ack that way (``Consumer.call_soon_ack`` -> ``hub.call_soon``), after which it sends
        ``task-started``: a task seen started may not be acked yet, and a worker killed in that instant
        gets its early-acked message back. Call this before a kill that must find the ack done."""
        deadline = time.monotonic() + timeout
        for _ in range(2):
            while not self.ping(min(1.0, max(0.1, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    raise WorkerError(f"{self.hostname} did not answer a ping within {timeout:.0f} s")

    def inspect(self, timeout: float = 2.0):
        return self.control.control.inspect(destination=[self.hostname], timeout=timeout)

    def pool_pids(self) -> list[int]:
        stats = (self.inspect().stats() or {}).get(self.hostname, {})
        return list(stats.get("pool", {}).get("processes", []))

    def kill_pool_process(self, pid: int) -> None:
        """SIGKILL one pool child (say, the one running a task) while the main process lives on: what an
        OOM kill or a crash in native code looks like to Celery (``WorkerLostError``), unlike :meth:`kill`.
        Refuses a pid that is not in this worker's pool, so a stale pid can never hit another process."""
        if pid not in self.pool_pids():
            raise WorkerError(f"pid {pid} is not a pool process of {self.hostname}")
        os.kill(pid, signal.SIGKILL)
        self._announce_kill(pid)

    def crash(self) -> None:
        """:meth:`kill` as a fault to observe (a deploy's ``kill -9``, a lost VM): the timeline is told, so
        the attempts that were running end as ``lost`` at that moment instead of running forever."""
        self.kill()
        self._announce_kill(None)

    def send_signal(self, sig: int | str, pid: int | None = None) -> float:
        """Send ``sig`` (``signal.SIGTERM``, ``"SIGQUIT"``, ...) to the worker's main process (or to ``pid``,
        one of its pool processes) and mark it on the timeline (a ``celerylab-signal`` event, drawn by
        ``Timeline.plot``). Returns the time.time() it was sent, for verdicts measured from it."""
        sig = signal.Signals[sig] if isinstance(sig, str) else signal.Signals(sig)
        if pid is not None and pid not in self.pool_pids():
            raise WorkerError(f"pid {pid} is not a pool process of {self.hostname}")
        if not self.alive:
            raise WorkerError(f"the worker {self.hostname} is not running (exit code {self.proc.returncode})")
        sent = time.time()
        os.kill(self.pid if pid is None else pid, sig)
        self._mark(timeline.SIGNALLED, signal=sig.name, signalled_pid=pid)
        return sent

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the main process has ended by itself (a warm or cold shutdown), else None.
        The first time it sees the end it marks it on the timeline (``celerylab-exited``): Celery's own
        worker-offline comes from the heartbeat the kit turns off, and a cold shutdown sends no signal
        the worker's code could hook."""
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:  # still shutting down
            return None
        if not self._exit_announced:
            self._exit_announced = True
            with contextlib.suppress(Exception):
                self._mark(timeline.EXITED, exitcode=code)
        return code

    def _announce_kill(self, pid: int | None) -> None:
        """A ``celerylab-killed`` event (see celerylab.engine.timeline): no process of the worker can
        send one."""
        self._mark(timeline.KILLED, killed_pid=pid)

    def _mark(self, kind: str, **fields: Any) -> None:
        """An event on the namespace's timeline about this worker, sent by the kit (the event's own
        ``pid`` field is the sender's, hence ``killed_pid``/``signalled_pid``)."""
        with self.control.events.default_dispatcher() as dispatcher:
            dispatcher.send(kind, worker=self.hostname, **fields)

    def wait_pool_replaced(self, pid: int, timeout: float = 10.0) -> list[int]:
        """Until ``pid`` has left the pool and the pool is back to full strength; returns the pool's pids.
        Polls remote control with a deadline (the pool reports no event when it replaces a process)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pool_pids()
            if pids and pid not in pids and len(pids) >= (self.concurrency or len(pids)):
                return pids
            if time.monotonic() > deadline:
                raise WorkerError(f"pool process {pid} was not replaced within {timeout:.0f} s: {pids}")
            time.sleep(0.1)

    def consuming(self, queue: str | None = None) -> bool:
        """Whether the worker reads ``queue`` (default: the namespace's) now, per ``active_queues``."""
        queue = queue or self.ns.queue
        found = (self.inspect().active_queues() or {}).get(self.hostname) or []
        return any(q.get("name") == queue for q in found)

    def pause_queue(self, queue: str | None = None, timeout: float = 10.0) -> None:
        """Stop reading ``queue`` (remote ``cancel_consumer``) and return once the worker confirms it, so
        messages sent next wait on the broker (e.g. to let them expire) while the worker stays up. On Redis
        the worker's BRPOP in flight (up to 1 s) may still pop one of them, and then hands it back to the
        queue ("Requeuing undeliverable message"): it stays unconsumed, but may be off the list a moment."""
        self._set_consuming(queue or self.ns.queue, False, timeout)

    def resume_queue(self, queue: str | None = None, timeout: float = 10.0) -> None:
        """Undo :meth:`pause_queue` (remote ``add_consumer``); returns once the worker reads it again."""
        self._set_consuming(queue or self.ns.queue, True, timeout)

    def _set_consuming(self, queue: str, on: bool, timeout: float) -> None:
        # Both commands only schedule the change in the worker (call_soon): their reply proves nothing.
        control = self.control.control
        where = {"destination": [self.hostname], "reply": True, "timeout": timeout}
        if on:
            control.add_consumer(queue, exchange=queue, routing_key=queue, exchange_type="direct", **where)
        else:
            control.cancel_consumer(queue, **where)
        deadline = time.monotonic() + timeout
        while self.consuming(queue) != on:
            if time.monotonic() > deadline:
                verb = "resume" if on else "pause"
                raise WorkerError(f"the worker did not {verb} {queue} within {timeout:.0f} s")

    def busy(self) -> bool:
        """True if the worker holds any task: running, prefetched, or waiting for its ETA."""
        insp = self.inspect()
        return any(
            (getattr(insp, what)() or {}).get(self.hostname) for what in ("active", "reserved", "scheduled")
        )

    def stop(self, warm: bool = False, timeout: float = 15.0) -> None:
        """Cold by default (fast); ``warm=True`` sends SIGTERM so running tasks may finish first."""
        if self.proc is not None and warm and self.alive:
            with contextlib.suppress(WorkerError, OSError):
                self.send_signal(signal.SIGTERM)
            self.wait_exit(timeout)
        self.kill()
        self._forget_own_dir()


class Beat(_Process):
    kind = "beat"

    def start(self, ready_timeout: float = READY_TIMEOUT) -> Beat:
        schedule = self.log_path.with_suffix(".schedule")  # one per beat: two beats never share a file
        self._spawn(["beat", "-s", str(schedule), "--pidfile=", "-l", "INFO", "--max-interval", "1"])
        deadline = time.monotonic() + ready_timeout
        while "beat: Starting..." not in self.log():
            if not self.alive:
                raise self._died("exited before it started")
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerError(f"beat did not start within {ready_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.kill()
        self._forget_own_dir()


class Flower(_Process):
    """``celery flower`` on the namespace's app, on a loopback port, with HTTP basic auth (Flower 2 refuses
    its REST API without authentication). Its API (``/api/workers``, ``/api/tasks``) reports what it learnt
    from the workers' events and remote control, like the UI."""

    kind = "flower"
    forked = False  # a Tornado server, started rarely: exec'd as ever

    def __init__(
        self,
        ns: Namespace,
        folder: Path | str,
        port: int,
        basic_auth: str,
        module: str = "tasks",
        log_path: Path | None = None,
    ) -> None:
        super().__init__(ns, folder, None, module, log_path)
        self.port, self.basic_auth = port, basic_auth
        self.env = {"FLOWER_BASIC_AUTH": basic_auth}  # as docker-compose.yml passes it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = READY_TIMEOUT) -> Flower:
        """Spawn it; ready once ``/api/workers`` answers 200 (polled, bounded)."""
        import httpx

        self._spawn(["flower", "--address=127.0.0.1", f"--port={self.port}", "--persistent=False"])
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                if self.get("/api/workers", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if not self.alive:
                raise self._died("exited before it answered")
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerError(f"flower did not answer within {ready_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)  # polling its port, bounded by the deadline above

    def get(self, path: str, auth: tuple[str, str] | None = None, **params: Any) -> Any:
        """``GET path`` on its API (an ``httpx.Response``), with its credentials unless ``auth`` says else."""
        import httpx

        user, _, password = self.basic_auth.partition(":")
        timeout = params.pop("timeout", 5.0)
        return httpx.get(self.url + path, params=params, auth=auth or (user, password), timeout=timeout)

    def stop(self) -> None:
        self.kill()
        self._forget_own_dir()


def _logs_info(argv: Sequence[str]) -> bool:
    """Whether ``celery ... worker`` with these arguments logs at INFO or below (the ready line)."""
    level = "WARNING"  # celery's default
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        if flag in ("-l", "--loglevel"):
            level = value
        elif flag.startswith("--loglevel="):
            level = flag.partition("=")[2]
    return level.upper() in ("DEBUG", "INFO")


class _LogWatch:
    """Whether a line has appeared in a log since ``start``, reading only what was added since last time."""

    def __init__(self, path: Path, start: int, line: str) -> None:
        self.path, self.pos, self.needle = path, start, line.encode()
        self.tail = b""

    def seen(self) -> bool:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.pos)
                data = log.read()
        except OSError:
            return False
        self.pos += len(data)
        text = self.tail + data
        if self.needle in text:
            return True
        self.tail = text[-len(self.needle) :]
        return False


@contextlib.contextmanager
def start_worker(ns: Namespace, folder: Path | str, **options: Any) -> Iterator[Worker]:
    """A ready worker for the ``with`` block; killed afterwards whatever happened."""
    worker = Worker(ns, folder, **options)
    try:
        yield worker.start()
    finally:
        worker.stop()


@contextlib.contextmanager
def start_beat(ns: Namespace, folder: Path | str, settings: dict[str, Any] | None = None) -> Iterator[Beat]:
    beat = Beat(ns, folder, settings)
    try:
        yield beat.start()
    finally:
        beat.stop()
