"""What happened to each task, recorded from the real workers' events.

A :class:`Recorder` listens to the namespace's event exchange in a thread; a :class:`Timeline` is a view
of what it heard (from a point on, e.g. one test). Tests ask it questions ("attempts of this task", "gaps
between attempts", "which process ran it") and wait on it with deadlines; people read it as a table in
the terminal or a plot in a notebook.

Attempts are bounded by ``celerylab-start``/``celerylab-end`` events that ``celerylab.runtime`` sends
from inside the pool process (Celery's own ``task-started`` comes from the worker's main process: its pid
is not the one that ran the task, and a retry can start before ``task-retried`` is sent). Gaps run from
the end of one attempt to the start of the next: ``task-received`` arrives at once for countdown
messages, so it says nothing about the delay.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery import Celery

STATE_OF = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-retried": "RETRY",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}
FINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
MARK = "celerylab-mark"
ATTEMPT_START, ATTEMPT_END = "celerylab-start", "celerylab-end"  # sent by celerylab.runtime
KILLED = "celerylab-killed"  # sent by celerylab.workers when the kit SIGKILLs a worker or one pool process
OUTCOME = {"SUCCESS": "success", "RETRY": "retry", "FAILURE": "failure", "REJECTED": "rejected"}


class DeadlineExceeded(AssertionError):
    """A wait ran out of time; the message says what was awaited and what was last seen."""


@dataclass(frozen=True)
class Event:
    type: str
    uuid: str | None
    timestamp: float
    hostname: str
    fields: dict[str, Any] = field(repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


@dataclass
class Attempt:
    uuid: str
    name: str
    number: int  # 1 for the first run, 2 for the first retry, ...
    start: float
    end: float | None
    outcome: str  # "success" | "retry" | "failure" | "running" (or lost, if the worker died)
    hostname: str
    pid: int | None
    exception: str | None = None
    redelivered: bool = False
    eta: str | None = None  # when the message asked to run (countdown/eta/retry backoff), ISO 8601

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


class Recorder:
    """Collects every event of a namespace's workers. Use as a context manager, or start()/stop()."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.events: list[Event] = []
        self.cond = threading.Condition()
        self._receiver = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> Recorder:
        self._thread = threading.Thread(target=self._run, name="celerylab-recorder", daemon=True)
        self._thread.start()
        self._wait_listening(timeout)
        return self

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # surfaced by the next wait
            self._error = exc
            with self.cond:
                self.cond.notify_all()

    def _wait_listening(self, timeout: float) -> None:
        """Send marker events until one comes back: then nothing a worker sends can be missed."""
        token = uuidlib.uuid4().hex
        deadline = time.monotonic() + timeout
        with self.app.events.default_dispatcher() as dispatcher:
            while True:
                dispatcher.send(MARK, token=token)
                try:
                    self.wait_for(lambda evs: any(e.get("token") == token for e in evs), 0.2, "listening")
                    return
                except DeadlineExceeded:
                    if time.monotonic() > deadline:
                        raise DeadlineExceeded("the event recorder could not hear the broker") from None

    def _on_event(self, raw: dict[str, Any]) -> None:
        event = Event(
            raw.get("type", "?"),
            raw.get("uuid"),
            float(raw.get("timestamp") or time.time()),
            raw.get("hostname", ""),
            raw,
        )
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=0.2)  # it notices should_stop within a second; daemon anyway

    def wait_for(self, predicate: Callable[[list[Event]], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self._error is not None:
                    raise DeadlineExceeded(f"the event recorder stopped: {self._error!r}")
                if result := predicate(self.events):
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"no {what} within {timeout:.1f} s")
                self.cond.wait(left)

    def timeline(self, since_now: bool = True) -> Timeline:
        with self.cond:
            return Timeline(self, len(self.events) if since_now else 0)


class Timeline:
    """The events from ``start`` on, with questions about them. Cheap to make; always current."""

    def __init__(self, recorder: Recorder, start: int = 0) -> None:
        self.recorder, self.start = recorder, start

    def events(self, type: str | None = None, uuid: str | None = None) -> list[Event]:
        with self.recorder.cond:
            evs = self.recorder.events[self.start :]
        return [
            e
            for e in evs
            if (type is None or e.type == type) and (uuid is None or e.uuid == uuid) and e.type != MARK
        ]

    def names(self) -> dict[str, str]:
        return {e.uuid: e.get("name") for e in self.events() if e.uuid and e.get("name")}

    def task_ids(self, name: str | None = None) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.events():
            if e.uuid and (
                name is None or e.get("name") == name or (e.get("name") or "").endswith(f".{name}")
            ):
                seen.setdefault(e.uuid)
        return list(seen)

    def state(self, uuid: str) -> str | None:
        states = [STATE_OF[e.type] for e in self.events(uuid=uuid) if e.type in STATE_OF]
        final = [s for s in states if s in FINAL]
        return final[-1] if final else (states[-1] if states else None)

    def attempts(self, uuid: str) -> list[Attempt]:
        """Attempts in the order they started. Start and end come from the pool process itself (paired by
        pid, exact even when a retry starts before the worker reports the previous one); an attempt whose
        process was killed ends with the main process's ``task-failed`` (time limit, lost worker)."""
        name = self.names().get(uuid, "?")
        etas = [e.get("eta") for e in self.events(type="task-received", uuid=uuid)]  # one message per attempt
        out: list[Attempt] = []
        for e in (e for e in self.events() if e.uuid == uuid or e.type == KILLED):
            if e.type == KILLED:  # its process was SIGKILLed by the kit: it will never report an end
                hit = [a for a in out if a.outcome == "running" and a.hostname == e.get("worker")]
                for a in (a for a in hit if e.get("killed_pid") in (None, a.pid)):
                    a.end, a.outcome, a.exception = e.timestamp, "lost", "its process was killed (SIGKILL)"
            elif e.type == ATTEMPT_START:
                for a in out:  # unfinished, and its process moved on or its message came back: it died
                    if a.outcome == "running" and (a.pid == e.get("pid") or e.get("redelivered")):
                        a.outcome = "lost"
                out.append(
                    Attempt(
                        uuid,
                        name,
                        len(out) + 1,
                        e.timestamp,
                        None,
                        "running",
                        e.hostname,
                        e.get("pid"),
                        redelivered=bool(e.get("redelivered")),
                        eta=etas[len(out)] if len(out) < len(etas) else None,
                    )
                )
            elif e.type == ATTEMPT_END:
                a = next((a for a in reversed(out) if a.pid == e.get("pid") and a.end is None), None)
                if a is not None:
                    a.end, a.exception = e.timestamp, e.get("exception")
                    a.outcome = OUTCOME.get(e.get("state"), str(e.get("state")).lower())
            elif e.type == "task-failed":  # "none": a hard time limit stops the process before it has a state
                a = next((a for a in out if a.outcome in ("running", "none")), None)
                if a is not None and e.timestamp >= a.start:  # the process was killed: no end of its own
                    a.end, a.outcome, a.exception = e.timestamp, "failure", _exception_of(e)
        return out

    def gaps(self, uuid: str) -> list[float]:
        """Seconds from the end of each attempt to the start of the next."""
        tries = self.attempts(uuid)
        return [b.start - a.end for a, b in zip(tries, tries[1:], strict=False) if a.end is not None]

    def describe(self, uuid: str) -> str:
        tries = self.attempts(uuid)
        name = self.names().get(uuid, "task").rsplit(".", 1)[-1]
        state = self.state(uuid) or "never seen by a worker (still in the queue? is the worker on it?)"
        text = f"{name}[{uuid[:8]}]: {state}"
        if tries:
            last = tries[-1]
            text += f", {len(tries)} attempt(s); the last one {last.outcome}"
            if last.exception:
                text += f" ({last.exception})"
        return text

    def wait_for(self, predicate: Callable[[Timeline], Any], timeout: float, what: str) -> Any:
        return self.recorder.wait_for(lambda _evs: predicate(self), timeout, what)

    def wait_final(self, uuids: Iterable[str], timeout: float) -> None:
        """Until every task is SUCCESS/FAILURE/REVOKED; on timeout say where each one stood."""
        uuids = list(uuids)
        try:
            self.wait_for(lambda tl: all(tl.state(u) in FINAL for u in uuids), timeout, "final state")
        except DeadlineExceeded:
            where = "\n".join(f"  {self.describe(u)}" for u in uuids if self.state(u) not in FINAL)
            raise DeadlineExceeded(f"still not finished after {timeout:.0f} s:\n{where}") from None

    def table(self) -> str:
        """Every attempt, one line each; seconds since the first event (eta: when it was asked to run)."""
        rows = [a for u in self.task_ids() for a in self.attempts(u)]
        if not rows:
            return "(no task has started)"
        t0 = min(e.timestamp for e in self.events())
        lines = [
            f"{'task':<22} {'try':>3} {'eta':>6} {'start':>6} {'end':>6}  {'outcome':<8} {'process':<16} note"
        ]
        for a in sorted(rows, key=lambda a: a.start):
            end = f"{a.end - t0:6.2f}" if a.end is not None else "     -"
            eta = f"{datetime.fromisoformat(a.eta).timestamp() - t0:6.2f}" if a.eta else "     -"
            who = f"{a.hostname.split('@')[0]}:{a.pid}"
            note = (a.exception or "")[:50] + (" (redelivered)" if a.redelivered else "")
            short = f"{a.name.rsplit('.', 1)[-1]}[{a.uuid[:6]}]"
            lines.append(
                f"{short:<22} {a.number:>3} {eta} {a.start - t0:6.2f} {end}  {a.outcome:<8} {who:<16} {note}"
            )
        return "\n".join(lines)

    def plot(self, ax: Any = None, title: str | None = None) -> Any:
        """One row per worker process, one bar per attempt; dotted lines join a retry to its next try."""
        import matplotlib.pyplot as plt

        attempts = [a for u in self.task_ids() for a in self.attempts(u)]
        if ax is None:
            _, ax = plt.subplots(
                figsize=(10, 1.2 + 0.45 * max(1, len({(a.hostname, a.pid) for a in attempts})))
            )
        if not attempts:
            ax.set_title(title or "no task has started yet")
            return ax
        t0 = min(a.start for a in attempts)
        now = max((a.end or time.time()) for a in attempts)
        rows = sorted({(a.hostname, a.pid) for a in attempts}, key=str)
        colours = {
            "success": "tab:green",
            "retry": "tab:orange",
            "failure": "tab:red",
            "running": "tab:blue",
            "lost": "tab:gray",
        }
        for a in attempts:
            y = rows.index((a.hostname, a.pid))
            width = max(0.02, (a.end or now) - a.start)
            ax.barh(y, width, left=a.start - t0, color=colours.get(a.outcome, "tab:gray"), edgecolor="black")
            ax.text(
                a.start - t0, y + 0.3, f"{a.name.rsplit('.', 1)[-1]}[{a.uuid[:4]}]#{a.number}", fontsize=7
            )
        for uuid in self.task_ids():
            tries = self.attempts(uuid)
            for a, b in zip(tries, tries[1:], strict=False):
                if a.end is not None:
                    ya, yb = rows.index((a.hostname, a.pid)), rows.index((b.hostname, b.pid))
                    ax.plot([a.end - t0, b.start - t0], [ya, yb], ":", color="tab:orange")
        ax.set_yticks(range(len(rows)), [f"{h.split('@')[0]} pid {p}" for h, p in rows])
        ax.set_xlabel("seconds since the first attempt started")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        ax.legend(
            handles,
            list(colours),
            loc="upper center",
            bbox_to_anchor=(0.5, -0.3),
            fontsize=7,
            ncols=5,
            frameon=False,
        )
        ax.figure.tight_layout()
        ax.set_title(title or "task attempts per worker process")
        return ax


def _exception_of(event: Event) -> str | None:
    """The error of a ``task-failed`` event. When the main process records it (a time limit, a lost
    worker) ``exception`` is just ``ExceptionWithTraceback()``; the traceback's last line names it."""
    exception = event.get("exception")
    if exception and exception.startswith("ExceptionWithTraceback") and event.get("traceback"):
        lines = [line for line in event.get("traceback").splitlines() if line.strip()]
        return lines[-1].strip() if lines else exception
    return exception
