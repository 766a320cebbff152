"""Autograder: routing, named queues and dedicated workers (labs/routing/README.md has the contract).

The grader imports the learner's module (its app, its routes, its ``resize_now``) and publishes through
it, as the learner's web app would; it starts one real prefork worker per entry of the module's
``WORKERS`` (concurrency 1, ``-Q`` as listed). It judges from the broker's side and the workers' side:
the ``task-sent`` event says which queue the publisher chose, the pool process's own start event says
which worker ran the task and the ``routing_key`` it arrived with, and remote control
(``active_queues``) says which worker consumes which queue. Queue names are the learner's: the kit
renames them into the grade's namespace on every broker (celerylab.engine.namespaces.NamespacedQueues).

A task sent to a queue that no worker consumes is a verdict that names the queue the moment its
``task-sent`` event arrives, not a timeout. No verdict depends on chance: the workers run one task at a
time, so a task queued behind a running resize cannot start before that resize ends, whatever the load.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from celery.exceptions import QueueNotFound
from celery.result import AsyncResult

from celerylab.engine.timeline import ATTEMPT_START, FINAL, Timeline
from celerylab.engine.workers import Worker
from celerylab.grading.session import LabFailure, LabRun, LabSession, expect

QUEUES = ("celery", "images", "emails", "urgent")
BACKLOG_SECONDS = 2.0  # each backlog resize: what a task stuck behind one waits at least
MAX_WORKERS = 6


@dataclass
class Fleet:
    """The learner's WORKERS, running: who consumes what, as the workers themselves report it."""

    workers: dict[str, Worker]  # the learner's worker name -> the running worker
    consumes: dict[str, list[str]]  # hostname -> the learner's names of the queues it reads (active_queues)

    def consumers(self, queue: str) -> list[str]:
        return [host for host, queues in self.consumes.items() if queue in queues]

    def describe(self) -> str:
        return "; ".join(f"{h.split('@')[0]}: {', '.join(q) or 'nothing'}" for h, q in self.consumes.items())


def workers_declared(mod: Any) -> dict[str, list[str]]:
    """The module's WORKERS, checked: a verdict instead of a crash for anything but {name: [queue, ...]}."""
    spec = getattr(mod, "WORKERS", None)
    ok = (
        isinstance(spec, dict)
        and 0 < len(spec) <= MAX_WORKERS
        and all(isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in spec)
        and all(
            isinstance(v, list | tuple) and v and all(isinstance(q, str) and q for q in v)
            for v in spec.values()
        )
    )
    expect(
        ok,
        "tasks.py must say which worker consumes which queue in a module-level `WORKERS` dict.",
        expected=f'WORKERS = {{"<worker name>": ["<queue>", ...], ...}}, 1 to {MAX_WORKERS} workers',
        observed=f"WORKERS = {spec!r}"[:200],
        hint='e.g. WORKERS = {"media": ["images"], ...}: one entry per `celery worker -n <name>@%h -Q ...`.',
    )
    return {name: list(queues) for name, queues in spec.items()}


@pytest.fixture(scope="module")
def fleet(lab_session: LabSession) -> Fleet:
    """One worker per entry of WORKERS, started side by side, reused by every test."""
    mod = lab_session.module()
    spec = workers_declared(mod)
    queues = mod.app.amqp.queues
    for name, wanted in spec.items():
        for queue in wanted:
            expect(
                queue in queues or queues.create_missing,
                f"WORKERS says `{name}` consumes `{queue}`, but task_queues does not declare it (and "
                "task_create_missing_queues is off), so that worker cannot start.",
                expected=f"`{queue}` among task_queues, or a queue name that task_queues declares",
                observed=f"declared: {', '.join(sorted(short(lab_session, q) for q in queues))}",
            )
            lab_session.ns.owns_queue(queues[queue].name)  # cleanup deletes it (RabbitMQ has no key prefix)
    started = lab_session.start_workers_on(spec, concurrency=1)
    workers = dict(zip(spec, started, strict=True))
    consumes = {}
    for worker in started:
        consumes[worker.hostname] = [short(lab_session, q["name"]) for q in active_queues(worker)]
    return Fleet(workers, consumes)


def active_queues(worker: Worker, attempts: int = 5) -> list[dict]:
    """What the worker says it consumes (remote control). It answered a ping a moment ago, so a missing
    reply is a slow one (a loaded machine): ask again rather than conclude that it consumes nothing."""
    for _ in range(attempts):
        reply = (worker.inspect(timeout=2.0).active_queues() or {}).get(worker.hostname)
        if reply is not None:
            return reply
    raise LabFailure(
        f"Worker {worker.name} did not say which queues it consumes ({attempts} remote-control requests "
        "unanswered). This is the machine or the broker, not your code: grade again."
    )


def short(lab: LabSession | LabRun, name: str | None) -> str:
    return lab.ns.short_queue(name) or "?"


def learner_task(lab: LabRun, short_name: str) -> Any:
    """The learner's own task object (its apply_async applies the decorator's options, as their app would)."""
    mod = lab.module()
    return mod.app.tasks[lab.task_name(short_name)]


def sent_to(tl: Timeline, uuid: str) -> str | None:
    """The queue the publisher chose (real name), from the message's ``task-sent`` event."""
    sent = tl.events("task-sent", uuid)
    return sent[-1].get("queue") if sent else None


def handled_by(tl: Timeline, uuid: str) -> tuple[str | None, str | None]:
    """(hostname, routing key) of the first worker that took the message: the pool's start event, or
    the ``task-failed`` of a worker that does not know the task (a name sent by name only)."""
    for e in tl.events(uuid=uuid):
        if e.type == ATTEMPT_START:
            return e.hostname, e.get("routing_key")
        if e.type == "task-failed":
            return e.hostname, None
    return None, None


def wait_routed(lab: LabRun, fleet: Fleet, results: Iterable[AsyncResult], timeout: float = 10.0) -> None:
    """Until every task is finished; a task whose message went to a queue that no worker consumes is a
    verdict at once (its task-sent event says where it went), not a timeout."""
    results = list(results)

    def settled(tl: Timeline) -> Any:
        for r in results:
            queue = sent_to(tl, r.id)
            if queue is not None and not fleet.consumers(short(lab, queue)) and tl.state(r.id) not in FINAL:
                return ("orphan", r, queue)
        # Finished, and its task-sent event in too: the publisher's event travels on another connection
        # than the worker's, so under load it may arrive after the task's end.
        if all(tl.state(r.id) in FINAL and sent_to(tl, r.id) for r in results):
            return ("done",)
        return None

    outcome = lab.wait_until(settled, "every task to finish", timeout)
    if outcome[0] == "orphan":
        _, r, queue = outcome
        name = lab.timeline.names().get(r.id, "a task")
        raise LabFailure(
            "\n".join(
                [
                    f"{name} was sent to queue `{short(lab, queue)}`, and no worker consumes "
                    f"`{short(lab, queue)}`: it would wait there forever.",
                    f"observed: your WORKERS consume: {fleet.describe()}",
                    f"try:      add `{short(lab, queue)}` to the queues of a worker in WORKERS "
                    "(what its `-Q` says), or fix the route if that queue is a typo.",
                ]
            )
        )


def where(lab: LabRun, uuid: str, tl: Timeline | None = None) -> str:
    tl = tl or lab.timeline
    host, key = handled_by(tl, uuid)
    ran = f"taken by {host.split('@')[0]} (routing_key {short(lab, key)})" if host else "taken by no worker"
    return f"{tl.names().get(uuid, '?')}: sent to `{short(lab, sent_to(tl, uuid))}`, {ran}"


def judge_queue(lab: LabRun, fleet: Fleet, result: AsyncResult, queue: str, what: str, hint: str) -> None:
    tl = lab.timeline
    host, key = handled_by(tl, result.id)
    expect(
        short(lab, sent_to(tl, result.id)) == queue,
        f"{what} must be sent to the `{queue}` queue.",
        expected=f"queue `{queue}`",
        observed=where(lab, result.id),
        hint=hint,
    )
    expect(
        host in fleet.consumers(queue) and (key is None or short(lab, key) == queue),
        f"{what} was sent to `{queue}` but not taken from it by a worker that consumes it.",
        expected=f"a worker consuming `{queue}` ({', '.join(fleet.consumers(queue)) or 'none'})",
        observed=where(lab, result.id),
    )


def publishing(what: str, send: Any) -> Any:
    """``send()``, the learner's publisher code; what it raises becomes a verdict (QueueNotFound: a route or
    a ``queue=`` naming a queue that task_queues does not declare)."""
    try:
        return send()
    except LabFailure:
        raise
    except Exception as exc:  # the learner's code and config may raise anything here
        raise LabFailure(
            "\n".join(
                [
                    f"Sending {what} raised {type(exc).__name__}: {str(exc)[:200]}",
                    "try:      every queue a route or a queue= names must be in task_queues "
                    "(with task_create_missing_queues off), spelt the same.",
                ]
            )
        ) from None


def delay(lab: LabRun, task: str, *args: Any) -> AsyncResult:
    """``<task>.delay(*args)`` on the learner's own task object, as their web app would call it."""
    return publishing(f"{task}.delay{args!r}", lambda: learner_task(lab, task).delay(*args))


def send_by_name(lab: LabRun, name: str, *args: Any) -> AsyncResult:
    """Through the learner's app, by name only (a task its workers do not have): only task_routes apply."""
    return publishing(f"{name} by name", lambda: lab.module().app.send_task(name, args=args))


def call_resize_now(lab: LabRun, photo_id: str) -> Any:
    resize_now = getattr(lab.module(), "resize_now", None)
    expect(
        callable(resize_now),
        "MISSING FUNCTION: tasks.py has no function `resize_now(photo_id)`.",
        expected="def resize_now(photo_id): ... as the README says",
        hint="keep the function from the skeleton.",
    )
    return publishing(f"resize_now({photo_id!r})", lambda: resize_now(photo_id))


# -- where each kind of task goes ----------------------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("images-by-pattern", needs=["every-queue-consumed"])
def test_image_tasks_go_to_the_images_queue(lab, fleet):
    """images.* tasks (and one added later) go to the images queue and run where it is consumed"""
    sent = [
        ("images.resize", delay(lab, "resize", "p1")),
        ("images.thumbnail", delay(lab, "thumbnail", "p1")),
        ("images.watermark (sent by name)", send_by_name(lab, "images.watermark", "p1")),
    ]
    wait_routed(lab, fleet, [r for _, r in sent])
    for what, r in sent:
        judge_queue(
            lab,
            fleet,
            r,
            "images",
            what,
            'a glob pattern in task_routes, {"images.*": {"queue": "images"}}: it matches every task '
            "named images.<anything>, one added later too (a list of today's names does not)",
        )


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("emails-by-pattern", needs=["every-queue-consumed"])
def test_email_tasks_go_to_the_emails_queue(lab, fleet):
    """emails.* tasks (and one added later) go to the emails queue and run where it is consumed"""
    sent = [
        ("emails.send_reset", delay(lab, "send_reset", "ann")),
        ("emails.send_digest", delay(lab, "send_digest", "ann")),
        ("emails.welcome (sent by name)", send_by_name(lab, "emails.welcome", "ann")),
    ]
    wait_routed(lab, fleet, [r for _, r in sent])
    for what, r in sent:
        judge_queue(
            lab,
            fleet,
            r,
            "emails",
            what,
            'a glob pattern in task_routes, {"emails.*": {"queue": "emails"}}, matching every emails.* name',
        )


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("others-default", needs=["every-queue-consumed"])
def test_unrouted_tasks_stay_on_the_default_queue(lab, fleet):
    """A task no pattern matches stays on the default queue"""
    record = delay(lab, "record", "login")
    other = send_by_name(lab, "billing.invoice", "i-1")
    wait_routed(lab, fleet, [record, other])
    for what, r in (("audit.record", record), ("billing.invoice (sent by name)", other)):
        judge_queue(
            lab,
            fleet,
            r,
            "celery",
            what,
            "only images.* and emails.* have routes: no catch-all pattern ('*'), and keep the default queue",
        )
    expect(
        lab.result(record) == "recorded login",
        "audit.record must return what the skeleton returns.",
        expected="'recorded login'",
        observed=repr(lab.result(record)),
    )


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("urgent-override")
def test_resize_now_sends_to_the_urgent_queue(lab, fleet):
    """resize_now sends images.resize to the urgent queue and returns its AsyncResult"""
    result = call_resize_now(lab, "p7")
    expect(
        isinstance(result, AsyncResult),
        "resize_now must return the AsyncResult of the task it sends.",
        expected="return resize.apply_async(...)",
        observed=f"it returned {result!r}"[:200],
    )
    tl = lab.timeline
    lab.wait_until(lambda t: sent_to(t, result.id), "the task-sent event of resize_now's message", 5.0)
    expect(
        tl.names().get(result.id) == lab.task_name("resize")
        and short(lab, sent_to(tl, result.id)) == "urgent",
        "resize_now must send images.resize to the `urgent` queue, past the route to `images`.",
        expected="images.resize on queue `urgent`",
        observed=where(lab, result.id),
        hint='resize.apply_async(args=[photo_id], queue="urgent"): the call\'s options beat task_routes',
    )


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("queues-declared")
def test_only_declared_queues_accept_messages(lab, fleet):
    """The four queues are declared, and a message for any other queue raises QueueNotFound"""
    app = lab.module().app
    declared = sorted(short(lab, q) for q in app.amqp.queues)
    expect(
        set(QUEUES) <= set(declared),
        "task_queues must declare the four queues of the contract.",
        expected=", ".join(QUEUES),
        observed=f"declared: {', '.join(declared) or 'none'}",
        hint='app.conf.task_queues = [Queue("celery"), Queue("images"), Queue("emails"), Queue("urgent")]',
    )
    raised: BaseException | None = None
    result = None
    try:
        result = learner_task(lab, "resize").apply_async(args=["p8"], queue="imagez")
    except QueueNotFound as exc:
        raised = exc
    expect(
        raised is not None,
        "A message for a queue that task_queues does not declare must be refused when it is sent.",
        expected="resize.apply_async(queue='imagez') raises QueueNotFound",
        observed="it was sent"
        + (f" (to `{short(lab, sent_to(lab.timeline, result.id))}`)" if result is not None else "")
        + ": Celery created the queue, and no worker reads it",
        hint="app.conf.task_create_missing_queues = False (on top of task_queues)",
    )


# -- who consumes what -----------------------------------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("every-queue-consumed")
def test_every_queue_has_a_worker(lab, fleet):
    """Every task the app sends, to each of its queues, is run by one of the WORKERS"""
    results = [
        delay(lab, "resize", "p2"),
        delay(lab, "thumbnail", "p2"),
        delay(lab, "send_reset", "bob"),
        delay(lab, "send_digest", "bob"),
        delay(lab, "record", "logout"),
    ]
    with contextlib.suppress(LabFailure):  # its own test judges it; here only where it goes matters
        if isinstance(sent := call_resize_now(lab, "p3"), AsyncResult):
            results.append(sent)
    wait_routed(lab, fleet, results)
    failed = [where(lab, r.id) for r in results if lab.timeline.state(r.id) != "SUCCESS"]
    expect(
        not failed,
        "Every task must run and succeed on one of your workers.",
        observed="; ".join(failed),
    )
    for queue in QUEUES:
        expect(
            fleet.consumers(queue),
            f"No worker in WORKERS consumes `{queue}`: whatever is sent there waits forever.",
            expected=f"`{queue}` in the queues of at least one worker",
            observed=f"your WORKERS consume: {fleet.describe()}",
            hint=f"add `{queue}` to a worker's list in WORKERS (what its -Q says).",
        )


@dataclass
class Backlog:
    """A backlog of slow resizes on `images`; behind it a reset, an audit record and an urgent resize."""

    run: LabRun
    resizes: list[AsyncResult]
    reset: AsyncResult
    record: AsyncResult
    urgent: AsyncResult | None
    error: str | None  # why the scenario could not be run to its end (judged by the tests)

    @property
    def tl(self) -> Timeline:
        return self.run.timeline

    def first_end(self) -> float | None:
        tries = self.tl.attempts(self.resizes[0].id)
        return tries[0].end if tries else None

    def start(self, result: AsyncResult | None) -> float | None:
        tries = self.tl.attempts(result.id) if result is not None else []
        return tries[0].start if tries else None


@pytest.fixture(scope="module")
def backlog(lab_session: LabSession, fleet: Fleet) -> Backlog:
    """Two 2 s resizes sent the ordinary way; once the first one runs, a reset, an audit record and
    resize_now's urgent resize are sent. Shared by the two tests about waiting behind image work."""
    run = LabRun(lab_session, 30.0)
    resizes = [delay(run, "resize", f"big-{n}", BACKLOG_SECONDS) for n in range(2)]
    error = None

    def first_started(tl: Timeline) -> bool:  # or parked on a queue nobody reads (the tests say which)
        queue = sent_to(tl, resizes[0].id)
        return bool(tl.attempts(resizes[0].id)) or bool(queue and not fleet.consumers(short(run, queue)))

    try:
        run.wait_until(first_started, "the first backlog resize to start", 10.0)
    except LabFailure as exc:
        error = str(exc).splitlines()[-1]
    reset = delay(run, "send_reset", "cat")
    record = delay(run, "record", "upload")
    urgent = None
    with contextlib.suppress(LabFailure):  # judged by its own test
        sent = call_resize_now(run, "vip-1")
        urgent = sent if isinstance(sent, AsyncResult) else None
    pending = resizes + [reset, record] + ([urgent] if urgent else [])

    def settled(tl: Timeline) -> bool:  # finished, or parked on a queue nobody reads (the tests say which)
        return all(
            (tl.state(r.id) in FINAL and sent_to(tl, r.id))
            or ((q := sent_to(tl, r.id)) and not fleet.consumers(short(run, q)))
            for r in pending
        )

    with contextlib.suppress(LabFailure):  # a stuck task: the tests say which
        run.wait_until(settled, "the backlog and the tasks behind it to finish", 2 * BACKLOG_SECONDS + 8.0)
    return Backlog(run, resizes, reset, record, urgent, error)


def judge_not_behind(
    lab: LabRun, backlog: Backlog, result: AsyncResult | None, what: str, queue: str, hint: str
) -> None:
    lab.judge_from(backlog.tl)
    went = short(lab, sent_to(backlog.tl, backlog.resizes[0].id))
    expect(
        went == "images",
        f"The backlog's resizes were sent to `{went}`, not `images`: whether {what} waits behind image "
        "work cannot be seen.",
        observed=where(lab, backlog.resizes[0].id, backlog.tl),
        hint="route images.* to the images queue first (the first test of this lab).",
    )
    expect(
        backlog.error is None and backlog.first_end() is not None,
        "The backlog's first resize did not run to its end on a worker that consumes `images`.",
        observed=backlog.error or where(lab, backlog.resizes[0].id, backlog.tl),
        hint="a worker in WORKERS must consume `images` (the test about every queue having a worker).",
    )
    if result is not None:
        went = short(lab, sent_to(backlog.tl, result.id))
        expect(
            went == queue,
            f"{what} was sent to `{went}`, not `{queue}`, so it shares a queue with the backlog's resizes.",
            observed=where(lab, result.id, backlog.tl),
            hint=f"send it to `{queue}` first (see the test about where {what} goes).",
        )
    start, end = backlog.start(result), backlog.first_end()
    expect(
        start is not None and end is not None and start < end,
        f"{what} waited behind the image backlog.",
        expected=f"it starts while the first backlog resize ({BACKLOG_SECONDS:g} s) still runs",
        observed=(where(lab, result.id, backlog.tl) if result is not None else "it was never sent")
        + (
            f"; started {start - end:+.1f} s after that resize ended"
            if start is not None and end is not None
            else "; it never started"
        ),
        hint=hint,
    )


@pytest.mark.together("backlog")
@pytest.mark.points(2)
@pytest.mark.deadline(30)
@pytest.mark.rules(
    "images-dedicated",
    needs=["images-by-pattern", "emails-by-pattern", "others-default", "every-queue-consumed"],
)
def test_mail_and_audit_do_not_wait_behind_images(lab, fleet, backlog):
    """With resizes running, a password reset and an audit record start at once elsewhere"""
    mixed = {
        host: [q for q in queues if q in ("emails", "celery")]
        for host, queues in fleet.consumes.items()
        if "images" in queues
    }
    mixed = {h: q for h, q in mixed.items() if q}
    expect(
        not mixed,
        "A worker that consumes `images` also consumes "
        + ", ".join(f"`{q}`" for qs in mixed.values() for q in qs)
        + ": mail and audit tasks queue behind slow resizes there.",
        expected="`images` on workers of its own; `emails` and `celery` on others",
        observed=f"your WORKERS consume: {fleet.describe()}",
        hint="give images a dedicated worker in WORKERS, and move the other queues to other workers.",
    )
    hint = "`emails` and `celery` must be consumed by workers that do not consume `images`."
    judge_not_behind(lab, backlog, backlog.reset, "emails.send_reset", "emails", hint)
    judge_not_behind(lab, backlog, backlog.record, "audit.record", "celery", hint)


@pytest.mark.together("backlog")
@pytest.mark.points(2)
@pytest.mark.deadline(30)
@pytest.mark.rules(
    "urgent-skips-backlog", needs=["images-by-pattern", "urgent-override", "every-queue-consumed"]
)
def test_urgent_resize_skips_the_backlog(lab, fleet, backlog):
    """An urgent resize sent behind a backlog of resizes starts before the first of them ends"""
    mixed = [host for host in fleet.consumers("urgent") if "images" in fleet.consumes[host]]
    expect(
        not mixed,
        "A worker that consumes `urgent` also consumes `images`: there the urgent resize waits behind the "
        "resizes that worker already holds.",
        expected="`urgent` only on workers that do not consume `images`",
        observed=f"your WORKERS consume: {fleet.describe()}",
        hint="move `urgent` to a worker that does not consume `images` in WORKERS.",
    )
    judge_not_behind(
        lab,
        backlog,
        backlog.urgent,
        "resize_now's resize",
        "urgent",
        "`urgent` must be consumed by a worker that does not consume `images`.",
    )
