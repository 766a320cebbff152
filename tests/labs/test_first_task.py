"""Autograder: a first task (labs/first_task/README.md has the contract).

The worker is started with the lab's own command line, ``celery -A tasks worker -l info``, in the
learner's folder (the kit adds a node name, its queue and ``-E``, and lays its broker and backend over
the app's). The learner's client functions (``start_add``, ``wait_for``, ...) run here, in the grader's
process, as a web app would call them; every call is bounded, so a hang is a verdict, not a stuck grade.
Verdicts come from the worker's events, the result backend and what the functions returned.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, EagerResult

from celerylab.engine import runtime
from celerylab.engine.timeline import DeadlineExceeded
from celerylab.grading.session import LabFailure, expect, verdict

CALL_LIMIT = 5.0  # a client function that only sends must return well within this
COUNTDOWN = 1.0  # start_add_in's delay in the test
EARLY = 0.15  # a countdown task may start this much before its eta (clock reading, event timestamps)
LATE = 3.0  # ... and this much after it on a loaded machine
GET_TIMEOUT = 1.0  # wait_for's timeout in the give-up test
GET_SLACK = 1.5  # it must have raised by GET_TIMEOUT + this
OWN_BROKER: dict[int, str] = {}  # id(a second app) -> the broker it was configured with
REACH = 5.0  # a message sent through the worker's app is picked up within this (seen: ~0.05 s)


@pytest.fixture(scope="module")
def client(lab_session):
    """The learner's module as a web app would import it: its `app` on the kit's broker. Any other
    Celery app it creates is pointed at an in-process broker, so what it sends stays here, where the
    grader can say so, instead of landing on a real server's default queue."""
    module = lab_session.module()
    main = runtime.find_app(module)
    for value in vars(module).values():
        if isinstance(value, Celery) and value is not main:
            OWN_BROKER[id(value)] = value.conf.broker_url or "its default, amqp://guest@localhost//"
            value.conf.update(broker_url="memory://", result_backend="cache+memory://")
    return module


def run_bounded(module: Any, name: str, *args: Any, limit: float = CALL_LIMIT) -> dict[str, Any]:
    """``module.name(*args)`` in a thread: ``{"value": ...}``, ``{"error": exc}`` or ``{}`` (still running
    after ``limit`` seconds; the thread is a daemon and dies with the grade)."""
    fn = getattr(module, name, None)
    if not callable(fn):
        raise LabFailure(
            verdict(
                f"MISSING FUNCTION: tasks.py has no function `{name}`.",
                expected=f"`def {name}(...)` as the README's contract table shows",
                hint="did you rename or delete it?",
            )
        )
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # the learner's code may raise anything
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"learner-{name}", daemon=True)
    thread.start()
    thread.join(limit)
    return dict(outcome)


def call(module: Any, name: str, *args: Any, limit: float = CALL_LIMIT) -> Any:
    """``module.name(*args)``, bounded: its value, or a verdict for what it did instead."""
    outcome = run_bounded(module, name, *args, limit=limit)
    shown = f"{name}({', '.join(map(repr_arg, args))})"
    if not outcome:
        raise LabFailure(
            verdict(
                f"{shown} did not return within {limit:g} s.",
                observed="still running: it waits for something that does not come",
                hint="a function that sends a task returns its AsyncResult at once; only wait_for waits, "
                "and never without a timeout (.get() with no timeout waits forever).",
            )
        )
    if "error" in outcome:
        exc = outcome["error"]
        raise LabFailure(
            verdict(
                f"{shown} raised {type(exc).__name__}" + (f": {str(exc)[:200]}" if str(exc) else "."),
                hint="NotImplementedError? That is the skeleton's TODO."
                if isinstance(exc, NotImplementedError)
                else "read the error: it comes from your function, called as the README's contract says.",
            )
        )
    return outcome["value"]


def repr_arg(value: Any) -> str:
    return f"<AsyncResult {value.id[:8]}>" if isinstance(value, AsyncResult) else repr(value)


def sent_result(lab, module: Any, name: str, value: Any, task: str, local: Any = None) -> AsyncResult:
    """What a sending function returned, as an AsyncResult of the worker's app, or a verdict. ``local``:
    what the task itself returns for these arguments (a function that returns it ran the task itself)."""
    if not isinstance(value, AsyncResult):
        if local is not None and value == local:
            seen = f"{value!r}, {task}'s own return value: {task} ran right here, in the caller's process"
        elif isinstance(value, str):
            seen = f"the string {value!r}: a task id? Return the AsyncResult itself (it has .id)"
        else:
            seen = f"{value!r} ({type(value).__name__})"
        raise LabFailure(
            verdict(
                f"{name} must send {task} to a worker and return the AsyncResult.",
                expected="an AsyncResult (what .delay() and .apply_async() return)",
                observed=f"it returned {seen}",
                hint=f"{task}.delay(...) sends a message; calling {task}(...) is a plain function call.",
            )
        )
    if isinstance(value, EagerResult):
        raise LabFailure(
            verdict(
                f"{name} ran {task} right here, eagerly, instead of sending it to a worker.",
                expected="an AsyncResult of a message sent to the broker (.delay(), .apply_async())",
                observed=f"an EagerResult: {task} already ran in the caller's process (.apply() or "
                "task_always_eager), and no worker saw it",
                hint=".apply() is .apply_async()'s local twin, for tests; send with .delay(...).",
            )
        )
    main = runtime.find_app(module)
    if value.app is not main and value.app is not lab.app:
        apps = [n for n, v in vars(module).items() if isinstance(v, Celery) and v is value.app]
        other = f"`{apps[0]}`" if apps else "another Celery app"
        raise LabFailure(
            verdict(
                f"{name} sent {task} through {other}, a second Celery app, not through `app`.",
                expected="one app: every task defined with @app.task, every message sent through app",
                observed=f"the AsyncResult belongs to {other} (broker {OWN_BROKER.get(id(value.app), '?')})"
                "; the worker runs `app` and listens on app's broker, so it never received the message",
                hint=f"define {task} with @app.task (a second Celery() has its own broker and backend "
                "settings: by default a RabbitMQ on localhost and no result backend).",
            )
        )
    return AsyncResult(value.id, app=lab.app)


def started(lab, result: AsyncResult):
    tries = lab.timeline.attempts(result.id)
    return tries[0] if tries else None


# -- sending: delay, apply_async, send_task -----------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(15)
@pytest.mark.rules("delay")
def test_start_add_sends_to_a_worker(lab, client):
    """start_add(2, 3): add.delay sends it, a worker process runs it, the result is 5"""
    worker = lab.worker()
    result = sent_result(lab, client, "start_add", call(client, "start_add", 2, 3), "add", 5)
    lab.wait(result)
    first = started(lab, result)
    expect(
        first is not None
        and first.hostname == worker.hostname
        and lab.timeline.state(result.id) == "SUCCESS",
        "start_add(2, 3) must run add on the worker.",
        expected=f"one attempt on {worker.hostname}, SUCCESS",
        observed=lab.timeline.describe(result.id),
    )
    value = lab.result(result)
    expect(value == 5, "add(2, 3) on the worker must return 5.", expected="5", observed=repr(value))


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("apply-async-countdown")
def test_start_add_in_waits_its_countdown(lab, client):
    """start_add_in(2, 3, 1.0): apply_async with a countdown: add starts ~1 s after it was sent"""
    lab.worker()
    sent = time.time()
    result = sent_result(lab, client, "start_add_in", call(client, "start_add_in", 2, 3, COUNTDOWN), "add", 5)
    lab.wait(result)
    first = started(lab, result)
    after = None if first is None else first.start - sent
    expect(
        after is not None and COUNTDOWN - EARLY <= after <= COUNTDOWN + LATE,
        f"start_add_in(2, 3, {COUNTDOWN:g}) must run add {COUNTDOWN:g} s after it is sent, not at once.",
        expected=f"add starts {COUNTDOWN:g} s after the call (apply_async((x, y), countdown=seconds))",
        observed=f"{lab.timeline.describe(result.id)}"
        + ("" if after is None else f"; it started {after:.2f} s after the call"),
        hint="apply_async takes the arguments as a tuple and options beside them: "
        "add.apply_async((x, y), countdown=seconds).",
    )
    value = lab.result(result)
    expect(value == 5, "add(2, 3) must return 5.", expected="5", observed=repr(value))


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("registered-name")
def test_start_multiply_uses_the_registered_name(lab, client):
    """start_multiply(6, 7): sent by name, billing.multiply, the name the worker registered; 42"""
    lab.worker()
    names = sorted(lab.probe["tasks"])
    result = sent_result(lab, client, "start_multiply", call(client, "start_multiply", 6, 7), "multiply", 42)
    lab.wait(result)
    tries = lab.timeline.attempts(result.id)
    failed = [e.get("exception") for e in lab.timeline.events("task-failed", uuid=result.id)]
    unknown = next((f for f in failed if f and f.startswith("NotRegistered")), None)
    sent_name = lab.timeline.names().get(result.id) or (unknown or "").removeprefix("NotRegistered(")[:-1]
    expect(
        unknown is None and tries and lab.timeline.state(result.id) == "SUCCESS",
        "The worker must know the task by the name start_multiply sends.",
        expected="multiply registered as billing.multiply (@app.task(name=...)), "
        'sent as app.send_task("billing.multiply", args=(x, y))',
        observed=f"the worker refused it: it has no task named {sent_name}; it knows {', '.join(names)}"
        if unknown
        else lab.timeline.describe(result.id),
        hint="a name is matched letter for letter: the sender's string, the task's name= (or, without "
        "one, module.function as the worker imports it, here tasks.multiply).",
    )
    expect(
        "billing.multiply" in names,
        "multiply must be registered as billing.multiply.",
        observed=", ".join(names),
    )
    value = lab.result(result)
    expect(value == 42, "multiply(6, 7) must return 42.", expected="42", observed=repr(value))


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("one-app")
def test_start_tags_reaches_the_worker(lab, client):
    """start_tags(...): unique_tags is on the worker's app, so its .delay reaches the worker"""
    lab.worker()
    result = sent_result(
        lab, client, "start_tags", call(client, "start_tags", ["b", "a", "b"]), "unique_tags", ["a", "b"]
    )
    try:
        lab.timeline.wait_for(
            lambda tl: tl.events("task-received", uuid=result.id), min(REACH, lab.remaining()), "message"
        )
        reached = True
    except DeadlineExceeded:
        reached = False
    expect(
        reached,
        "start_tags's message must reach the worker.",
        observed=f"no worker received task {result.id[:8]} within {REACH:g} s",
        hint="is it sent through the app the worker runs (`app`), to the queue the worker consumes?",
    )
    lab.wait(result)


# -- results: JSON, ignore_result, get(timeout=...), state -----------------------------------------------


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("json-result")
def test_unique_tags_returns_json(lab):
    """unique_tags(["b", "a", "b"]) returns ["a", "b"]: a list, which JSON can store"""
    lab.worker()
    result = lab.send("unique_tags", ["b", "a", "b"])
    lab.wait(result)
    tries = lab.timeline.attempts(result.id)
    error = next((t.exception for t in tries if t.exception), None)
    expect(
        lab.timeline.state(result.id) == "SUCCESS",
        "unique_tags must succeed: its return value is stored as JSON.",
        expected="SUCCESS, the result ['a', 'b']",
        observed=lab.timeline.describe(result.id) + (f"; error: {error}" if error else ""),
        hint="JSON has lists, not sets, tuples or objects: a set cannot be stored (EncodeError). "
        "Return sorted(set(words)).",
    )
    value = lab.result(result)
    expect(value == ["a", "b"], "unique_tags must return the distinct words, sorted.", observed=repr(value))


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("ignore-result")
def test_record_visit_stores_no_result(lab):
    """record_visit runs and succeeds, and nothing is written to the result backend"""
    lab.worker()
    result = lab.send("record_visit", "/home")
    lab.wait(result)  # task-succeeded is sent after the result is stored, if it is stored at all
    meta = lab.app.backend.get_task_meta(result.id)
    expect(
        lab.timeline.state(result.id) == "SUCCESS" and meta.get("status") == "PENDING",
        "record_visit's result must not be stored (nobody reads it).",
        expected="SUCCESS on the worker; the backend has no result for it (its state reads PENDING)",
        observed=f"{lab.timeline.describe(result.id)}; the backend holds status {meta.get('status')}"
        + (f", result {meta.get('result')!r}" if meta.get("status") != "PENDING" else ""),
        hint="@app.task(ignore_result=True) on record_visit only (not task_ignore_result for the app: "
        "the other tasks' results are read).",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("get-timeout")
def test_wait_for_returns_the_value(lab, client):
    """wait_for(result, 2.0) of a finished add(2, 3) returns 5"""
    lab.worker()
    result = lab.send("add", 2, 3)
    lab.wait(result)
    value = call(client, "wait_for", result, 2.0)
    expect(value == 5, "wait_for must return the task's result.", expected="5", observed=repr(value))


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("get-timeout")
def test_wait_for_gives_up_after_its_timeout(lab, client):
    """wait_for(result, 1.0) of a task that never finishes raises TimeoutError after ~1 s"""
    # No worker will ever run it; its own app, so a get() left blocked here shares no result consumer
    # with the grader's (a wrong wait_for's thread stays blocked until the grade ends).
    never = AsyncResult(str(uuid.uuid4()), app=lab.ns.app("wait-for"))
    begun = time.monotonic()
    outcome = run_bounded(client, "wait_for", never, GET_TIMEOUT, limit=GET_TIMEOUT + GET_SLACK)
    took = time.monotonic() - begun
    error = outcome.get("error")
    expect(
        outcome,
        f"wait_for(result, timeout={GET_TIMEOUT:g}) was still waiting after {took:.1f} s for a task that "
        "never finishes.",
        expected=f"celery.exceptions.TimeoutError after ~{GET_TIMEOUT:g} s",
        observed="still blocked: .get() without a timeout (or with a longer one than asked) waits as long "
        "as the task takes, and forever for a lost one",
        hint="result.get(timeout=timeout).",
    )
    expect(
        isinstance(error, CeleryTimeoutError),
        "wait_for must let celery.exceptions.TimeoutError through when its time is up.",
        expected=f"celery.exceptions.TimeoutError after ~{GET_TIMEOUT:g} s",
        observed=f"it raised {type(error).__name__}: {str(error)[:120]}"
        if error
        else f"it returned {outcome.get('value')!r} after {took:.2f} s",
        hint="result.get(timeout=timeout) raises when the time is up; do not catch it, and do not read "
        ".result, which is None until the task is done.",
    )
    expect(
        took >= GET_TIMEOUT - 0.2,
        f"wait_for(result, timeout={GET_TIMEOUT:g}) gave up after {took:.2f} s, before its timeout.",
        hint="pass the timeout through: result.get(timeout=timeout).",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("status-by-id")
def test_status_reads_state_and_ready(lab, client):
    """status(id): PENDING/not ready for an unknown id, SUCCESS/ready, FAILURE/ready"""
    lab.worker()
    ok, bad = lab.send("add", 2, 3), lab.send("add", "two", 3)  # "two" + 3: TypeError on the worker
    lab.wait([ok, bad])
    cases = [(str(uuid.uuid4()), "PENDING", False), (ok.id, "SUCCESS", True), (bad.id, "FAILURE", True)]
    seen = [(state, ready, call(client, "status", task_id)) for task_id, state, ready in cases]
    wrong = [(s, r, got) for s, r, got in seen if got != {"state": s, "ready": r}]
    expect(
        not wrong,
        "status(task_id) must read the task's state and whether it is done, from its id alone.",
        expected="; ".join(f"{{'state': {s!r}, 'ready': {r}}}" for s, r, _ in seen),
        observed="; ".join(repr(got) for _, _, got in seen),
        hint="AsyncResult(task_id, app=app): .state, and .ready() (True for SUCCESS and FAILURE alike; "
        "PENDING also means 'unknown id').",
    )
