"""Workers ready in a fraction of a second: a pre-imported parent (a zygote) forks them.

A fresh ``python -m celery ... worker`` spends ~0.45 s importing Celery, kombu, billiard and the rest before
it does anything, and a grade starts many workers. The zygote imports all of that once and forks a process
per worker that runs ``celery``'s own ``__main__`` exactly as ``python -m celery`` would: same argv, same
environment, same folder, same code path from there on. Only the learner's code is never pre-imported:
their ``tasks.py`` (and everything in their folder) is imported fresh in every worker, so an edit between
two worker starts is always seen.

Two ways to get a server:

- :meth:`ForkServer.fork_here` forks the zygote from the current process (which must be single-threaded):
  a process that already has Celery imported (a forked pytest shard) pays nothing to start it.
- :meth:`ForkServer.launch` starts ``python -m celerylab.engine.forkserver`` through
  :func:`celerylab.engine.processes.spawn`, for processes with threads (notebook kernels, the kit's tests).

:func:`current` returns the :func:`install`-ed server or launches one; ``CELERYLAB_FORKSERVER=0`` turns it
all off (:func:`spawn` then is :func:`celerylab.engine.processes.spawn`).

The zygote is the parent of every process it forks: it reaps them and reports each exit code over its
socket, and :class:`ServedProcess` is the Popen-like handle on one (registered in ``processes._live``, so
``kill_group``, ``kill_all``, ``sweep_strays`` and ``live_pids`` treat it like a Popen).

What a forked worker gets, so that Celery cannot tell it from an exec'd one: its own session, a
parent-death signal tied to the zygote, signal dispositions as the owner's exec'd child would have them
and an empty signal mask, stdin from /dev/null and stdout+stderr appended to its log, no other descriptor,
exactly the given environment (``os.environ`` and the C one, ``TZ`` and ``LC_CTYPE`` applied), cwd,
``sys.argv``/``sys.orig_argv``, ``sys.path`` as ``python -m`` builds it, fresh ``__main__`` and std streams,
default hooks and warning filters, no inherited atexit handlers, finalizers, after-fork callbacks, Celery
apps or signal receivers, and ``ps``-visible ``/proc/PID/cmdline`` and ``/proc/PID/environ`` rewritten
to its own command line and environment (what the orphan checks read). When a pre-imported module read
an environment variable at import that the worker's environment sets differently, or the command needs
an event-loop pool (gevent/eventlet patch the world before imports), the forked child execs the real
command instead: slower, never different.

What it cannot make the same: the hash seed (``PYTHONHASHSEED``) is the zygote's, so set and dict orders
of str keys agree across forked workers where exec'd ones would differ; ``sys.flags`` are the zygote's.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import io
import itertools
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from celerylab.engine import framing, processes

ENV = "CELERYLAB_FORKSERVER"  # "0" (or false/no/off): every worker is a plain exec'd process
ROOM_ENV = "CELERYLAB_FORKSERVER_ROOM"  # padding in a launched zygote's environ block: room to rewrite it

# What a worker imports, imported once in the zygote. Not `celery.bin.celery`: importing it loads the
# `celery.commands` plugins, Flower among them, which imports prometheus_client, which picks its mode from
# PROMETHEUS_MULTIPROC_DIR at import; the metrics lab sets that per worker, so the plugins (~40 ms) are
# imported by each worker itself.
PRELOAD = (
    "celery.bin.base",
    "celery.bin.worker",
    "celery.bin.beat",
    "celery.bin.amqp",
    "celery.bin.call",
    "celery.bin.control",
    "celery.bin.events",
    "celery.bin.graph",
    "celery.bin.list",
    "celery.bin.logtool",
    "celery.bin.migrate",
    "celery.bin.multi",
    "celery.bin.purge",
    "celery.bin.result",
    "celery.bin.shell",
    "celery.bin.upgrade",
    "click_didyoumean",
    "click_plugins",
    "click_repl",
    "celery.apps.worker",
    "celery.apps.beat",
    "celery.beat",
    "celery.worker.worker",
    "celery.worker.consumer",
    "celery.worker.components",
    "celery.worker.autoscale",
    "celery.worker.pidbox",
    "celery.worker.control",
    "celery.worker.state",
    "celery.worker.strategy",
    "celery.worker.request",
    "celery.worker.loops",
    "celery.worker.heartbeat",
    "celery.concurrency.prefork",
    "celery.concurrency.asynpool",
    "celery.concurrency.solo",
    "celery.concurrency.thread",
    "billiard.pool",
    "kombu.transport.redis",
    "kombu.transport.pyamqp",
    "kombu.asynchronous.hub",
    "celery.backends.redis",
    "celery.backends.rpc",
    "celery.events",
    "celery.events.state",
    "celery.app.log",
    "celery.app.trace",
    "celery.app.control",
    "celery.app.events",
    "celery.fixups.django",
    "celery.loaders.app",
    "celery.contrib.abortable",
    "tornado.web",  # what Flower and prometheus_client import, short of themselves
    "tornado.httpserver",
    "tornado.httpclient",
    "tornado.auth",
    "tornado.options",
    "humanize",
    "pytz",
    "http.server",
    "urllib.request",
    "wsgiref.simple_server",  # its os_environ snapshot is taken again in every worker
    "mmap",
    "timeit",
    "celerylab.engine.runtime",  # its imports stay; the kit's own modules are imported again per worker
)

# Top-level packages the preload imports (besides the standard library and the interpreter's start-up
# modules). A zygote forked from a busy process (a pytest shard) forgets every other module, so a worker
# imports pytest, httpx, prometheus_client, ... afresh, as an exec'd one does. Not Django, which the
# preload merely imports (celery looks for it): a busy process may have configured it.
# tests/kit/test_forkserver.py checks it against what a fresh preload imports.
CORE = frozenset(
    {
        "amqp",
        "billiard",
        "celery",
        "celerylab",
        "cffi",
        "click",
        "click_didyoumean",
        "click_plugins",
        "click_repl",
        "dateutil",
        "greenlet",
        "humanize",
        "kombu",
        "packaging",
        "prompt_toolkit",
        "psutil",
        "pygments",
        "pytz",
        "redis",
        "six",
        "tornado",
        "typing_extensions",
        "tzlocal",
        "vine",
        "wcwidth",
        "yaml",
    }
)

# Environment variables that pre-imported modules read at import time: a worker whose environment gives
# one of them another value than the zygote had is exec'd instead (tests/kit/test_forkserver.py checks the
# list against a spied preload).
IMPORT_ENV = frozenset(
    {
        "AUTOSCALE_KEEPALIVE",
        "CELERY_BENCH",
        "CELERY_BENCH_EVERY",
        "CELERY_CUSTOM_WORKER_POOL",
        "CELERY_TRACE_APP",
        "CELERY_WORKER_REVOKES_MAX",
        "CELERY_WORKER_REVOKE_EXPIRES",
        "CELERY_WORKER_SUCCESSFUL_EXPIRES",
        "CELERY_WORKER_SUCCESSFUL_MAX",
        "C_BENCH",
        "C_BENCH_EVERY",
        "C_FAKEFORK",
        "C_IMPDEBUG",
        "C_REMDEBUG",
        "C_STRICT_APP",
        "C_WARN_APP",
        "DISABLE_TRACEBACKS",
        "FORKED_BY_MULTIPROCESSING",
        "ITERM_PROFILE",
        "KOMBU_DEBUG_POOL",
        "KOMBU_DISABLE_LIMIT_PROTECTION",
        "KOMBU_LOG_CHANNEL",
        "KOMBU_LOG_CONNECTION",
        "KOMBU_LOG_DEBUG",
        "MP_LOG",
        "MP_MAIN_FILE",
        "NOSETPS",
        "PICKLE_PROTOCOL",
        "PSUTIL_DEBUG",
        "PYTHONTZPATH",
        "REMAP_SIGTERM",
        "TERM",
        "TIMER_DEBUG",
        "TORNADO_EXTENSION",
        "TORNADO_NO_EXTENSION",
        "USE_FAST_LOCALS",
        "WCWIDTH_PYTHON",
    }
)
# Readers the check leaves out: the kit's own modules (imported again in every worker), wsgiref.handlers
# (its snapshot of the environment is taken again in every worker), and modules that read it when called.
_SPY_IGNORED = ("celerylab", "collections.abc", "wsgiref.handlers", "sysconfig", "gettext")

_EVENT_LOOP_POOLS = ("eventlet", "gevent")
_PYTHON_IGNORES = (signal.SIGPIPE, signal.SIGXFSZ)  # ignored by every Python at start-up, reset by Popen


class ForkServerError(RuntimeError):
    """The zygote is gone or cannot serve this command: spawn the plain way instead."""


def enabled() -> bool:
    """False when ``$CELERYLAB_FORKSERVER`` says 0/false/no/off."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def servable(argv: Sequence[str]) -> bool:
    """A command the zygote can run: this interpreter's ``python -m celery ...``."""
    return len(argv) >= 3 and argv[0] == sys.executable and list(argv[1:3]) == ["-m", "celery"]


# -- the client side ----------------------------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(framing.frame(json.dumps(message).encode()))


def _frames(buffer: bytearray) -> Iterator[dict[str, Any]]:
    for data in framing.unframe(buffer):
        yield json.loads(data)


class _Channel:
    """The owner's end of the socket. Several threads may spawn and wait at once: one of them reads at a
    time (whoever finds nobody reading) and files what it read, replies by request id and exit codes by
    pid, then wakes the others; no thread of its own, so the owner stays fork-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.cond = threading.Condition()
        self.send_lock = threading.Lock()
        self.reading = False
        self.closed = False
        self.buffer = bytearray()
        self.replies: dict[int, dict[str, Any]] = {}
        self.exits: dict[int, int] = {}

    def send(self, message: dict[str, Any]) -> None:
        try:
            with self.send_lock:
                _send(self.sock, message)
        except OSError as exc:
            self._close()
            raise ForkServerError(f"the fork server is gone ({exc})") from exc

    def wait_for(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Read until ``ready()`` holds (True), the server hangs up, or ``timeout`` passes (False).
        ``timeout=0`` reads what is already there and returns."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                if ready():
                    return True
                if self.closed:
                    return ready()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self.reading:
                    self.cond.wait(remaining)
                else:
                    self.reading = True
                    self.cond.release()
                    try:
                        data = self._recv(remaining)
                    finally:
                        self.cond.acquire()
                        self.reading = False
                    self._file(data)
                    self.cond.notify_all()
                if remaining is not None and remaining <= 0:
                    return ready()

    def _recv(self, timeout: float | None) -> bytes | None:
        poller = select.poll()  # not select(): a busy grader may hold descriptors above 1024
        try:
            poller.register(self.sock, select.POLLIN)
            ready = poller.poll(None if timeout is None else timeout * 1000)
            return self.sock.recv(1 << 16) if ready else None
        except (OSError, ValueError):
            return b""

    def _file(self, data: bytes | None) -> None:  # with self.cond held
        if data is None:
            return
        if not data:
            self.closed = True
            return
        self.buffer.extend(data)
        for message in _frames(self.buffer):
            if "exit" in message:
                self.exits[message["exit"]] = message["code"]
            else:
                self.replies[message["id"]] = message

    def _close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        with contextlib.suppress(OSError):
            self.sock.close()


class ServedProcess:
    """A process the zygote forked, as ``subprocess.Popen`` shows one: ``pid``, ``args``, ``returncode``,
    ``poll()``, ``wait(timeout)`` (``subprocess.TimeoutExpired``), ``send_signal``/``terminate``/``kill``.
    The exit code comes from the zygote, which reaps it; if the zygote itself is gone (its workers die
    with it), the process is read from /proc instead."""

    fork_server = True  # processes.strays(): what it starts is ours, whatever its environment block says

    def __init__(self, server: ForkServer, pid: int, args: list[str], started: int) -> None:
        self._server, self.pid, self.args, self._started = server, pid, args, started
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._server._settle(self, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not self._server._settle(self, timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _orphaned_code(self) -> int | None:
        """The zygote is gone: the process died of its parent-death signal (or is about to)."""
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(self.pid, os.WNOHANG)  # reparented to us as a subreaper
            if pid:
                return os.waitstatus_to_exitcode(status)
        state = _proc_state(self.pid)
        if state is None or state[0] == "Z" or state[1] != self._started:
            return -signal.SIGKILL
        return None

    def __repr__(self) -> str:
        return f"<ServedProcess pid={self.pid} returncode={self.returncode}>"


class _Forked:
    """The Popen-like handle of a zygote forked from this process (:meth:`ForkServer.fork_here`)."""

    fork_server = True
    zygote = True  # processes.live_pids(): not a process the caller started

    def __init__(self, pid: int) -> None:
        self.pid, self.args, self.returncode = pid, ["<fork server>"], None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._reap(os.WNOHANG) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.005)  # polling waitpid, bounded by the deadline above
        assert self.returncode is not None
        return self.returncode

    def _reap(self, flags: int) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, flags)
                except ChildProcessError:
                    self.returncode = -signal.SIGKILL  # someone else reaped it
                else:
                    if pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Elsewhere:
    """A zygote another process launched: alive while /proc shows it running (no waitpid: not our child)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        state = _proc_state(self.pid)
        return None if state is not None and state[0] != "Z" else 0


class ForkServer:
    """The owner's side of one zygote: :meth:`spawn` a ``python -m celery ...`` command through it."""

    def __init__(self, sock: socket.socket, process: Any) -> None:
        self._channel = _Channel(sock)
        self.process = process  # Popen (launched) or _Forked: in processes._live, stopped with the rest
        self._ids = itertools.count(1)

    @classmethod
    def fork_here(cls) -> ForkServer:
        """Fork the zygote from this process, which must be single-threaded (a fork copies only the
        calling thread: a lock another thread held would stay locked forever in the zygote)."""
        if threading.active_count() != 1:
            raise RuntimeError(
                f"ForkServer.fork_here() needs a single-threaded process ({threading.active_count()} "
                "threads run here); use ForkServer.launch()"
            )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        owner = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the zygote: never returns
            gc.disable()  # no collection may finalise an inherited object before _Zygote freezes them
            code = 70
            try:
                ours.detach()  # the owner's end: closed with every other inherited descriptor
                _Zygote([theirs], owner, forked=True).run()
            except BaseException:
                with contextlib.suppress(BaseException):
                    os.write(2, traceback.format_exc().encode())
            finally:
                os._exit(code)
        theirs.close()
        server = cls(ours, _Forked(pid))
        with processes._lock:
            processes._live[pid] = server.process
        return server

    @classmethod
    def launch(cls) -> ForkServer:
        """Start the zygote as a fresh process (``python -m celerylab.engine.forkserver``), registered with
        :mod:`celerylab.engine.processes` and dying with this one: for a process that has threads."""
        return cls.launch_shared(1)[0]

    @classmethod
    def launch_shared(cls, owners: int) -> list[ForkServer]:
        """:meth:`launch` one zygote for ``owners`` processes, a socket each: the parent of the pytest shards
        launches it as a grade begins (its imports overlap collection) and hands each shard one with
        :meth:`hand_over`. A process that closes its socket, or dies, takes its workers with it; the
        zygote ends with its last owner."""
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(owners)]
        try:
            env = dict(os.environ)
            env.pop(ROOM_ENV, None)
            # Room in its environ block: each worker rewrites the block to its own environment (for ps and
            # the orphan checks), which holds all of this one's plus the worker's own settings.
            block = sum(len(k) + len(v) + 2 for k, v in env.items())
            env[ROOM_ENV] = "." * min(120_000, 2 * block + 16_384)
            argv = [sys.executable, "-m", __spec__.name if __spec__ else "celerylab.engine.forkserver"]
            argv += [",".join(str(theirs.fileno()) for _, theirs in pairs), str(os.getpid())]
            # The parent-death signal comes when the thread that forked ends: from any thread but the main
            # one, the zygote goes without and ends when its socket closes (as it also does at our death).
            main = threading.current_thread() is threading.main_thread()
            if not main:
                argv.append("--no-pdeathsig")
            argv += [""] * 4096  # and room in its argv block for a worker's command line (ps shows none)
            kit = Path(__file__).resolve().parents[2]  # `-m` finds celerylab from there even if not installed
            proc = processes.spawn(
                argv,
                log_path=Path(os.devnull),
                env=env,
                cwd=kit,
                pass_fds=tuple(theirs.fileno() for _, theirs in pairs),
                parent_death=main,
            )
        except BaseException:
            for ours, _ in pairs:
                ours.close()
            raise
        finally:
            for _, theirs in pairs:
                theirs.close()
        proc.fork_server = True  # type: ignore[attr-defined]
        proc.zygote = True  # type: ignore[attr-defined]  # processes.live_pids(): not the caller's
        return [cls(ours, proc) for ours, _ in pairs]

    def hand_over(self) -> ForkServer:
        """In a process forked from the one that launched the zygote (a shard): this server, as its own.
        The zygote is not its child, so it watches it through /proc, and never stops it."""
        self.process = _Elsewhere(self.process.pid)
        return self

    def hang_up(self) -> None:
        """Close this owner's socket: the zygote stops every worker it forked for this owner (and ends
        with its last owner)."""
        self._channel._close()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return not self._channel.closed and self.process.poll() is None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> ServedProcess:
        """:func:`celerylab.engine.processes.spawn` for ``python -m celery ...``, forked by the zygote.
        Raises ``ValueError`` for another command, ``OSError`` as Popen would (a missing ``cwd``, an
        unwritable log), :class:`ForkServerError` if the zygote is gone."""
        argv = [str(a) for a in argv]
        if not servable(argv):
            raise ValueError(f"the fork server runs `{sys.executable} -m celery ...` only, not {argv!r}")
        request = {
            "op": "spawn",
            "id": next(self._ids),
            "argv": argv,
            "env": {**(os.environ if env is None else env), processes.OWNER: str(os.getpid())},
            "cwd": os.path.abspath(cwd if cwd is not None else os.getcwd()),
            "log": os.path.abspath(log_path),
            "ignored": _ignored_signals(),
            "name": processes.process_name(argv),
        }
        held = processes._hold_interrupts()  # as processes.spawn: no Ctrl-C between fork and registration
        try:
            self._channel.send(request)
            self._channel.wait_for(lambda: request["id"] in self._channel.replies, None)
            reply = self._channel.replies.pop(request["id"], None)
            if reply is None:
                raise ForkServerError("the fork server hung up before it answered")
            if "error" in reply:
                raise _error(reply["error"])
            proc = ServedProcess(self, reply["pid"], argv, reply["started"])
            with processes._lock:
                processes._live[proc.pid] = proc  # type: ignore[assignment]
        finally:
            if held:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        return proc

    def _settle(self, proc: ServedProcess, timeout: float | None) -> bool:
        """Until ``proc`` has ended (True, its ``returncode`` set) or ``timeout`` passes (False)."""
        channel = self._channel
        channel.wait_for(lambda: proc.pid in channel.exits, timeout)
        if proc.pid in channel.exits:
            proc.returncode = channel.exits[proc.pid]
            return True
        if not channel.closed:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := proc._orphaned_code()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)  # polling /proc for a process whose parent is gone, bounded by the deadline
        proc.returncode = code
        return True

    def close(self) -> None:
        """Stop the zygote; its workers die with it (their parent-death signal)."""
        processes.kill_group(self.process, signal.SIGKILL, wait=5.0)
        self._channel._close()


def _ignored_signals() -> list[int]:
    """The signals this process ignores, which an exec'd child would inherit ignored (Python's own
    SIGPIPE/SIGXFSZ ignores are reset by Popen and set again by the child's interpreter)."""
    out = []
    for sig in signal.valid_signals():
        if sig in _PYTHON_IGNORES:
            continue
        with contextlib.suppress(OSError, ValueError):
            if signal.getsignal(sig) == signal.SIG_IGN:
                out.append(int(sig))
    return out


def _error(info: dict[str, Any]) -> BaseException:
    if info.get("errno") is not None:
        return OSError(info["errno"], info["message"], info.get("filename"))
    return ForkServerError(f"the fork server could not start the process: {info['message']}")


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid``, or None if there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


_installed: ForkServer | None = None
_lock = threading.Lock()
_launch_error: BaseException | None = None


def install(server: ForkServer | None) -> None:
    """Make ``server`` the one :func:`current` returns (``None``: launch one when next needed)."""
    global _installed
    with _lock:
        _installed = server


def current() -> ForkServer | None:
    """The installed server if it still runs, else a newly launched one; None when turned off
    (``$CELERYLAB_FORKSERVER=0``) or when launching failed (then every worker is spawned plainly)."""
    global _installed, _launch_error
    if not enabled():
        return None
    with _lock:
        if _installed is not None and _installed.alive:
            return _installed
        if _launch_error is not None:
            return None
        try:
            _installed = ForkServer.launch()
        except (OSError, ForkServerError) as exc:
            _launch_error = exc
            return None
        return _installed


def spawn(
    argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Any:
    """:func:`celerylab.engine.processes.spawn`, forked by the fork server when it can run ``argv`` (a
    ``python -m celery ...`` command) and is on; else, or if the zygote just died, the plain way."""
    server = current() if servable(argv) else None
    if server is not None:
        with contextlib.suppress(ForkServerError):
            return server.spawn(argv, log_path=log_path, env=env, cwd=cwd)
    return processes.spawn(argv, log_path=log_path, env=None if env is None else dict(env), cwd=cwd)


def _after_fork_in_child() -> None:
    """A fork of the owner (a pytest shard, say) is not the owner: the zygote is not its to use, and its
    copy of the socket would keep the zygote from seeing the owner hang up."""
    global _installed, _lock
    _lock = threading.Lock()
    server, _installed = _installed, None
    if server is not None:
        with contextlib.suppress(OSError):
            server._channel.sock.close()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the zygote ---------------------------------------------------------------------------------------


_retained: list[Any] = []  # what the zygote and its children drop but must never free (see _Zygote)


class _Zygote:
    """The zygote's loop: fork a child per request, reap every child, report the exits.

    A zygote forked from a busy process inherits its objects, some of which wrap descriptors (sockets,
    files, epoll). It closes those descriptors; an object that later closed or flushed "its" descriptor
    would hit whatever reused the number. So the zygote marks every such object closed without touching
    the owner's files, freezes the garbage collector's view of everything inherited, and keeps a reference
    to whatever it drops: nothing inherited is ever finalised."""

    def __init__(self, socks: Sequence[socket.socket], owner: int, forked: bool) -> None:
        self.socks, self.owner, self.forked = list(socks), owner, forked  # one per owner it serves
        self.pid = os.getpid()
        self.children: set[int] = set()
        self.owner_of: dict[int, socket.socket] = {}  # child pid -> the socket of the owner that asked
        self.import_env: dict[str, str] = {}
        self.base_path: list[str] = []
        self.pythonpath: list[str] = []

    # set-up
    def prepare(self, pdeathsig: bool = True) -> None:
        if self.forked:
            os.setsid()  # the owner's Ctrl-C and group kills are not for the zygote
        processes.prctl(processes.PR_SET_PDEATHSIG, signal.SIGKILL if pdeathsig else 0)
        if os.getppid() != self.owner:
            os._exit(1)  # the owner died before the parent-death signal was set
        processes.prctl(
            processes.PR_SET_CHILD_SUBREAPER, 1
        )  # what a worker orphans stays below the zygote (strays())
        _default_signals(())
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if self.forked:
            self._release_inherited_files()
            gc.freeze()  # nothing the owner had is ever collected (and finalised) here or in a child
            gc.enable()
        with processes._lock:
            _retained.append(dict(processes._live))
            processes._live.clear()  # the owner's children are the owner's to stop
        if self.forked:
            _forget_modules(lambda name, module: not _core(name, module))
            sys.meta_path[:] = [f for f in sys.meta_path if _defined_in_loaded_module(f)]
            sys.path_hooks[:] = [h for h in sys.path_hooks if _defined_in_loaded_module(h)]
            sys.path_importer_cache.clear()
        _preload()
        _forget_owner_registries()
        _clear_atexit()
        self.import_env = dict(os.environ)
        self.pythonpath = _pythonpath(os.environ)
        self.base_path = _base_path(sys.path, self.pythonpath)
        processes.set_name("celerylab-fork")
        gc.collect()
        gc.freeze()  # children share the preloaded pages instead of copying them on the first collection

    def _release_inherited_files(self) -> None:
        """stdin/stdout/stderr to /dev/null, every other inherited descriptor closed, and every object
        that wraps one marked closed: sockets detached, files flushed into /dev/null and closed."""
        kept = {sock.fileno() for sock in self.socks}
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        kombu_poller = sys.modules.get("kombu.utils.eventio")
        for obj in gc.get_objects():
            with contextlib.suppress(Exception):
                if isinstance(obj, socket.socket):
                    if obj.fileno() != -1 and obj.fileno() not in kept:
                        obj.detach()
                elif isinstance(obj, io.IOBase):
                    fd = obj.fileno()
                    if fd > 2 and fd != null and fd not in kept:
                        os.dup2(null, fd)
                        obj.close()
                elif isinstance(obj, selectors.BaseSelector) or (
                    kombu_poller is not None and type(obj).__module__ == kombu_poller.__name__
                ):
                    poller = getattr(obj, "_selector", None) or getattr(obj, "_epoll", None)
                    fd = poller.fileno() if hasattr(poller, "fileno") else -1
                    if fd > 2 and fd != null and fd not in kept:
                        os.dup2(null, fd)
                        poller.close()
        os.close(null)
        _close_fds_except({0, 1, 2, *kept})

    # the loop
    def run(self, pdeathsig: bool = True) -> NoReturn:
        self.prepare(pdeathsig)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD writes to the pipe
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.wake = (wake_r, wake_w)
        buffers = {sock: bytearray() for sock in self.socks}
        while True:
            readable, _, _ = select.select([*self.socks, wake_r], [], [])
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                self._reap()
            for sock in (s for s in readable if s is not wake_r):
                data = sock.recv(1 << 16)
                if not data:
                    self._owner_gone(sock)
                    continue
                buffers[sock].extend(data)
                for request in _frames(buffers[sock]):
                    self._serve(request, sock)
            self._reap()

    def _owner_gone(self, sock: socket.socket) -> None:
        """An owner closed its end (or died): nothing it started may outlive it. With no owner left the
        zygote ends."""
        for pid, owner in list(self.owner_of.items()):
            if owner is sock:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ValueError):
            self.socks.remove(sock)
        if not self.socks:
            os._exit(0)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            if pid in self.children:  # else an orphan of a worker, re-parented to the subreaper
                self.children.discard(pid)
                owner = self.owner_of.pop(pid)
                if owner in self.socks:
                    self._reply({"exit": pid, "code": os.waitstatus_to_exitcode(status)}, owner)

    def _reply(self, message: dict[str, Any], sock: socket.socket) -> None:
        try:
            _send(sock, message)
        except OSError:
            self._owner_gone(sock)

    def _serve(self, request: dict[str, Any], sock: socket.socket) -> None:
        err_r, err_w = os.pipe()  # close-on-exec: EOF once the child runs Celery (or exec'd), else why not
        pid = os.fork()
        if pid == 0:
            _Child(self, request, err_w).run()
        os.close(err_w)
        with os.fdopen(err_r, "rb") as pipe:
            failure = pipe.read()
        if failure:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._reply({"id": request["id"], "error": json.loads(failure)}, sock)
            return
        self.children.add(pid)
        self.owner_of[pid] = sock
        state = _proc_state(pid)
        self._reply({"id": request["id"], "pid": pid, "started": state[1] if state else 0}, sock)


class _Child:
    """One forked process, from the fork to ``os._exit``: made to look like ``python -m celery ...``, then
    running ``celery``'s ``__main__`` as ``python -m`` does and ending as the interpreter would."""

    def __init__(self, zygote: _Zygote, request: dict[str, Any], err_w: int) -> None:
        self.zygote, self.request, self.err_w = zygote, request, err_w

    def run(self) -> NoReturn:
        code = 1
        try:
            try:
                self.prepare()
            except BaseException as exc:
                self._report(exc)
                os._exit(127)
            code = _run_main(self.request["argv"])
        except BaseException:  # never back into the zygote's loop, whatever happens
            with contextlib.suppress(BaseException):
                os.write(2, traceback.format_exc().encode())
        finally:
            os._exit(code)

    def _report(self, exc: BaseException) -> None:
        info = {"message": f"{type(exc).__name__}: {exc}", "errno": None}
        if isinstance(exc, OSError) and exc.errno is not None:
            info = {"message": exc.strerror or str(exc), "errno": exc.errno, "filename": exc.filename}
        with contextlib.suppress(OSError):
            os.write(self.err_w, json.dumps(info).encode())

    def prepare(self) -> None:
        zygote, request = self.zygote, self.request
        argv, env, cwd = request["argv"], request["env"], request["cwd"]
        os.setsid()
        processes.prctl(processes.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote.pid:
            os._exit(1)
        signal.set_wakeup_fd(-1)
        _default_signals(request["ignored"])
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        os.chdir(cwd)  # a missing folder fails the spawn, as with Popen
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for sock in zygote.socks:
            sock.detach()
        _close_fds_except({0, 1, 2, self.err_w})
        _replace_environ(env)
        if _must_exec(argv, env, zygote.import_env):
            os.execve(argv[0], argv, env)  # err_w is close-on-exec: the zygote reads EOF on success
        _set_proc_view(argv, env)
        name = request.get("name")
        if name:
            processes.set_name(name)
        _fresh_interpreter(argv, env, cwd, zygote)
        os.close(self.err_w)


def _default_signals(ignored: Sequence[int]) -> None:
    """Dispositions as a freshly exec'd Python has them: what the owner ignores stays ignored, everything
    else default; then what the interpreter sets itself (SIGPIPE/SIGXFSZ ignored, SIGINT raising
    KeyboardInterrupt unless ignored)."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)
    for sig in _PYTHON_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    if signal.SIGINT not in ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _close_fds_except(keep: set[int]) -> None:
    top = os.sysconf("SC_OPEN_MAX")
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, top)


def _replace_environ(env: Mapping[str, str]) -> None:
    """``os.environ`` and the C environment (what ``getenv`` and exec'd programs see) become ``env``."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).clearenv()
    _retained.append(dict(os.environ))
    os.environ.clear()
    os.environ.update(env)
    time.tzset()  # TZ: localtime, time.timezone, time.tzname
    with contextlib.suppress(Exception):
        import locale

        locale.setlocale(locale.LC_CTYPE, "")  # as the interpreter does at start-up (LC_ALL, LC_CTYPE, LANG)


def _must_exec(argv: Sequence[str], env: Mapping[str, str], import_env: Mapping[str, str]) -> bool:
    """A worker the preload cannot serve faithfully: an event-loop pool (gevent/eventlet patch the
    standard library before anything imports it), or a variable a pre-imported module read at import
    set differently from the zygote's."""
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        pool = value if flag in ("-P", "--pool") else ""
        if flag.startswith("--pool="):
            pool = flag.partition("=")[2]
        elif flag.startswith("-P") and len(flag) > 2:
            pool = flag[2:]
        if pool in _EVENT_LOOP_POOLS:
            return True
    return any(env.get(key) != import_env.get(key) for key in IMPORT_ENV)


def _set_proc_view(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """What ps and /proc show of this process: its own command line and environment.

    A forked process keeps the zygote's: the kernel reads /proc/PID/cmdline and /proc/PID/environ from the
    memory where exec laid out argv and the environment. That memory is rewritten in place. The command
    line fits as a real argv, or else as one title that runs on into the environment block (the kernel
    reads it as setproctitle(3) leaves it); the environment follows with the owner's mark first and the
    shortest entries next, as far as there is room."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        arg_start, arg_end, env_start, env_end = (int(fields[i]) for i in range(45, 49))
    except (OSError, ValueError, IndexError):
        return
    if not (0 < arg_start < arg_end and 0 < env_start <= env_end):
        return
    args = b"\0".join(os.fsencode(a) for a in argv) + b"\0"
    entries = sorted(
        (f"{k}={v}".encode(errors="surrogateescape") + b"\0" for k, v in env.items()),
        key=lambda e: (not e.startswith(processes.OWNER.encode() + b"="), len(e)),
    )
    if env_start == arg_end:  # one area: the title may run on into the environment block
        area = env_end - arg_start
        if len(args) <= arg_end - arg_start:
            head = args.ljust(arg_end - arg_start, b"\0")
        else:
            title = args[:-1].replace(b"\0", b" ")[: area - 1]
            head = title + b"\0"
        block = bytearray(head)
        for entry in entries:
            if len(block) + len(entry) <= area:
                block.extend(entry)
        ctypes.memmove(arg_start, bytes(block.ljust(area, b"\0")), area)
        return
    room = arg_end - arg_start
    head = args if len(args) <= room else args[: room - 1].replace(b"\0", b" ") + b"\0"
    ctypes.memmove(arg_start, head.ljust(room, b"\0"), room)
    block = bytearray()
    for entry in entries:
        if len(block) + len(entry) <= env_end - env_start:
            block.extend(entry)
    ctypes.memmove(env_start, bytes(block.ljust(env_end - env_start, b"\0")), env_end - env_start)


def _fresh_interpreter(argv: Sequence[str], env: Mapping[str, str], cwd: str, zygote: _Zygote) -> None:
    """Interpreter-wide state as ``python -m celery`` would start with it."""
    sys.argv = ["-m", *argv[3:]]  # runpy puts celery/__main__.py in argv[0], as -m does
    sys.orig_argv = list(argv)
    safe = bool(env.get("PYTHONSAFEPATH"))
    sys.path[:] = ([] if safe else [cwd]) + _pythonpath(env) + zygote.base_path
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    import linecache

    linecache.clearcache()
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    _fresh_std_streams(env)
    import faulthandler

    faulthandler.disable()
    if env.get("PYTHONFAULTHANDLER"):
        faulthandler.enable()
    _fresh_warnings(env)
    sys.excepthook, sys.displayhook = sys.__excepthook__, sys.__displayhook__
    sys.unraisablehook, sys.breakpointhook = sys.__unraisablehook__, sys.__breakpointhook__
    threading.excepthook = threading.__excepthook__
    sys.settrace(None)
    sys.setprofile(None)
    threading.settrace(None)  # type: ignore[arg-type]
    threading.setprofile(None)  # type: ignore[arg-type]
    sys.setrecursionlimit(1000)
    sys.setswitchinterval(0.005)
    socket.setdefaulttimeout(None)
    import tempfile

    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    handlers = sys.modules.get("wsgiref.handlers")
    if handlers is not None:  # the environment a WSGI app sees, as wsgiref took it at import
        handlers.BaseHandler.os_environ = handlers.read_environ()
    _clear_atexit()
    _fresh_logging()
    _fresh_process_identity()
    _fresh_celery()
    learner = _learner_modules(argv, env)
    folder = _prefixes([cwd])
    installed = _prefixes(p for p in zygote.base_path if os.path.isdir(p))
    _forget_modules(
        lambda name, module: (
            name.split(".")[0] in learner or (_under(module, folder) and not _under(module, installed))
        )
    )
    for name in ("__main__", "__mp_main__"):
        if name in sys.modules:
            _retained.append(sys.modules[name])
    main = types.ModuleType("__main__")
    main.__annotations__ = {}  # what the interpreter's own __main__ starts with; runpy adds the rest
    sys.modules["__main__"] = main
    sys.modules.pop("__mp_main__", None)


def _fresh_std_streams(env: Mapping[str, str]) -> None:
    """New sys.stdin/stdout/stderr on descriptors 0-2, built as the interpreter builds them; the old
    objects are kept (and so never closed)."""
    import locale

    _retained.extend([sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__])
    import codecs

    # the interpreter's rules: surrogateescape in the C/POSIX locales and the ones it coerces them to
    c_locale = locale.setlocale(locale.LC_CTYPE) in ("C", "POSIX", "C.UTF-8", "C.utf8", "UTF-8")
    encoding = codecs.lookup("utf-8" if sys.flags.utf8_mode else locale.getencoding()).name
    errors = "surrogateescape" if sys.flags.utf8_mode or c_locale else "strict"
    io_encoding = env.get("PYTHONIOENCODING", "")
    if io_encoding:
        name, _, errs = io_encoding.partition(":")
        encoding, errors = name or encoding, errs or errors
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))

    def stream(fd: int, mode: str, errs: str) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        writing = mode == "wb"
        if unbuffered and writing:
            binary: Any = raw
        elif writing:
            binary = io.BufferedWriter(raw)
        else:
            binary = io.BufferedReader(raw)
        line_buffering = writing and not unbuffered and (fd == 2 or raw.isatty())
        return io.TextIOWrapper(
            binary,
            encoding=encoding,
            errors=errs,
            line_buffering=line_buffering,
            write_through=writing and unbuffered,
        )

    sys.stdin = sys.__stdin__ = stream(0, "rb", errors)
    sys.stdout = sys.__stdout__ = stream(1, "wb", errors)
    sys.stderr = sys.__stderr__ = stream(2, "wb", "backslashreplace")


def _fresh_warnings(env: Mapping[str, str]) -> None:
    """The interpreter's default filters, then PYTHONWARNINGS (what a fresh process would apply)."""
    import warnings

    if sys.flags.dev_mode:
        warnings.filters[:] = [("default", None, Warning, None, 0)]
    else:  # as the interpreter's C code lays them out (a plain module name, not a regex)
        warnings.filters[:] = [
            ("default", None, DeprecationWarning, "__main__", 0),
            ("ignore", None, DeprecationWarning, None, 0),
            ("ignore", None, PendingDeprecationWarning, None, 0),
            ("ignore", None, ImportWarning, None, 0),
            ("ignore", None, ResourceWarning, None, 0),
        ]
    warnings._filters_mutated()  # type: ignore[attr-defined]
    options = [*sys.warnoptions]
    options[:0] = [o for o in env.get("PYTHONWARNINGS", "").split(",") if o]
    with contextlib.suppress(Exception):
        warnings._processoptions(options)  # type: ignore[attr-defined]


def _clear_atexit() -> None:
    """No atexit handler of the zygote's (or its owner's) runs in a child; the ones that modules
    register when imported are registered again, for the modules that are loaded."""
    atexit._clear()
    import logging

    atexit.register(logging.shutdown)
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        atexit.register(mp_util._exit_function)


def _fresh_logging() -> None:
    """No handler, level or disabling the zygote's process had set (libraries' NullHandlers stay)."""
    import logging

    logging.disable(logging.NOTSET)
    loggers = [logging.root]
    loggers += [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        kept = [h for h in logger.handlers if type(h) is logging.NullHandler]
        _retained.append(logger.handlers)
        logger.handlers = kept
        logger.disabled = False
    logging.root.setLevel(logging.WARNING)
    _retained.append(list(logging._handlerList))  # type: ignore[attr-defined]
    logging._handlerList[:] = []  # type: ignore[attr-defined]


def _forget_owner_registries() -> None:
    """In the zygote: no after-fork callback or finalizer of the owner's objects survives; the ones
    modules register when imported (kombu's connection and producer pools) stay, as in a fresh process."""
    globals_ = {id(v) for m in list(sys.modules.values()) if m is not None for v in vars(m).values()}
    for prefix in ("multiprocessing", "billiard"):
        util = sys.modules.get(f"{prefix}.util")
        if util is None:
            continue
        registry = getattr(util, "_afterfork_registry", None)
        if registry is not None:
            for key, obj in list(registry.items()):
                if id(obj) not in globals_:
                    _retained.append(obj)
                    del registry[key]
        finalizers = getattr(util, "_finalizer_registry", None)
        if finalizers is not None:
            _retained.append(dict(finalizers))
            finalizers.clear()
    import weakref

    _retained.append(dict(weakref.finalize._registry))  # type: ignore[attr-defined]
    weakref.finalize._registry.clear()  # type: ignore[attr-defined]
    weakref.finalize._registered_with_atexit = False  # type: ignore[attr-defined]


def _fresh_process_identity() -> None:
    """What multiprocessing and billiard hold per process: children, and a random authentication key."""
    for prefix in ("multiprocessing", "billiard"):
        process = sys.modules.get(f"{prefix}.process")
        if process is not None:
            with contextlib.suppress(Exception):
                process._children.clear()
            with contextlib.suppress(Exception):
                process._current_process._config["authkey"] = process.AuthenticationString(os.urandom(32))


def _fresh_celery() -> None:
    """Celery's process-wide state as at import: no app (default or current), no signal receiver, no
    shared task or remote-control command of anybody's code, the local time zone read again."""
    from celery import _state, signals
    from celery.utils.dispatch.signal import Signal

    _retained.append((_state.default_app, getattr(_state._tls, "current_app", None), set(_state._apps)))
    _state.default_app = None
    _state._tls.current_app = None
    _state._apps.clear()
    _state._task_join_will_block = False
    with contextlib.suppress(Exception):
        while _state._task_stack.top is not None:
            _state._task_stack.pop()
    finalizers = set(_state._on_app_finalizers)
    _retained.append(finalizers)
    _state._on_app_finalizers.clear()
    builtin = [f for f in finalizers if getattr(f, "__module__", "") == "celery.app.builtins"]
    _state._on_app_finalizers.update(builtin)
    for value in vars(signals).values():
        if isinstance(value, Signal):
            _retained.append(list(value.receivers))
            value.receivers = []
            value.sender_receivers_cache.clear()
    control = sys.modules.get("celery.worker.control")
    if control is not None:
        for name, handler in list(control.Panel.data.items()):
            if not str(getattr(handler, "__module__", "")).startswith("celery."):
                _retained.append((control.Panel.data.pop(name), control.Panel.meta.pop(name, None)))
    times = sys.modules.get("celery.utils.time")
    if times is not None:
        times.timezone.__dict__.pop("local", None)
    local = sys.modules.get("tzlocal.unix")
    if local is not None:
        for name in ("_cache_tz", "_cache_tz_name"):
            if hasattr(local, name):
                setattr(local, name, None)


def _learner_modules(argv: Sequence[str], env: Mapping[str, str]) -> set[str]:
    """Top-level names of the learner's modules: the kit's runtime spec names one, ``-A`` the other."""
    names = {"celerylab"}  # the kit's own modules too: imported again, with this worker's environment
    with contextlib.suppress(ValueError, KeyError, TypeError):
        spec = json.loads(env.get("CELERYLAB_TASKS") or "{}")
        names.add(str(spec.get("module") or "tasks").split(".")[0])
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        if flag in ("-A", "--app"):
            names.add(value.split(":")[0].split(".")[0])
        elif flag.startswith("--app="):
            names.add(flag.partition("=")[2].split(":")[0].split(".")[0])
    return names


def _prefixes(folders: Iterable[str]) -> tuple[str, ...]:
    """Path prefixes that mean "in one of these folders", as given and with symbolic links resolved."""
    out: set[str] = set()
    for folder in folders:
        out.update(os.path.join(os.path.abspath(f), "") for f in (folder, os.path.realpath(folder)))
    return tuple(out)


def _under(module: Any, prefixes: tuple[str, ...]) -> bool:
    """Whether the module's file lives below one of ``prefixes`` (see :func:`_prefixes`)."""
    path = getattr(module, "__file__", None)
    return bool(path) and os.path.abspath(path).startswith(prefixes)


def _forget_modules(drop: Callable[[str, Any], bool]) -> None:
    """Drop modules from sys.modules (and their names from the packages that hold them), so the next
    import runs them afresh; the module objects are kept, never freed."""
    doomed = [name for name, module in list(sys.modules.items()) if module is not None and drop(name, module)]
    for name in doomed:
        module = sys.modules.pop(name, None)
        _retained.append(module)
        parent, _, child = name.rpartition(".")
        holder = sys.modules.get(parent) if parent else None
        if holder is not None and getattr(holder, child, None) is module:
            with contextlib.suppress(AttributeError, TypeError):
                delattr(holder, child)


def _core(name: str, module: Any) -> bool:
    """Kept in a zygote forked from a busy process: the standard library, the preload's packages, and
    what the interpreter imported at start-up (site's editable-install finders)."""
    top = name.split(".")[0]
    return (
        top in sys.stdlib_module_names
        or top in CORE
        or top in sys.builtin_module_names
        or top.startswith("__editable__")
        or top.startswith("_sysconfigdata")
        or top in ("_distutils_hack", "sitecustomize", "usercustomize", "__main__", "__mp_main__")
        or not getattr(module, "__file__", None)
    )


def _defined_in_loaded_module(obj: Any) -> bool:
    owner = obj if isinstance(obj, type) else type(obj)
    if isinstance(obj, types.FunctionType | types.BuiltinFunctionType):
        owner = obj
    return getattr(owner, "__module__", None) in sys.modules


def preload() -> None:
    """Import what a worker needs here, in a process that will fork zygotes (the parent of the pytest
    shards): every zygote and worker forked below it then shares these pages instead of importing them."""
    _preload()


def _preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _pythonpath(env: Mapping[str, str]) -> list[str]:
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _base_path(path: Sequence[str], pythonpath: Sequence[str]) -> list[str]:
    """``sys.path`` without its first entry (the script's folder or cwd), the PYTHONPATH entries, and
    whatever was put in front of the standard library since start-up (pytest's rootdir, say)."""
    stdlib = os.path.dirname(os.__file__)  # .../lib/python3.11, after .../lib/python311.zip
    zipped = os.path.join(os.path.dirname(stdlib), f"python{sys.version_info[0]}{sys.version_info[1]}.zip")
    for index, entry in enumerate(path):
        if entry in (stdlib, zipped):
            return list(path[index:])
    return [p for p in path[1:] if p not in pythonpath]


def _run_main(argv: Sequence[str]) -> int:
    """``python -m celery``: run its ``__main__``, then end as the interpreter ends (threads joined,
    atexit handlers run, streams flushed); the exit code as Python would give it."""
    import runpy

    code = 0
    interrupted = False
    try:
        runpy._run_module_as_main("celery")  # type: ignore[attr-defined]
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        interrupted = True
        sys.excepthook(*sys.exc_info())
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            code = code or 120
    if interrupted:  # as the interpreter does: die of the SIGINT, so the parent sees why
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    with contextlib.suppress(Exception):
        print(exc.code, file=sys.stderr)
    return 1


# -- inspection (for tests/kit/test_forkserver.py) ------------------------------------------------------


def inspect_preload() -> dict[str, Any]:
    """In a fresh interpreter: preload, and report which environment variables modules read while being
    imported, the top-level packages loaded, the celery signal receivers connected and the atexit
    handlers registered, so the constants above can be checked."""
    reads: dict[str, set[str]] = {}
    environ_type = type(os.environ)
    original = environ_type.__getitem__, environ_type.__contains__, environ_type.get

    def reader() -> str:
        frame = sys._getframe(2)
        while frame is not None and frame.f_globals.get("__name__") in ("os", "_collections_abc", __name__):
            frame = frame.f_back
        return frame.f_globals.get("__name__", "?") if frame is not None else "?"

    def getitem(self: Any, key: str) -> str:
        reads.setdefault(key, set()).add(reader())
        return original[0](self, key)

    def contains(self: Any, key: object) -> bool:
        reads.setdefault(str(key), set()).add(reader())
        return original[1](self, key)

    def get(self: Any, key: str, default: Any = None) -> Any:
        reads.setdefault(key, set()).add(reader())
        return original[2](self, key, default)

    registered: list[str] = []
    register = atexit.register

    def spy_register(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        registered.append(f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}")
        return register(func, *args, **kwargs)

    before = set(sys.modules)
    environ_type.__getitem__, environ_type.__contains__, environ_type.get = getitem, contains, get  # type: ignore[method-assign,assignment]
    atexit.register = spy_register  # type: ignore[assignment]
    try:
        _preload()
    finally:
        environ_type.__getitem__, environ_type.__contains__, environ_type.get = original  # type: ignore[method-assign]
        atexit.register = register  # type: ignore[assignment]
    from celery import signals
    from celery.utils.dispatch.signal import Signal

    loaded = set(sys.modules) - before
    return {
        "env": {
            key: sorted(mods)
            for key, mods in reads.items()
            if any(m in loaded and not m.startswith(_SPY_IGNORED) for m in mods)
        },
        "tops": sorted(
            {
                name.split(".")[0]
                for name in sys.modules
                if not _core_builtin(name) and name.split(".")[0] not in sys.stdlib_module_names
            }
        ),
        "receivers": {
            name: len(value.receivers)
            for name, value in vars(signals).items()
            if isinstance(value, Signal) and value.receivers
        },
        "finalizers": sorted(getattr(f, "__module__", "?") for f in _on_app_finalizers()),
        "atexit": registered,
    }


def _on_app_finalizers() -> set[Any]:
    from celery import _state

    return set(_state._on_app_finalizers)


def _core_builtin(name: str) -> bool:
    module = sys.modules.get(name)
    top = name.split(".")[0]
    return (
        module is None
        or not getattr(module, "__file__", None)
        or top.startswith("__editable__")
        or top.startswith("_sysconfigdata")
        or top in ("_distutils_hack", "sitecustomize", "usercustomize", "__main__", "__mp_main__")
    )


def _main(args: Sequence[str]) -> NoReturn:
    """``python -m celerylab.engine.forkserver FD[,FD...] OWNER [--no-pdeathsig]``: the launched zygote
    (a socket per owner it serves); or
    ``--inspect``: print :func:`inspect_preload` as JSON."""
    if args[:1] == ["--inspect"]:
        print(json.dumps(inspect_preload()))
        sys.stdout.flush()
        os._exit(0)
    code = 70
    try:
        socks = [socket.socket(fileno=int(fd)) for fd in args[0].split(",")]
        _Zygote(socks, int(args[1]), forked=False).run(pdeathsig="--no-pdeathsig" not in args)
    except BaseException:
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode())
    finally:
        os._exit(code)


if __name__ == "__main__":
    _main(sys.argv[1:])
