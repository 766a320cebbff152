"""What happened to each task, recorded from the real workers' events.

A :class:`Recorder` listens to the namespace's event exchange in a thread; a :class:`Timeline` is a view
of what it heard (from a point on, e.g. one test). Tests ask it questions ("attempts of this task", "gaps
between attempts", "which process ran it") and wait on it with deadlines; people read it as a table in
the terminal or a plot in a notebook.

Attempts are bounded by ``celerylab-start``/``celerylab-end`` events that ``celerylab.engine.runtime`` sends
from inside the pool process (Celery's own ``task-started`` comes from the worker's main process: its pid
is not the one that ran the task, and a retry can start before ``task-retried`` is sent). Gaps run from
the end of one attempt to the start of the next: ``task-received`` arrives at once for countdown
messages, so it says nothing about the delay.
"""

from __future__ import annotations

import ast
import contextlib
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from celery import Celery

# The events celerylab.engine.runtime sends from inside the workers: attempts (pool process), life
# (pool, main).
from celerylab.engine.runtime import ATTEMPT_END, ATTEMPT_START, ONLINE, PROCESS_UP

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
END_GRACE = 2.0  # seconds wait_final waits, past a final state, for the last attempt's own end event
MARK = "celerylab-mark"
KILLED = (
    "celerylab-killed"  # sent by celerylab.engine.workers when the kit SIGKILLs a worker or one pool process
)
EXITED = "celerylab-exited"  # sent by celerylab.engine.workers when a worker's main process ended by itself
SIGNALLED = (
    "celerylab-signal"  # sent by celerylab.engine.workers when the kit signals a worker (SIGTERM, ...)
)
BROKER = "celerylab-broker"  # noted by celerylab.grading.session: the broker stopped/started, a worker's link
# to it cut, refused or stalled (field `what`: broker-down, broker-up, connection-cut, ...; `worker` if one)
SCHEDULE = "celerylab-schedule"  # noted by celerylab.grading.session when a beat it started is up
LIFE = {  # event type -> what it says about a worker's life (see Timeline.lifecycle)
    "worker-online": "online",  # Celery's own (heartbeat on); the kit's workers send the two below
    "worker-offline": "offline",
    ONLINE: "online",  # celerylab.engine.runtime, from worker_ready
    # celerylab.engine.workers, once it sees the main process end by itself (detail: exit code)
    EXITED: "offline",
    PROCESS_UP: "process-up",
    SIGNALLED: "signal",
    KILLED: "killed",
    BROKER: "broker",
}
OUTCOME = {"SUCCESS": "success", "RETRY": "retry", "FAILURE": "failure", "REJECTED": "rejected"}
# Text size of the plot, in points: at the default 100 dpi a 10 in wide figure is shown unscaled in a
# notebook, and 10 pt reads at 100 % zoom.
FONT = 10
CANCELLED = "task-cancelled"  # the main process terminated a running task (a cold shutdown cancels them)


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


@dataclass(frozen=True)
class Life:
    """A moment in a worker's life: ``online``/``offline``, ``process-up`` (a pool process started: at
    boot, or replacing one that exited), ``signal``/``killed`` (what the kit did to it)."""

    kind: str
    hostname: str
    timestamp: float
    pid: int | None  # the pool process that started, the process signalled or killed (None: the whole worker)
    detail: str = ""  # the signal's name (``signal``), the exit code (``offline``)


class Recorder:
    """Collects every event of a namespace's workers. Use as a context manager, or start()/stop()."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.events: list[Event] = []
        self.cond = threading.Condition()
        self._receiver = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._generation = 0

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0, attempts: int = 3) -> Recorder:
        """Listen, and return once a marker event sent through the broker has come back.

        Each attempt uses a fresh connection for listening and for sending: one that the broker accepted
        but never serves (a RabbitMQ under a resource alarm, a half-open socket) must not cost the grade.
        """
        per_attempt = timeout / attempts
        for attempt in range(1, attempts + 1):
            self._listen()
            try:
                self._wait_listening(per_attempt)
                return self
            except Exception as exc:  # deaf, or the sending connection failed (a socket timeout under load)
                self.stop()
                if not isinstance(exc, DeadlineExceeded):
                    self._error = exc
                if attempt == attempts:
                    raise DeadlineExceeded(self._deaf_message(timeout)) from None
        raise AssertionError("unreachable")

    def _listen(self) -> None:
        self._receiver, self._error = None, None
        self._generation += 1  # a receiver given up on may still deliver: its events are dropped
        self._thread = threading.Thread(
            target=self._run, args=(self._generation,), name="celerylab-recorder", daemon=True
        )
        self._thread.start()

    def _deaf_message(self, timeout: float) -> str:
        why = f"its connection failed: {self._error!r}" if self._error else "no marker event came back"
        return (
            f"the kit's event recorder could not hear the broker within {timeout:.0f} s ({why}). This is the "
            "kit's or the broker's problem, not your code: check the broker (on RabbitMQ, "
            "`rabbitmq-diagnostics alarms` shows a memory or disk alarm that blocks publishing) "
            "and grade again."
        )

    def _run(self, generation: int) -> None:
        def on_event(raw: dict[str, Any]) -> None:
            if generation == self._generation:
                self._on_event(raw)

        try:
            with self.app.connection_for_read() as conn:
                self._receiver = self.app.events.Receiver(conn, handlers={"*": on_event})
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # surfaced by the next wait
            if generation == self._generation:
                self._error = exc
            with self.cond:
                self.cond.notify_all()

    def _wait_listening(self, timeout: float) -> None:
        """Send marker events until one comes back: then nothing a worker sends can be missed."""
        token = uuidlib.uuid4().hex
        deadline = time.monotonic() + timeout
        interval = 0.01  # the first marker usually goes before the subscription: resend soon, then less often
        with self.app.connection_for_write() as conn:
            dispatcher = self.app.events.Dispatcher(conn, buffer_while_offline=False)
            while True:
                with contextlib.suppress(*conn.connection_errors):  # a failed send is tried again below
                    dispatcher.send(MARK, token=token)
                try:
                    self.wait_for(
                        lambda evs: any(e.get("token") == token for e in evs), interval, "listening"
                    )
                    return
                except DeadlineExceeded:
                    if self._error is not None or time.monotonic() > deadline:
                        raise
                interval = min(0.2, interval * 2)

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

    def note(self, type: str, **fields: Any) -> None:
        """An event the kit records itself, not through the broker (which may be down at that moment)."""
        self._on_event({"type": type, "timestamp": time.time(), "hostname": "celerylab", **fields})

    def stop(self, wait: float = 0.2) -> None:
        """Ask the listening thread to end (it notices within a second; it is a daemon anyway) and wait up
        to ``wait`` seconds for it: 0 when nothing listens again after (the end of a grade)."""
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None and wait > 0:
            self._thread.join(timeout=wait)

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

    def busy(self) -> float:
        """Seconds during which some task of this timeline was in flight, from its first event (sent) to
        its last (final, or the last seen of one that never finished), or a beat the kit started was
        counting down to the tasks it sent: the waiting its scenario imposes (countdowns, backoff, run time,
        redelivery, a schedule's interval), which no grader can shorten. Worker starts, pings and the
        grader's own setup fall outside it."""
        spans: dict[str, list[float]] = {}
        events = self.events()
        for e in events:
            if e.uuid:
                span = spans.setdefault(e.uuid, [e.timestamp, e.timestamp])
                span[0], span[1] = min(span[0], e.timestamp), max(span[1], e.timestamp)
        last_task = max((e.timestamp for e in events if e.uuid), default=None)
        for n, e in enumerate(e for e in events if e.type == SCHEDULE):  # a beat's schedule is waiting too
            if last_task is not None and last_task > e.timestamp:
                spans[f"schedule-{n}"] = [e.timestamp, last_task]
        total, reach = 0.0, float("-inf")
        for start, end in sorted(spans.values()):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total

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

    def accepted(self, uuid: str) -> bool:
        """Running in a pool process (``celerylab-start``) and accepted by the main process (Celery's
        ``task-started``). Its early ack may be one event-loop turn away still: ``Worker.settle()``."""
        return bool(self.events(ATTEMPT_START, uuid)) and bool(self.events("task-started", uuid))

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
            elif e.type == CANCELLED:  # its process was terminated by the main process (a cold shutdown)
                a = next((a for a in reversed(out) if a.outcome in ("running", "none")), None)
                if a is not None:
                    a.end = min(a.end or e.timestamp, e.timestamp)
                    a.outcome, a.exception = "cancelled", "cancelled by the worker's cold shutdown"
            elif e.type == "task-revoked" and e.get("terminated"):  # revoke(terminate=True): no end event
                a = next((a for a in reversed(out) if a.outcome in ("running", "none")), None)
                if a is not None:
                    a.end, a.outcome = e.timestamp, "revoked"
                    a.exception = f"revoked and terminated (signal {e.get('signum')})"
            elif e.type == "task-failed":  # "none": a hard time limit stops the process before it has a state
                a = next((a for a in out if a.outcome in ("running", "none")), None)
                if a is not None and e.timestamp >= a.start:  # the process was killed: no end of its own
                    a.end, a.outcome, a.exception = e.timestamp, "failure", _exception_of(e)
        return out

    def lifecycle(self, hostname: str | None = None) -> list[Life]:
        """Workers coming online and going offline, pool processes starting, and the signals and kills the
        kit sent, in the order they happened (of one worker, with ``hostname``)."""
        # Events the kit sends about a worker name it in `worker`; their own `pid` is the sender's.
        kit_sent = {KILLED: "killed_pid", SIGNALLED: "signalled_pid", EXITED: "pid", BROKER: "worker"}
        out = []
        for e in self.events():
            kind = LIFE.get(e.type)
            host = e.get("worker") if e.type in kit_sent else e.hostname
            host = (host or "broker") if e.type == BROKER else host
            if kind is None or (hostname is not None and host != hostname):
                continue
            pid = None if e.type == BROKER else e.get(kit_sent.get(e.type, "pid"))
            detail = (
                e.get("signal")
                or e.get("what")
                or (f"exit code {e.get('exitcode')}" if e.type == EXITED else "")
            )
            out.append(Life(kind, host, e.timestamp, pid, detail))
        return sorted(out, key=lambda life: life.timestamp)

    def pool_processes(self, hostname: str) -> list[int]:
        """The pids of ``hostname``'s pool processes in the order they started: one more each time the
        pool replaces a process (``worker_max_tasks_per_child``, a memory limit, a hard time limit)."""
        return [life.pid for life in self.lifecycle(hostname) if life.kind == "process-up" and life.pid]

    def exited(self, hostname: str) -> float | None:
        """When ``hostname``'s main process was seen to end by itself (a warm or cold shutdown), or None."""
        hits = [life for life in self.lifecycle(hostname) if life.kind == "offline"]
        return hits[-1].timestamp if hits else None

    def signalled(self, hostname: str, signal: str) -> float | None:
        """When the kit sent ``signal`` (e.g. ``"SIGTERM"``) to ``hostname``, as a time.time(); or None."""
        hits = [life for life in self.lifecycle(hostname) if life.kind == "signal" and life.detail == signal]
        return hits[0].timestamp if hits else None

    def pending_eta(self, uuid: str) -> float | None:
        """When a received-but-not-started message of this task asked to run (a parked retry or
        countdown), as a time.time(); None if nothing is waiting on an eta."""
        received = self.events(type="task-received", uuid=uuid)
        started = self.events(type=ATTEMPT_START, uuid=uuid)
        if len(received) <= len(started) or not received[-1].get("eta"):
            return None
        return datetime.fromisoformat(received[-1].get("eta")).timestamp()

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
        begun = time.monotonic()
        try:
            self.wait_for(lambda tl: all(tl.state(u) in FINAL for u in uuids), timeout, "final state")
        except DeadlineExceeded:
            where = "\n".join(f"  {self.describe(u)}" for u in uuids if self.state(u) not in FINAL)
            raise DeadlineExceeded(f"still not finished after {timeout:.0f} s:\n{where}") from None
        # The pool process reports an attempt's start and end on a connection of its own; on RabbitMQ the
        # main process's task-succeeded can arrive first (seen: an attempt still "running", a pid None).
        # Give them a moment to arrive, so a verdict reads whole attempts (an attempt whose process died
        # never reports its end: then no error, the verdict sees what there is).
        grace = min(END_GRACE, max(0.0, timeout - (time.monotonic() - begun)))
        with contextlib.suppress(DeadlineExceeded):
            self.wait_for(lambda tl: all(tl._last_attempt_ended(u) for u in uuids), grace, "attempt ends")

    def _last_attempt_ended(self, uuid: str) -> bool:
        tries = self.attempts(uuid)
        if not tries:  # none yet: fine for a task no worker ran, not for one Celery says it started
            return not self.events("task-started", uuid)
        return tries[-1].end is not None

    def table(self, repeat_after: int = 2) -> str:
        """Every attempt, one line each; seconds since the first event (eta: when it was asked to run).
        A run of more than ``repeat_after`` attempts of one task that ended the same way (a task
        retrying 28 times on the same 503) folds into its first rows and one ``N x`` line."""
        rows = [a for u in self.task_ids() for a in self.attempts(u)]
        if not rows:
            return "(no task has started)"
        t0 = min(e.timestamp for e in self.events())
        lines = [
            f"{'task':<22} {'try':>3} {'eta':>6} {'start':>6} {'end':>6}  {'outcome':<8} {'process':<16} note"
        ]
        rows.sort(key=lambda a: a.start)
        run: list[Attempt] = []

        def flush() -> None:
            shown = run if len(run) <= repeat_after + 1 else run[:repeat_after]
            lines.extend(self._row(a, t0) for a in shown)
            if len(run) > len(shown):
                rest = run[len(shown) :]
                first, last = rest[0], rest[-1]
                lines.append(
                    f"{_short(first):<22} {len(rest)} x {first.outcome} (tries {first.number}-{last.number}, "
                    f"{first.start - t0:.2f}-{(last.end or last.start) - t0:.2f} s)  {_note(first)}"
                )
            run.clear()

        for a in rows:
            if run and (a.uuid, a.outcome, a.exception) != (run[-1].uuid, run[-1].outcome, run[-1].exception):
                flush()
            run.append(a)
        flush()
        return "\n".join(lines)

    @staticmethod
    def _row(a: Attempt, t0: float) -> str:
        end = f"{a.end - t0:6.2f}" if a.end is not None else "     -"
        eta = f"{datetime.fromisoformat(a.eta).timestamp() - t0:6.2f}" if a.eta else "     -"
        who = f"{a.hostname.split('@')[0]}:{a.pid}"
        start = f"{a.start - t0:6.2f}"
        return f"{_short(a):<22} {a.number:>3} {eta} {start} {end}  {a.outcome:<8} {who:<16} {_note(a)}"

    def first_arg(self, uuid: str) -> str | None:
        """What the task was sent with, for a label a learner recognises: its first argument (``/down-0``,
        a page number; of a URL, its path; None for a list or dict), read from the ``task-sent`` or
        ``task-received`` event's ``args``."""
        for event in self.events(uuid=uuid):
            if event.type in ("task-sent", "task-received") and event.get("args") is not None:
                try:
                    args = ast.literal_eval(event.get("args"))
                except (ValueError, SyntaxError):
                    return None
                if isinstance(args, list | tuple) and args and isinstance(args[0], str | int | float):
                    first = str(args[0])
                    if first.startswith(("http://", "https://")):  # the host is the same on every bar
                        first = urlsplit(first).path or first
                    return first[:24]
                return None
        return None

    def plot(
        self,
        ax: Any = None,
        title: str | None = None,
        life: bool = True,
        label: Callable[[Attempt], str] | str | None = None,
    ) -> Any:
        """One row per worker process, one bar per attempt; dotted lines join a retry to its next try.
        A bar is labelled ``label(attempt)``: by default (or ``"arg"``) the task's first argument, after its
        name when the plot has several tasks, with its id as the table shows it and the attempt number;
        ``"name"``: the task's name instead of the argument. A label that would run past the axis ends
        there; an attempt too short to see (a 20 ms lost one) gets a marker too.
        With ``life``, the signals and kills the kit sent are vertical lines across the plot, a worker going
        offline a dotted one, and a pool process starting a triangle at the start of its row. The legend
        sits right of the axes, where it covers nothing."""
        import matplotlib.pyplot as plt

        attempts = [a for u in self.task_ids() for a in self.attempts(u)]
        if ax is None:
            _, ax = plt.subplots(
                figsize=(10, max(2.8, 1.6 + 0.7 * len({(a.hostname, a.pid) for a in attempts})))  # the legend
            )
        if not attempts:
            ax.set_title(title or "no task has started yet")
            return ax
        t0 = min(a.start for a in attempts)
        now = max((a.end or time.time()) for a in attempts)
        span = max(now - t0, 0.1)
        rows = sorted({(a.hostname, a.pid) for a in attempts}, key=str)
        colours = {
            "success": "tab:green",
            "retry": "tab:orange",
            "failure": "tab:red",
            "running": "tab:blue",
            "lost": "tab:gray",
            "cancelled": "tab:purple",
            "revoked": "tab:brown",
        }
        if label is None or isinstance(label, str):
            args = {u: self.first_arg(u) for u in self.task_ids()} if label in (None, "arg") else {}
            several = len({a.name for a in attempts}) > 1  # then the name too: `page 3`, `merge`

            def label(a: Attempt) -> str:
                name, what = a.name.rsplit(".", 1)[-1], args.get(a.uuid)
                head = name if what is None else f"{name} {what}" if several else what
                return f"{head} [{a.uuid[:6]}]#{a.number}"

        # The axis starts at the first lifecycle mark drawn, else at the first attempt. A mark that is not
        # drawn (a worker coming online, a pool process with no attempt here) widens nothing: counting it
        # put labels far left of the axis, where tight_layout cannot fit them (a slow worker start).
        lo = min([0.0] + [x.timestamp - t0 for x in self.lifecycle() if _drawn(x, rows)]) if life else 0.0
        char = (span - lo) * 0.1 / 7.5  # about one character at FONT, in seconds, on a ~7.5 in wide axis
        label_end: dict[tuple[int, int], float] = {}  # (row, level) -> where the last label there ends
        for a in sorted(attempts, key=lambda a: a.start):
            y = rows.index((a.hostname, a.pid))
            width = (a.end or now) - a.start
            colour = colours.get(a.outcome, "tab:gray")
            ax.barh(y, max(width, span / 400), height=0.6, left=a.start - t0, color=colour, edgecolor="black")
            if width < (span - lo) / 80:  # a sliver: a marker makes it visible, whatever the axis' length
                ax.plot(
                    [a.start - t0],
                    [y],
                    marker="X" if a.outcome == "lost" else "D",
                    color=colour,
                    markeredgecolor="black",
                    markersize=8,
                    zorder=3,
                )
            # Above the bar, else below it; when both are taken, just the attempt's number (its task was
            # named on an earlier bar), where a label ends first, moved past it. One that would run past the
            # axis' end (into the legend) ends there instead.
            for text in (label(a), f"#{a.number}"):
                x = min(a.start - t0, span - char * len(text))
                level = min(
                    (0, 1), key=lambda lv: (label_end.get((y, lv), -1e9) > x, label_end.get((y, lv), -1e9))
                )
                if label_end.get((y, level), -1e9) <= x:
                    break
            x = max(x, label_end.get((y, level), -1e9))
            label_end[(y, level)] = x + char * (len(text) + 1)
            right = x + char * len(text) > span  # no room left on this row: end it at the axis' end
            ax.text(
                span if right else x,
                y + (0.32 if level == 0 else -0.32),  # in the gap above the bar, or below it
                text,
                fontsize=FONT,
                va="bottom" if level == 0 else "top",
                ha="right" if right else "left",
            )
        for uuid in self.task_ids():
            tries = self.attempts(uuid)
            for a, b in zip(tries, tries[1:], strict=False):
                if a.end is not None:
                    ya, yb = rows.index((a.hostname, a.pid)), rows.index((b.hostname, b.pid))
                    ax.plot([a.end - t0, b.start - t0], [ya, yb], ":", color="tab:orange")
        if life:
            self._plot_life(ax, rows, t0, char)
        ax.set_yticks(range(len(rows)), [f"{h.split('@')[0]} pid {p}" for h, p in rows], fontsize=FONT)
        ax.set_ylim(-0.75, len(rows) + 0.1)
        ax.set_ylabel("worker, pool process", fontsize=FONT)
        ax.set_xlabel("time since the first attempt started (s)", fontsize=FONT + 1)
        ax.tick_params(axis="x", labelsize=FONT)
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        ax.legend(
            handles,
            list(colours),
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize=FONT,
            frameon=False,
            title="attempt",
            title_fontsize=FONT,
        )
        ax.set_title(title or "task attempts per worker process", fontsize=FONT + 2)
        ax.figure.tight_layout()
        return ax

    def _plot_life(self, ax: Any, rows: list[tuple[str, int | None]], t0: float, char: float = 0.0) -> None:
        """The markers of :meth:`plot`: what the kit did to the workers and what they did about it. Signals
        sent within a label's width of each other share one label (three pool processes killed at once)."""
        top = len(rows) - 0.3
        said: list[list[Any]] = []  # [x, signal, worker, [pids], text artist] of the signal labels so far
        for life in self.lifecycle():
            x, who = life.timestamp - t0, life.hostname.split("@")[0]
            if life.kind in ("signal", "killed"):
                label = life.detail if life.kind == "signal" else "SIGKILL"
                ax.axvline(x, color="tab:red", linestyle="--", linewidth=1.2)
                last = said[-1] if said else None
                if last and last[1:3] == [label, who] and x - last[0] < char * 24 and life.pid and last[3]:
                    last[3].append(life.pid)  # the same signal to another process of the worker, just after
                    last[4].set_text(f" {label} -> {who} pids {', '.join(map(str, last[3]))}")
                    continue
                target = who if life.pid is None else f"{who} pid {life.pid}"
                line = f" {label} -> {target}"
                right = x + char * (len(line) + 8) > ax.get_xlim()[1]  # room for more pids; else left of it
                text = ax.text(
                    x, top, line, color="tab:red", fontsize=FONT, va="bottom", ha="right" if right else "left"
                )
                said.append([x, label, who, [life.pid] if life.pid else [], text])
            elif life.kind == "offline":
                ax.axvline(x, color="black", linestyle=":", linewidth=1)
                ax.text(x, -0.55, f" {who} exits", fontsize=FONT, va="bottom")
            elif life.kind == "broker":  # the kit stopped/started the broker or cut a worker's link
                ax.axvline(x, color="tab:blue", linestyle="-.", linewidth=1.2)
                target = "" if life.hostname == "broker" else f" ({who})"
                ax.text(
                    x, top - 0.35, f" {life.detail}{target}", color="tab:blue", fontsize=FONT, va="bottom"
                )
            elif life.kind == "process-up" and (life.hostname, life.pid) in rows:
                ax.plot([x], [rows.index((life.hostname, life.pid))], marker=">", color="black", markersize=5)


def _drawn(life: Life, rows: list[tuple[str, int | None]]) -> bool:
    """Whether :meth:`Timeline._plot_life` draws ``life`` on a plot of ``rows``."""
    return life.kind in ("signal", "killed", "offline", "broker") or (
        life.kind == "process-up" and (life.hostname, life.pid) in rows
    )


def _short(a: Attempt) -> str:
    return f"{a.name.rsplit('.', 1)[-1]}[{a.uuid[:6]}]"


def _note(a: Attempt) -> str:
    return (a.exception or "")[:50] + (" (redelivered)" if a.redelivered else "")


def _exception_of(event: Event) -> str | None:
    """The error of a ``task-failed`` event. When the main process records it (a time limit, a lost
    worker) ``exception`` is just ``ExceptionWithTraceback()``; the traceback's last line names it."""
    exception = event.get("exception")
    if exception and exception.startswith("ExceptionWithTraceback") and event.get("traceback"):
        lines = [line for line in event.get("traceback").splitlines() if line.strip()]
        return lines[-1].strip() if lines else exception
    return exception
