"""Child processes the kit starts (workers, beat, embedded brokers), and the promise to stop them all.

Every child gets its own session (so a kill reaches prefork children too) and, on Linux, a parent-death
signal, so even a SIGKILLed grader leaves nothing behind. Whatever is still alive at interpreter exit, or
when the grader gets SIGTERM, is killed.

A learner's code can start processes of its own (a fork, a daemon, a child in a new session) that a group
kill does not reach. The grader makes itself a child subreaper, so every such orphan is re-parented to it
instead of to init, and every child the kit spawns carries ``CELERYLAB_OWNER`` in its environment, which
its descendants inherit; :func:`sweep_strays` kills whatever below the grader carries the mark and is not
a process the kit still runs.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_live: dict[int, subprocess.Popen] = {}
_lock = threading.Lock()
PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
OWNER = "CELERYLAB_OWNER"  # in every spawned child's environment: whose grade it belongs to
WORKER_NAME = "celerylab-w"  # /proc/PID/comm of a worker's processes (main and pool), forked or exec'd
BEAT_NAME = "celerylab-b"


def prctl(option: int, value: int) -> bool:
    """Linux's prctl(option, value); False where it failed or does not exist."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _prepare_child() -> None:  # runs in the child between fork and exec
    _unblock_interrupts()
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _unblock_interrupts() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # the mask survives exec


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    pass_fds: Sequence[int] = (),
    parent_death: bool = True,
) -> subprocess.Popen:
    """Start ``argv`` in its own session, output appended to ``log_path``, registered for cleanup.

    Ctrl-C is held off until the child is registered: a KeyboardInterrupt between fork and registration
    would leave a child nobody knows to stop. ``pass_fds``: descriptors the child keeps (a fork server's
    socket). ``parent_death=False``: no parent-death signal, for a long-lived child started from a thread
    that may end first (the signal comes when the thread that forked ends, not the process); such a child
    must notice its owner's death another way (the fork server: its socket closes)."""
    held = _hold_interrupts()
    env = {**(os.environ if env is None else env), OWNER: str(os.getpid())}
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_prepare_child if parent_death else _unblock_interrupts,
                pass_fds=tuple(pass_fds),
            )
        with _lock:
            _live[proc.pid] = proc
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    return proc


def _hold_interrupts() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False  # signals are delivered to the main thread only
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    return True


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, wait: float = 5.0) -> None:
    """Send ``sig`` to the child's whole process group and reap it."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        if sig != signal.SIGKILL:
            kill_group(proc, signal.SIGKILL, wait)
            return
    _reap_group(proc.pid)
    with _lock:
        _live.pop(proc.pid, None)


def _reap_group(pgid: int, timeout: float = 3.0) -> None:
    """SIGKILL whatever is left in the group (e.g. prefork children orphaned by a dead parent) and wait
    until none of it runs any more, so "stopped" means stopped when this returns."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout
    while _running_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _running_in_group(pgid: int) -> bool:
    """Any live (not zombie) process in the group? Read from /proc: killpg(pgid, 0) counts zombies."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def set_name(name: str) -> None:
    """This process's comm name (``ps -o comm``, /proc/PID/comm; 15 bytes at most), which its forks
    inherit: how the kit's orphan checks tell a worker's processes, forked or exec'd, at a glance."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def process_name(argv: Sequence[str]) -> str | None:
    """The comm name a Celery command's processes get (:func:`set_name`): one for workers, one for beat."""
    if "worker" in argv:
        return WORKER_NAME
    if "beat" in argv:
        return BEAT_NAME
    return None


def become_subreaper() -> bool:
    """Orphaned descendants (a learner's daemon, a child in its own session) come to this process, not
    to init, so :func:`sweep_strays` can still find them."""
    return prctl(PR_SET_CHILD_SUBREAPER, 1)


def _table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, state) of every process, from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            out[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), fields[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _marked(pid: int, owner: str) -> bool:
    try:
        return f"{OWNER}={owner}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def strays() -> list[int]:
    """Live processes below this one that belong to a grade (they carry its mark, or descend from one
    that does, or from a process the kit runs) but are neither a process the kit runs nor in such a
    process's group. A worker forked by the fork server (celerylab.engine.forkserver) may show its
    zygote's environment block instead of its own (no room to rewrite it, a zygote forked from an unmarked
    process): what it starts is found as a descendant of the zygote or the worker, both registered here."""
    me, owner = os.getpid(), str(os.getpid())
    table = _table()
    with _lock:
        live = {pid: proc for pid, proc in _live.items() if proc.poll() is None}
    kept_groups = set(live)
    ours_below = {pid for pid, proc in live.items() if getattr(proc, "fork_server", False)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [(pid, False) for pid in children.get(me, [])]
    while stack:
        pid, inherited = stack.pop()
        ppid, pgid, state = table.get(pid, (0, 0, "Z"))
        ours = inherited or pid in ours_below or _marked(pid, owner)
        if ours and pgid not in kept_groups and state != "Z":
            found.append(pid)
        stack.extend((child, ours) for child in children.get(pid, []))
    return found


def sweep_strays(timeout: float = 3.0) -> list[int]:
    """Kill every stray (see :func:`strays`): stopped first, so none can fork while the rest die."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while (found := strays()) and time.monotonic() < deadline:
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in found:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        for pid in found:
            _reap(pid)
        killed.extend(found)
    return killed


def _reap(pid: int) -> None:
    """Collect a killed orphan that was re-parented to us (not a child of ours: nothing to do)."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def kill_all() -> None:
    with _lock:
        procs = list(_live.values())
    for proc in procs:
        kill_group(proc, signal.SIGKILL, wait=2.0)
    sweep_strays()


def forget_inherited() -> None:
    """In a forked copy of the grader (a shard): the parent's children are the parent's to stop."""
    with _lock:
        _live.clear()


def live_pids() -> list[int]:
    """The processes the kit started here that still run: workers, beats, servers. A fork server's zygote
    (celerylab.engine.forkserver) is left out: it is plumbing kept for the next worker, not something a
    caller started, and it dies with this process like the rest; a notebook's "no worker outlived the
    playground" must not count it."""
    with _lock:
        return [
            pid for pid, proc in _live.items() if not getattr(proc, "zygote", False) and proc.poll() is None
        ]


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by the orphan tests via a subprocess
    kill_all()
    raise SystemExit(128 + signum)


atexit.register(kill_all)
if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
    signal.SIG_DFL,
    None,
):
    signal.signal(signal.SIGTERM, _on_sigterm)
