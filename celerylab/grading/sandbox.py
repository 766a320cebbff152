"""A sandbox for other people's code: how one grade of a submission is wrapped on Linux.

A batch grades code the instructor has not read. Each grade (its grader, the import probe, the workers and
the embedded broker) runs under ``unshare --net --mount --pid --fork --kill-child``, and then this module's
:func:`enter` as the new PID namespace's init (still root, inside), which

- brings up the namespace's own loopback: the only network there is (no route out, and the machine's
  Redis/RabbitMQ/PostgreSQL on 127.0.0.1 are not this loopback's: the broker must be embedded);
- remounts every mount read-only (the kit, the venv, the home folder, /tmp), lays an empty read-only
  tmpfs over the home folders (binding back only the interpreter when it lives there), a private
  tmpfs on /dev/shm (prefork's semaphores), a fresh /proc, and binds the grade's own folder read-write:
  the only writable place;
- forks the grade as an unprivileged uid of its own (so the process-count limit holds, which it does not
  for root, and the grade cannot signal anything outside), with CPU-time, address-space, file-size and
  process-count limits, and waits: when the grade ends, init ends, and the kernel kills whatever is left
  in the namespace. A ``kill -9`` of ``unshare`` (the batch's wall-clock timeout) does the same.

:func:`detect` says whether this is available; where it is not (not Linux, not root, no ``unshare``, a
kernel that refuses the namespaces), :func:`wrap` falls back to the limits alone (rlimits, own session,
a private home and temp folder) and :attr:`Support.statement` says so, in the words the batch prints.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

UID_BASE = 61000  # grade n runs as uid UID_BASE + n: its process count is its own
NS_FLAGS = ["--net", "--mount", "--pid", "--fork", "--kill-child"]


@dataclass(frozen=True)
class Limits:
    """Per process (rlimits), except ``processes``: per grade (its own uid). Generous for a grade (a few
    workers of a few processes, each with threads), small for a fork bomb or a memory hog."""

    cpu_seconds: int = 300
    memory_bytes: int = 2 * 1024**3  # address space: a grade's processes use ~0.1-0.5 GB each
    file_bytes: int = 256 * 1024**2
    processes: int = 256  # threads count too
    shm_bytes: int = 64 * 1024**2


@dataclass(frozen=True)
class Support:
    """What this machine allows: ``full`` (namespaces + uid + limits) or ``limits`` (the fallback)."""

    level: str
    reason: str

    @property
    def full(self) -> bool:
        return self.level == "full"

    @property
    def statement(self) -> str:
        if self.full:
            return (
                "sandbox: each grade in its own network, mount and PID namespaces (loopback only, the kit "
                "read-only, its folder the only writable place), as its own uid, with CPU, memory, file and "
                "process limits"
            )
        return (
            f"sandbox unavailable ({self.reason}); falling back to limits only: CPU, memory, file and "
            "process limits, its own session and temp folder, a wall-clock timeout. The submissions can "
            "reach the network and write wherever this user can: grade only code you trust this way"
        )


def detect() -> Support:
    """Try the real thing once (``unshare ... true``): a kernel or container may refuse it even to root."""
    if not sys.platform.startswith("linux"):
        return Support("limits", f"namespaces are Linux-only, this is {sys.platform}")
    if os.geteuid() != 0:
        return Support("limits", "not root: network/mount namespaces and a uid per grade need root")
    unshare = shutil.which("unshare")
    if unshare is None:
        return Support("limits", "no `unshare` (util-linux) on PATH")
    try:
        done = subprocess.run([unshare, *NS_FLAGS, "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Support("limits", f"`unshare` failed: {exc}")
    if done.returncode != 0:
        return Support("limits", f"`unshare {' '.join(NS_FLAGS)}` refused: {done.stderr.strip()[:200]}")
    return Support("full", "")


def scratch_parent() -> str:
    """Where grade folders can go: the temp folder if every uid can pass through it (a test's private
    temp folder is 0700), else /tmp."""
    path = Path(tempfile.gettempdir()).resolve()
    if all(p.stat().st_mode & 0o001 for p in [path, *path.parents]):
        return str(path)
    return "/tmp"


def hand_over(workdir: Path, uid: int, support: Support) -> None:
    """Make ``workdir`` the sandboxed uid's own (with full support; the fallback runs as this user)."""
    if support.full:
        for path in [workdir, *workdir.rglob("*")]:
            os.lchown(path, uid, uid)


def wrap(
    argv: Sequence[str], workdir: Path, uid: int, support: Support, limits: Limits = Limits()
) -> list[str]:
    """The command line that runs ``argv`` sandboxed, ``workdir`` (see :func:`hand_over`) its only
    writable place."""
    spec = {"workdir": str(workdir), "uid": uid, "limits": asdict(limits), "full": support.full}
    head = [shutil.which("unshare") or "unshare", *NS_FLAGS] if support.full else []
    return [*head, sys.executable, "-m", "celerylab.grading.sandbox", json.dumps(spec), "--", *argv]


# -- inside: the namespace's init ----------------------------------------------------------------------
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME = 1024, 2048, 1 << 21
_FLAG_OF = {
    "nosuid": _MS_NOSUID,
    "nodev": _MS_NODEV,
    "noexec": _MS_NOEXEC,
    "noatime": _MS_NOATIME,
    "nodiratime": _MS_NODIRATIME,
    "relatime": _MS_RELATIME,
}
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def _mounts() -> list[tuple[str, int]]:
    """(mount point, its per-mount flags) from /proc/self/mountinfo, parents first."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")  # \040 for a space
        flags = sum(_FLAG_OF.get(opt, 0) for opt in fields[5].split(","))
        out.append((point, flags))
    return out


def _loopback_up() -> None:
    """``ip link set lo up`` without needing iproute2: SIOCSIFFLAGS on ``lo``."""
    import fcntl
    import socket
    import struct

    iff_up, iff_loopback, iff_running = 0x1, 0x8, 0x40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", iff_up | iff_loopback | iff_running))


def _hidden_homes() -> list[str]:
    homes = {os.path.expanduser("~"), "/root", "/home"}
    return sorted(h for h in homes if os.path.isdir(h) and h != "/")


def _lock_down(workdir: str, shm_bytes: int) -> None:
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing done here reaches the machine's mounts
    for point, flags in _mounts():
        if point == "/proc" or point.startswith("/proc/"):
            continue
        try:
            _mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags)
        except OSError:
            pass  # already read-only, or gone below another mount
    keep = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(sys.executable))}
    for home in _hidden_homes():
        inside = sorted(k for k in keep if k == home or k.startswith(home + "/"))
        held = {path: os.open(path, os.O_PATH) for path in inside}  # still the real folders once covered
        _mount("tmpfs", home, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=1m")
        for path, fd in held.items():
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            _mount(None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
            os.close(fd)
        _mount(None, home, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    _mount("tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=1777,size={shm_bytes}")
    _mount(workdir, workdir, None, _MS_BIND)  # a mount of its own, then made read-write: the only one
    _mount(None, workdir, None, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)  # this namespace's processes


def _limit(limits: dict, uid: int | None) -> None:
    """In the grade's process, before exec: limits first (as root they cannot be raised again later)."""
    pairs = [
        (resource.RLIMIT_CPU, limits["cpu_seconds"]),
        (resource.RLIMIT_AS, limits["memory_bytes"]),
        (resource.RLIMIT_FSIZE, limits["file_bytes"]),
        (resource.RLIMIT_CORE, 0),
    ]
    if uid is not None:  # counted per uid: only meaningful for a uid of its own (root is never limited)
        pairs.append((resource.RLIMIT_NPROC, limits["processes"]))
    for which, value in pairs:
        resource.setrlimit(which, (value, value))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)


def enter(spec: dict, argv: list[str]) -> int:
    """Run ``argv`` sandboxed (see the module's docstring) and return its exit code."""
    full = spec["full"]
    if full:
        _loopback_up()
        _lock_down(spec["workdir"], spec["limits"]["shm_bytes"])
    os.environ["HOME"] = spec["workdir"]
    child = os.fork()
    if child == 0:
        try:
            _limit(spec["limits"], spec["uid"] if full else None)
            os.chdir(spec["workdir"])
            os.execvp(argv[0], argv)
        except BaseException as exc:  # never return into the init's code
            print(f"celerylab sandbox: could not start the grade: {exc}", file=sys.stderr, flush=True)
        os._exit(127)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os.kill(child, signal.SIGKILL))
    while True:  # as init, reap every orphan; the grade's end is ours
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        if pid == child:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    _spec, _, _argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.exit(enter(json.loads(_spec), _argv))
