"""Autograder: Celery in a Django project (labs/django/README.md has the contract).

Real Django on a real database made for this grade (SQLite in a temp folder, or PostgreSQL with
``--database``), real prefork workers started with the project's own ``celery -A proj worker -l info``
(Celery's Django fix-up runs ``django.setup()`` in them). The learner's ``place_order`` runs here, in the
grader's process, on the same database; every task message it sends is recorded as it is published
(celerylab.engine.publishing): its arguments as passed, and whether a transaction was open on the grader's
connection at that moment.

The commit race is widened on purpose, not hoped for: after each publish the grader holds the publishing
code until a worker has run the task (or :data:`HOLD` runs out). A task sent while its transaction is still
open therefore runs before the commit on every run and reads ``Order.DoesNotExist``, and one sent from
``transaction.on_commit`` runs after it. Settings are read from the worker itself (remote control:
``conf``, ``registered``), a pickled message is sent to it to see it refused, and the warehouse the task
calls is a server the grader owns (it fails an order's first call when a test asks it to).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from celerylab.engine import runtime
from celerylab.engine.publishing import Publish, PublishLog
from celerylab.engine.timeline import FINAL, DeadlineExceeded, Timeline
from celerylab.grading.session import LabFailure, LabRun, LabSession, expect

# One shard for the whole lab: every test stands on the same project (its database made and migrated, Django
# imported in grader and workers), which costs more to make again than the tests take (about 1 s in all).
pytestmark = pytest.mark.together("project")

HOLD = 12.0  # after a publish, at most this long for the worker to run the task (SQLite waits 5 s for a lock)
TASK = "fulfil_order"


class Rollback(Exception):
    """Raised inside the grader's transaction to roll it back, as a view that fails after the service."""


@dataclass
class Warehouse:
    """The grader's stand-in for the warehouse API: 200 for every order, 503 for an order's first call
    when asked; it remembers the status it gave each order."""

    flaky: set[int] = field(default_factory=set)
    replies: dict[int, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Any) -> tuple[int, dict]:
        try:
            order = int((request.json() or {}).get("order"))
        except (TypeError, ValueError, AttributeError):
            return 400, {"error": 'expected {"order": <id>}'}
        with self.lock:
            status = 503 if order in self.flaky else 200
            self.flaky.discard(order)
            self.replies.setdefault(order, []).append(status)
        return status, {"order": order, "accepted": status == 200}

    def of(self, order: int) -> list[int]:
        with self.lock:
            return list(self.replies.get(order, []))


@dataclass
class Shop:
    """The learner's project in the grader's process: their service, their models, Django's db API."""

    services: ModuleType
    models: ModuleType
    db: ModuleType  # django.db
    warehouse: Warehouse

    def new_order(self, customer: str = "ada", total_cents: int = 1250) -> Any:
        return self.models.Order.objects.create(customer=customer, total_cents=total_cents)

    def shipments(self, order_id: int) -> int:
        return self.models.Shipment.objects.filter(order_id=order_id).count()

    def status(self, order_id: int) -> str | None:
        row = self.models.Order.objects.filter(pk=order_id).values_list("status", flat=True).first()
        return row

    def exists(self, order_id: int) -> bool:
        return self.models.Order.objects.filter(pk=order_id).exists()

    @contextlib.contextmanager
    def publishes(self, lab: LabRun) -> Iterator[PublishLog]:
        """Record this process's publishes, each held until a worker has run it (the widened window)."""

        def ran(p: Publish) -> None:
            with contextlib.suppress(DeadlineExceeded):
                lab.timeline.wait_for(lambda tl: attempt_over(tl, p.id), min(HOLD, lab.remaining()), "a run")

        with PublishLog(context=lambda: self.db.connection.in_atomic_block, hold=ran) as log:
            yield log


def attempt_over(tl: Timeline, uuid: str) -> bool:
    tries = tl.attempts(uuid)
    return tl.state(uuid) in FINAL or any(a.outcome != "running" for a in tries)


def load_shop(session: LabSession, warehouse: Warehouse) -> Shop:
    """Import the project here: the app (configured for this grade's namespace), ``django.setup()`` by
    Celery's fix-up when the app loads its task modules, then ``orders.services`` and ``orders.models``."""
    session.require_import()
    session.task_name(TASK)  # a missing task gets its own verdict, before services.py fails to import it
    try:
        app = runtime.find_app(session.module())
        app.loader.import_default_modules()  # the Django fix-up: django.setup(), then autodiscovery
        services = importlib.import_module("orders.services")
        models = importlib.import_module("orders.models")
        import django.db
    except BaseException as exc:  # the learner's code may raise anything at import
        raise LabFailure(
            f"The project could not be loaded in the grader: {type(exc).__name__}: {str(exc)[:400]}\n"
            "try:      `python manage.py check` in the lab folder shows the error."
        ) from None
    for name in ("place_order",):
        expect(
            callable(getattr(services, name, None)),
            f"MISSING FUNCTION: orders/services.py has no `{name}`.",
            expected="place_order(customer: str, total_cents: int) -> Order, as the README says",
            hint="did you rename it?",
        )
    return Shop(services, models, django.db, warehouse)


@pytest.fixture(scope="module")
def shop(lab_session, http_stub) -> Iterator[Shop]:
    warehouse = Warehouse()
    before = os.environ.get("WAREHOUSE_URL")
    os.environ["WAREHOUSE_URL"] = http_stub.handle("/shipments", warehouse)  # workers started next inherit it
    try:
        yield load_shop(lab_session, warehouse)
    finally:
        if before is None:
            os.environ.pop("WAREHOUSE_URL", None)
        else:
            os.environ["WAREHOUSE_URL"] = before


@pytest.fixture
def worker(lab, shop):
    return lab.worker("w1", concurrency=2)


def outcome(lab: LabRun, uuid: str) -> str:
    """What the worker made of a task: its state and the last attempt's error (``DoesNotExist(...)``)."""
    return lab.timeline.describe(uuid)


def judge_publishes(lab: LabRun, shop: Shop, name: str, log: PublishLog, where: str, error: Exception | None):
    """The verdict of one call of place_order: every fulfil_order it sent must have left after the commit
    (no transaction open on the grader's connection), and the worker must have found the order."""
    sent = log.of(name)
    early = [p for p in sent if p.context]
    if early:
        p = early[0]
        with contextlib.suppress(LabFailure):  # its run ended during the hold; its final state follows
            lab.wait(lab_result(lab, p.id), 5.0)
        raise LabFailure(
            f"{where}: fulfil_order was sent while the transaction was still open, so a worker ran it before "
            "the commit and could not see the new order.\n"
            "expected: the message published only once the transaction has committed\n"
            f"observed: published inside the transaction; the worker: {outcome(lab, p.id)}\n"
            "try:      transaction.on_commit(lambda: fulfil_order.delay(order.id)), or "
            "fulfil_order.delay_on_commit(order.id) (a countdown only hides the race)."
        )
    if error is not None and not _encode_error(error):
        raise LabFailure(f"{where}: place_order raised {type(error).__name__}: {str(error)[:300]}")
    expect(
        sent,
        f"{where}: place_order sent no fulfil_order at all.",
        expected="one fulfil_order message per order placed, once its transaction commits",
        hint="place_order must arrange the task (transaction.on_commit / delay_on_commit).",
    )
    for p in (p for p in sent if p.sent):  # a message that could not be encoded: the id test's verdict
        with contextlib.suppress(LabFailure):
            lab.wait(lab_result(lab, p.id), 15.0)
        order_id = _order_id(p)
        found = (
            lab.timeline.state(p.id) == "SUCCESS"
            and order_id is not None
            and shop.status(order_id) == "shipped"
        )
        expect(
            found,
            f"{where}: fulfil_order was sent after the commit, but the worker did not find its order.",
            expected="the worker reads the committed order: SUCCESS, the order marked shipped",
            observed=outcome(lab, p.id),
            hint="is on_commit registered before the order is created (outside any transaction it runs at "
            "once)? Register it after Order.objects.create, inside the atomic block.",
        )


def lab_result(lab: LabRun, uuid: str):
    from celery.result import AsyncResult

    return AsyncResult(uuid, app=lab.app)


def _order_id(p: Publish) -> int | None:
    values = list(p.args) + list(p.kwargs.values())
    for v in values:
        pk = getattr(v, "pk", v)
        if isinstance(pk, int) and not isinstance(pk, bool):
            return pk
    return None


def _encode_error(exc: BaseException) -> bool:
    return type(exc).__name__ in ("EncodeError", "TypeError") and "serializ" in str(exc).lower()


# -- enqueue only after commit ------------------------------------------------------------------------


@pytest.mark.points(3)
@pytest.mark.deadline(60)
@pytest.mark.rules("enqueue-on-commit", needs=["autodiscover", "pass-the-id"])
def test_task_sent_only_after_commit_finds_its_order(lab, shop, worker):
    """Inside an open transaction: fulfil_order is sent only after the commit and finds its order"""
    name = lab.task_name(TASK)
    db = shop.db
    error: Exception | None = None
    with shop.publishes(lab) as log:  # place_order on its own: its own transaction is the only one
        try:
            shop.services.place_order("ada", 1250)
        except Exception as exc:
            error = exc
    judge_publishes(lab, shop, name, log, "place_order called on its own", error)
    error = None
    with shop.publishes(lab) as log:  # inside a transaction the caller holds open (ATOMIC_REQUESTS)
        try:
            with db.transaction.atomic():
                shop.services.place_order("grace", 990)
        except Exception as exc:
            error = exc
    judge_publishes(lab, shop, name, log, "place_order inside the caller's transaction", error)


@pytest.mark.points(1)
@pytest.mark.deadline(40)
@pytest.mark.rules("enqueue-on-commit", needs=["autodiscover", "pass-the-id"])
def test_rolled_back_transaction_sends_no_task(lab, shop, worker):
    """Rolled back: a transaction that fails after place_order sends no task"""
    name = lab.task_name(TASK)
    placed = []
    with shop.publishes(lab) as log:
        with contextlib.suppress(Rollback):
            with shop.db.transaction.atomic():
                placed.append(shop.services.place_order("mallory", 500))
                raise Rollback  # the view fails after the service ran: everything is rolled back
    sent = log.of(name)
    gone = not placed or not shop.exists(getattr(placed[0], "pk", placed[0]))
    expect(gone, "The caller's transaction was rolled back, yet the order is still in the database.")
    if sent:  # its run ended during the hold; its final state follows
        with contextlib.suppress(LabFailure):
            lab.wait(lab_result(lab, sent[0].id), 5.0)
    expect(
        not sent,
        "A rolled-back transaction must send nothing: there is no order to fulfil.",
        expected="no fulfil_order message",
        observed=f"{len(sent)} sent; the worker: {outcome(lab, sent[0].id) if sent else ''}",
        hint="transaction.on_commit drops its callback when the transaction rolls back; .delay() does not.",
    )


# -- pass the id ----------------------------------------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(40)
@pytest.mark.rules("pass-the-id", needs=["autodiscover", "enqueue-on-commit"])
def test_message_carries_the_order_id(lab, shop, worker):
    """The message carries the order's id, not the model instance"""
    name = lab.task_name(TASK)
    error: Exception | None = None
    order = None
    with shop.publishes(lab) as log:
        try:
            order = shop.services.place_order("linus", 4200)
        except Exception as exc:
            error = exc
    sent = log.of(name)
    expect(
        sent,
        "place_order sent no fulfil_order message.",
        observed=f"place_order raised {type(error).__name__}: {str(error)[:200]}"
        if error
        else "nothing sent",
    )
    p = sent[-1]
    instances = [v for v in (*p.args, *p.kwargs.values()) if isinstance(v, shop.models.Order)]
    expect(
        not instances,
        "place_order passed the Order itself to fulfil_order. A model instance cannot travel as JSON, and "
        "even pickled it is a snapshot that may be stale when the worker runs.",
        expected="fulfil_order.delay(order.id): the id, an int",
        observed=f"arguments {p.args!r} {p.kwargs!r}"
        + (f"; publishing raised {type(error).__name__}: {str(error)[:150]}" if error else ""),
        hint="send order.id and let the task read the order: Order.objects.get(pk=order_id).",
    )
    pk = getattr(order, "pk", order) if order is not None else _order_id(p)
    ok = (p.args == (pk,) and not p.kwargs) or (not p.args and p.kwargs == {"order_id": pk})
    expect(
        ok and isinstance(pk, int),
        "fulfil_order's message must carry exactly the order's id.",
        expected=f"args ({pk},) or kwargs {{'order_id': {pk}}}",
        observed=f"args {p.args!r}, kwargs {p.kwargs!r}",
    )
    expect(error is None, f"place_order raised {type(error).__name__}: {str(error)[:300]}")


# -- the settings reach the worker ----------------------------------------------------------------------


SETTINGS = ("accept_content", "task_serializer", "result_serializer", "timezone", "task_acks_late")


def worker_conf(worker) -> dict[str, Any]:
    """The worker's settings as its app really has them (celerylab.engine.runtime's remote-control
    command)."""
    reply = worker.inspect(timeout=5.0)._request(runtime.SETTINGS_COMMAND, names=list(SETTINGS)) or {}
    return reply.get(worker.hostname) or {}


@pytest.mark.points(2)
@pytest.mark.deadline(40)
@pytest.mark.rules("json-only", needs=["autodiscover"])
def test_json_only_and_a_pickled_message_is_refused(lab, shop, worker):
    """JSON only: the worker's serializers are JSON and it refuses a pickled message"""
    name = lab.task_name(TASK)
    conf = worker_conf(worker)
    seen = {k: conf.get(k) for k in ("accept_content", "task_serializer", "result_serializer")}
    accept = [str(c).replace("application/", "") for c in (seen["accept_content"] or [])]
    expect(
        accept == ["json"] and seen["task_serializer"] == "json" and seen["result_serializer"] == "json",
        "The worker must speak JSON only: pickle lets anyone who can write to the broker run code in it.",
        expected="accept_content ['json'], task_serializer 'json', result_serializer 'json'",
        observed=f"the worker runs with {seen}",
        hint='CELERY_ACCEPT_CONTENT = ["json"], CELERY_TASK_SERIALIZER = "json", '
        'CELERY_RESULT_SERIALIZER = "json" in proj/settings.py (pass the id, and JSON is enough).',
    )
    pickled_order, sentinel_order = shop.new_order("eve", 100), shop.new_order("bob", 200)
    pickled = lab.send(name, pickled_order.pk, serializer="pickle")
    sentinel = lab.send(name, sentinel_order.pk)  # same queue, after it: once this ran, the other was read
    lab.wait(sentinel, 20.0)
    if lab.timeline.events(uuid=pickled.id, type="task-received"):
        with contextlib.suppress(LabFailure):
            lab.wait(pickled, 10.0)
    expect(
        lab.timeline.state(pickled.id) != "SUCCESS",
        "The worker ran a message serialized with pickle.",
        expected="refused (ContentDisallowed): never run",
        observed=outcome(lab, pickled.id),
        hint='drop "pickle" from CELERY_ACCEPT_CONTENT.',
    )


@pytest.mark.points(2)
@pytest.mark.deadline(30)
@pytest.mark.rules("celery-namespace", needs=["autodiscover"])
def test_celery_settings_take_effect_in_the_worker(lab, shop, worker):
    """The CELERY_ settings take effect in the worker: timezone UTC, tasks ack late"""
    name = lab.task_name(TASK)
    conf = worker_conf(worker)
    expect(
        str(conf.get("timezone")).upper() in ("UTC", "ETC/UTC"),
        "The worker's timezone is not UTC.",
        expected="timezone 'UTC' (CELERY_TIMEZONE)",
        observed=f"timezone {conf.get('timezone')!r}"
        + (" (Django's TIME_ZONE: Celery falls back to it)" if conf.get("timezone") else ""),
        hint='CELERY_TIMEZONE = "UTC" in proj/settings.py, read under namespace="CELERY".',
    )
    registered = (worker.inspect(timeout=5.0).registered("acks_late") or {}).get(worker.hostname) or []
    line = next((r for r in registered if r.split(" ", 1)[0] == name), "")
    expect(
        conf.get("task_acks_late") is True and "acks_late=True" in line,
        "The worker does not ack late, though the contract asks for it (fulfil_order is safe to run twice).",
        expected="task_acks_late True in the worker, so fulfil_order acks after it ran",
        observed=f"task_acks_late {conf.get('task_acks_late')!r}; registered: {line or registered}",
        hint='CELERY_TASK_ACKS_LATE = True, and proj/celery.py reading settings with namespace="CELERY" '
        "(without it Celery reads only the old setting names, and CELERY_TASK_ACKS_LATE is not one).",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(30)
@pytest.mark.rules("autodiscover", needs=["pass-the-id"])
def test_autodiscovery_finds_the_orders_tasks(lab, shop):
    """Autodiscovery: the worker finds orders/tasks.py by itself and runs fulfil_order"""
    lab.require_import()
    found = sorted(lab.probe["tasks"])
    expect(
        any(n.startswith("orders.") and n.endswith(TASK) for n in found),
        "No task of the orders app was registered when the project loaded.",
        expected="orders.tasks.fulfil_order, found by app.autodiscover_tasks() in proj/celery.py",
        observed=f"tasks found: {', '.join(found) or 'none'}",
        hint="call app.autodiscover_tasks() in proj/celery.py, and keep the task in orders/tasks.py.",
    )
    name = lab.task_name(TASK)
    worker = lab.worker("w1", concurrency=2)
    registered = (worker.inspect(timeout=5.0).registered() or {}).get(worker.hostname) or []
    expect(
        name in registered, "The worker did not register fulfil_order.", observed=f"registered: {registered}"
    )
    order = shop.new_order("alan", 300)
    result = lab.send(name, order.pk)
    lab.wait(result, 20.0)
    expect(
        lab.timeline.state(result.id) == "SUCCESS",
        "fulfil_order(order_id) did not succeed on the worker.",
        observed=outcome(lab, result.id),
        hint=id_hint(lab, result.id),
    )


# -- safe to run twice --------------------------------------------------------------------------------


def run_by_id(lab: LabRun, name: str, order_id: int) -> str:
    result = lab.send(name, order_id)
    lab.wait(result, 25.0)
    return result.id


def id_hint(lab: LabRun, uuid: str) -> str:
    tries = lab.timeline.attempts(uuid)
    error = (tries[-1].exception or "") if tries else ""
    if "instance" in error or "attribute" in error or "pk" in error:
        return "fulfil_order takes the order's id (an int), as the contract says, and reads the order itself."
    return ""


@pytest.mark.points(2)
@pytest.mark.deadline(45)
@pytest.mark.rules("retry-safe-writes", needs=["autodiscover", "pass-the-id"])
def test_retry_after_a_warehouse_error_writes_one_shipment(lab, shop, worker):
    """A retry after the warehouse failed: one shipment, the warehouse told, SUCCESS"""
    name = lab.task_name(TASK)
    order = shop.new_order("retry", 700)
    shop.warehouse.flaky.add(order.pk)  # its first call answers 503: the task is retried
    uuid = run_by_id(lab, name, order.pk)
    tries, state = lab.timeline.attempts(uuid), lab.timeline.state(uuid)
    replies, shipments = shop.warehouse.of(order.pk), shop.shipments(order.pk)
    expect(
        state == "SUCCESS" and shipments == 1 and replies[-1:] == [200],
        "fulfil_order runs again after the warehouse fails: the retry must not write a second shipment, "
        "and must still tell the warehouse.",
        expected="SUCCESS after 2 attempts; 1 shipment; the warehouse answered 503, then 200",
        observed=f"{outcome(lab, uuid)}; {shipments} shipment(s); warehouse replies {replies}; "
        f"{len(tries)} attempt(s)",
        hint=id_hint(lab, uuid)
        or "write the shipment so that running twice writes it once: Shipment.objects.get_or_create("
        "order=order), ideally backed by a unique constraint; and keep the warehouse call after it.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(45)
@pytest.mark.rules("retry-safe-writes", needs=["autodiscover", "pass-the-id"])
def test_second_delivery_writes_no_second_shipment(lab, shop, worker):
    """A second delivery of the same order (acks late): still one shipment, both runs SUCCESS"""
    name = lab.task_name(TASK)
    order = shop.new_order("twice", 800)
    first = run_by_id(lab, name, order.pk)
    second = run_by_id(lab, name, order.pk)  # what a redelivery after a crash looks like to the task
    states = [lab.timeline.state(first), lab.timeline.state(second)]
    shipments = shop.shipments(order.pk)
    expect(
        states == ["SUCCESS", "SUCCESS"] and shipments == 1,
        "With acks late a message can be delivered twice; the second run must neither write a second "
        "shipment nor fail.",
        expected="both runs SUCCESS; 1 shipment",
        observed=f"{outcome(lab, first)}; {outcome(lab, second)}; {shipments} shipment(s)",
        hint=id_hint(lab, first)
        or id_hint(lab, second)
        or "a transaction around the writes only helps when the run fails; a second run that succeeded "
        "must find the shipment already there (get_or_create, or a unique constraint and update_or_create).",
    )
