"""Faults at exact points inside a worker's processes, armed by the grader, each fired once.

A worker loads this module with its settings (``imports = ["celerylab.engine.faults"]``, see
:func:`worker_settings`) and finds the grader's folder in ``$CELERYLAB_FAULTS``. The grader arms a fault by
writing a file there (:meth:`Faults.crash`, :meth:`Faults.barrier`); the process that claims it (an atomic
``unlink``: exactly one wins, whatever the timing) acts on it. So "the relay died after it published and
before it marked the row sent" happens on every run, at that step and nowhere else, instead of depending on
when a kill from outside lands.

- ``crash(point, task)``: the process publishing ``task`` dies (``os._exit``, no clean-up, like SIGKILL)
  just ``before`` the message leaves or just ``after`` the broker took it.
- ``crash_at_insert(table)``: the process about to ``INSERT INTO table`` dies just before the statement
  runs, inside whatever transaction it has open: what it committed before stays, the rest rolls back.
- ``hold(task)``: the process publishing ``task`` stops just before the message leaves, says so
  (:meth:`Faults.wait_held`), and goes on once the grader calls :meth:`Faults.release`: the grader can
  stop the broker at exactly that moment.
- ``barrier(tables, parties, wait)``: in each process, the first SQL statement that names one of ``tables``
  waits until ``parties`` processes have reached theirs (or ``wait`` s passed); a read waits once the
  database has answered it, a write before it runs. Every copy has then read before any copy writes, so
  a check-then-insert race is lost on every run (SQLAlchemy's engine events; the barrier is only armed
  while the grader wants it).

Every task the worker's processes publish is also written to ``published.jsonl`` there: its name, id,
arguments and the size of its JSON body, which is what the grader judges a payload by; and the end of every
task they run (``task_postrun``, in the pool process: it needs no broker), so the grader knows a task
returned or raised even while the broker is down (:meth:`Faults.ended`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from celery import signals

ENV = "CELERYLAB_FAULTS"  # the grader's folder of armed faults, in the worker's environment
BARRIER_WAIT = 3.0  # the longest a process waits at a barrier for the others
HOLD_MAX = 60.0  # the longest a held publish waits for the grader's release
EXIT_CODE = 70
LOG = "published.jsonl"


def worker_settings() -> dict[str, Any]:
    """The worker settings that load this module (merge them into a worker's ``settings=``)."""
    return {"imports": [__name__]}


class Faults:
    """The grader's side: a folder of armed faults, given to workers as ``env={ENV: str(faults.folder)}``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {ENV: str(self.folder)}

    def crash(self, point: str, task: str) -> Path:
        """Arm: the next process to publish ``task`` (its short name) dies ``before`` or ``after`` it."""
        assert point in ("before", "after"), point
        return _arm(self.folder / f"crash--{point}--{task}", "")

    def crash_at_insert(self, table: str) -> Path:
        """Arm: the next process to run ``INSERT INTO <table>`` dies just before that statement runs."""
        assert re.fullmatch(r"\w+", table), table
        return _arm(self.folder / f"crash--insert--{table}", "")

    def barrier(self, tables: list[str], parties: int = 2, wait: float = BARRIER_WAIT) -> str:
        """Arm: the first statement naming one of ``tables`` in each process waits (at most ``wait`` s) for
        ``parties`` of them. Returns the round's id, for :meth:`barrier_met`."""
        for path in self.folder.glob("arrived-*"):
            path.unlink(missing_ok=True)
        spec = {"tables": tables, "parties": parties, "wait": wait, "round": secrets.token_hex(4)}
        _arm(self.folder / "barrier", json.dumps(spec))
        return spec["round"]

    def barrier_met(self, round_id: str) -> bool:
        """Did ``parties`` processes meet at that round of the barrier (rather than one giving up waiting)?"""
        return any(
            e.get("event") == "barrier" and e["round"] == round_id and e["met"] for e in self._entries()
        )

    def hold(self, task: str) -> Path:
        """Arm: the next process to publish ``task`` waits just before it (see :meth:`wait_held`)."""
        (self.folder / f"release--{task}").unlink(missing_ok=True)
        (self.folder / f"held--{task}").unlink(missing_ok=True)
        return _arm(self.folder / f"hold--{task}", "")

    def wait_held(self, task: str, timeout: float, unless_ended: str | None = None) -> bool:
        """True once a process is held before publishing ``task``; False if none was within ``timeout``, or
        once the task run ``unless_ended`` (the one expected to publish it) ended without."""
        held = self.folder / f"held--{task}"
        _wait_for(lambda: held.exists() or (unless_ended and self.ended(unless_ended)), timeout)
        return held.exists()

    def release(self, task: str) -> None:
        (self.folder / f"hold--{task}").unlink(missing_ok=True)  # unclaimed: nobody is held any more
        _arm(self.folder / f"release--{task}", "")

    def ended(self, task_id: str, timeout: float = 0.0) -> dict[str, Any] | None:
        """The end of a task run in a worker's process (``{"state": "SUCCESS"|"FAILURE"|..., "error"}``),
        waiting up to ``timeout``; None if it has not ended."""
        found: list[dict[str, Any]] = []

        def look() -> bool:
            found[:] = [e for e in self._entries() if e.get("event") == "postrun" and e["id"] == task_id]
            return bool(found)

        _wait_for(look, timeout)
        return found[-1] if found else None

    def _entries(self) -> list[dict[str, Any]]:
        """The log's complete lines: one a worker's process is still writing (read halfway) is left out."""
        try:
            text = (self.folder / LOG).read_text()
        except FileNotFoundError:
            return []
        entries = []
        for line in text.split("\n")[:-1]:  # the part after the last newline is not a whole line yet
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def armed(self, path: Path) -> bool:
        return path.exists()

    def disarm(self) -> None:
        for path in self.folder.glob("crash--*"):
            path.unlink(missing_ok=True)
        (self.folder / "barrier").unlink(missing_ok=True)

    def published(self, task: str | None = None) -> list[dict[str, Any]]:
        """What the workers' processes published, oldest first (``task``: its short name)."""
        entries = self._entries()
        sent = {e["id"] for e in entries if e.get("event") == "after"}
        return [
            {**e, "sent": e["id"] in sent}
            for e in entries
            if e.get("event") == "before" and (task is None or e["task"].rsplit(".", 1)[-1] == task)
        ]


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)  # polling files the workers' processes write, bounded by the deadline above
    return True


def _arm(path: Path, content: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    tmp.replace(path)  # appears whole, never half-written
    return path


# -- the worker's side ------------------------------------------------------------------------------------
def _folder() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def _claim(path: Path) -> bool:
    """Exactly one process wins an armed fault."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _maybe_crash(point: str, sender: Any) -> None:
    folder = _folder()
    if folder is None:
        return
    short = str(sender).rsplit(".", 1)[-1]
    if _claim(folder / f"crash--{point}--{short}"):
        os._exit(EXIT_CODE)  # no clean-up: the process is gone, as after SIGKILL


@signals.before_task_publish.connect(weak=False)
def _before(sender: Any = None, body: Any = None, headers: dict | None = None, **_: Any) -> None:
    folder = _folder()
    if folder is None:
        return
    args, kwargs = (), {}
    if isinstance(body, tuple | list) and len(body) == 3:
        args, kwargs = body[0] or (), body[1] or {}
    entry = {
        "event": "before",
        "task": str(sender),
        "id": (headers or {}).get("id"),
        "args": args,
        "kwargs": kwargs,
        "bytes": len(json.dumps(body, default=repr)),
        "pid": os.getpid(),
        "at": time.time(),
    }
    _log(folder, entry)
    _maybe_crash("before", sender)
    short = str(sender).rsplit(".", 1)[-1]
    if _claim(folder / f"hold--{short}"):
        (folder / f"held--{short}").touch()
        _wait_for(lambda: (folder / f"release--{short}").exists(), HOLD_MAX)


@signals.task_postrun.connect(weak=False)
def _ended(task_id: str | None = None, state: str | None = None, retval: Any = None, **_: Any) -> None:
    folder = _folder()
    if folder is None:
        return
    error = f"{type(retval).__name__}: {str(retval)[:200]}" if isinstance(retval, BaseException) else None
    _log(folder, {"event": "postrun", "id": task_id, "state": state, "error": error, "pid": os.getpid()})


@signals.after_task_publish.connect(weak=False)
def _after(sender: Any = None, headers: dict | None = None, **_: Any) -> None:
    folder = _folder()
    if folder is None:
        return
    _log(folder, {"event": "after", "id": (headers or {}).get("id")})  # the broker took it
    _maybe_crash("after", sender)


def _log(folder: Path, entry: dict[str, Any]) -> None:
    line = (json.dumps(entry, default=repr) + "\n").encode()
    fd = os.open(folder / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)  # one write of a line with O_APPEND: lines of processes never interleave
    finally:
        os.close(fd)


_passed: set[str] = set()  # barriers this process has been through (one arrival per process and barrier)


def _barrier(statement: str, phase: str = "before") -> None:
    """A read arrives once the database has answered it (``after``), a write before it runs (``before``): so
    every copy has read before any copy writes, and no copy holds a write lock while it waits."""
    folder = _folder()
    if folder is None:
        return
    reads = statement.lstrip().upper().startswith(("SELECT", "WITH"))
    if phase != ("after" if reads else "before"):
        return
    try:
        text = (folder / "barrier").read_text()
        spec = json.loads(text)
    except (FileNotFoundError, ValueError):
        return
    key = spec["round"]
    if key in _passed or not any(re.search(rf"\b{re.escape(t)}\b", statement, re.I) for t in spec["tables"]):
        return
    _passed.add(key)
    (folder / f"arrived-{os.getpid()}").touch()
    met = _wait_for(
        lambda: len(list(folder.glob("arrived-*"))) >= spec["parties"], spec.get("wait", BARRIER_WAIT)
    )
    _log(folder, {"event": "barrier", "round": key, "met": met, "pid": os.getpid()})


def _maybe_crash_at_insert(statement: str) -> None:
    folder = _folder()
    if folder is None:
        return
    found = re.match(r'\s*INSERT\s+(?:OR\s+\w+\s+)?INTO\s+"?(\w+)"?', statement, re.I)
    if found and _claim(folder / f"crash--insert--{found.group(1).lower()}"):
        os._exit(EXIT_CODE)  # mid-transaction: the database rolls back what this process had not committed


def _install_sql_barrier() -> None:
    with contextlib.suppress(ImportError):  # a lab without SQLAlchemy has no SQL to hold
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            _maybe_crash_at_insert(statement)
            _barrier(statement, "before")

        def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            _barrier(statement, "after")

        event.listen(Engine, "before_cursor_execute", before)
        event.listen(Engine, "after_cursor_execute", after)


_install_sql_barrier()
