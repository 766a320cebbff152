"""Autograder: the transactional outbox, exactly-once effects (labs/outbox/README.md has the contract).

A real database made for this grade (SQLite in a temp folder, or PostgreSQL with ``--database``), real
prefork workers running the learner's ``relay_outbox`` and ``apply_order``. The learner's ``place_order``
runs here, in the grader's process, on the same database. The faults that make exactly-once hard are
injected at exact points, never hoped for:

- the service dies after its commit and before it publishes: here, the grader's process stops
  ``place_order`` at its first publish (a ``BaseException`` from Celery's ``before_task_publish``);
- the relay dies before it publishes, or after it published and before it marked the row sent: the worker's
  pool process exits at that publish (celerylab.engine.faults, armed by the grader, fired exactly once);
- two copies of one message run at once: each copy's first statement on the dedupe table (or the ledger)
  waits until the other copy has reached its own (a barrier in both processes), so a SELECT-then-INSERT
  sees "not yet" in both, every run;
- the consumer dies after recording the message and before writing its effect: its pool process exits as
  it INSERTs into the ledger, and the grader delivers the message again;
- a failing write inside ``place_order``'s transaction (the grader's SQLAlchemy event raises on the outbox
  INSERT): nothing of the order may remain.

Verdicts come from the database (the ledger: one row per order applied), from what the workers' processes
published (names, ids, arguments, body sizes) and from the tasks' events.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery import signals
from celery.result import AsyncResult
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from celerylab.engine import databases, faults
from celerylab.engine.publishing import PublishLog
from celerylab.grading.session import LabFailure, LabRun, LabSession, expect

BODY_BOUND = 1024  # bytes of a message body (its JSON: args, kwargs, options): ids fit many times over
NOTE = "gift wrap, " * 400  # an order whose row is large (~4 KB): a message that carries it is a blob
TABLES = ("orders", "outbox", "ledger")  # given by the skeleton; processed_messages is judged by its effect
RELAY, CONSUMER = "relay_outbox", "apply_order"
ROUNDS = 3  # of two copies at once, until both met at the barrier (see test_two_copies_at_once_apply_once)
BARRIER_WAIT = 10.0  # the longest the first copy waits there for the second (a correct one is let go sooner)


class ServiceCrash(BaseException):  # noqa: N818 (a crash, not an error: no `except Exception` catches it)
    """The grader stops place_order where it publishes, as if its process died there."""


class InjectedFailure(Exception):
    """The grader's failing write inside place_order's transaction."""


@dataclass
class Shop:
    """The learner's module in the grader's process, the grade's database, and the armed faults."""

    tasks: ModuleType
    db: Engine  # the grader's own connection to the grade's database
    faults: faults.Faults

    def place(self, lab: LabRun, total_cents: int = 1250, note: str = "") -> tuple[int | None, PublishLog]:
        """place_order here; returns the order's id (None if it raised) and what it published itself."""
        customer = f"c-{secrets.token_hex(4)}"
        with PublishLog() as log:
            try:
                order_id = self.tasks.place_order(customer, total_cents, note)
            except Exception as exc:
                raise LabFailure(
                    f"place_order({customer!r}, {total_cents}, note) raised {type(exc).__name__}: "
                    f"{str(exc)[:300]}"
                ) from None
        expect(
            isinstance(order_id, int) and not isinstance(order_id, bool) and self.order(order_id),
            "place_order must return the new order's id (an int) once the order is committed.",
            observed=f"it returned {order_id!r}",
        )
        return order_id, log

    def order(self, order_id: int) -> bool:
        with self.db.connect() as conn:
            row = conn.execute(text("SELECT 1 FROM orders WHERE id = :o"), {"o": order_id}).first()
            return row is not None

    def orders_of(self, customer: str) -> list[int]:
        with self.db.connect() as conn:
            rows = conn.execute(text("SELECT id FROM orders WHERE customer = :c"), {"c": customer})
            return [row[0] for row in rows]

    def outbox(self, order_id: int) -> list[tuple[int, Any]]:
        """The order's outbox rows: (message id, sent_at)."""
        with self.db.connect() as conn:
            rows = conn.execute(
                text("SELECT id, sent_at FROM outbox WHERE order_id = :o ORDER BY id"), {"o": order_id}
            )
            return [(row[0], row[1]) for row in rows]

    def effects(self, order_id: int) -> list[int]:
        """The ledger's amounts for the order: one entry per time its effect was applied."""
        with self.db.connect() as conn:
            rows = conn.execute(text("SELECT amount_cents FROM ledger WHERE order_id = :o"), {"o": order_id})
            return [row[0] for row in rows]

    def settle_outbox(self) -> None:
        """Mark every row earlier tests left unsent as sent: this test's relay sees only its own orders."""
        with self.db.begin() as conn:
            conn.execute(text("UPDATE outbox SET sent_at = CURRENT_TIMESTAMP WHERE sent_at IS NULL"))

    def mark_sent(self, message_id: int) -> None:
        with self.db.begin() as conn:
            sql = "UPDATE outbox SET sent_at = CURRENT_TIMESTAMP WHERE id = :m"
            conn.execute(text(sql), {"m": message_id})

    def deliveries(self, order_id: int) -> list[dict[str, Any]]:
        """apply_order messages the workers' processes published for the order (by its outbox ids, or by an
        argument naming the order)."""
        ids = {m for m, _ in self.outbox(order_id)}
        return [p for p in self.faults.published(CONSUMER) if _names(p, ids, order_id)]


def _names(p: dict[str, Any], message_ids: set[int], order_id: int) -> bool:
    """Is this apply_order message the order's? By its message id (the first argument), or, when the order
    has no outbox row, by an argument that is the order's id (or a dict of the order)."""
    args, kwargs = list(p["args"]), dict(p["kwargs"])
    first = kwargs.pop("message_id") if "message_id" in kwargs else (args.pop(0) if args else None)
    if message_ids:
        return first in message_ids
    return any(
        v == order_id or (isinstance(v, dict) and v.get("id") == order_id) for v in [*args, *kwargs.values()]
    )


@pytest.fixture(scope="module")
def shop(request: pytest.FixtureRequest, lab_session: LabSession) -> Iterator[Shop]:
    """The grade's database (made here, dropped at the end whatever happens), the learner's module loaded
    on it, its tables made by its own create_tables(), and the folder of armed faults."""
    before = {key: os.environ.get(key) for key in (databases.SQL_ENV,)}
    try:
        database = databases.create(request.config.getoption("--database"))
    except databases.DatabaseUnavailable as exc:
        raise LabFailure(str(exc)) from None
    # named like the grade's SQLite folders (owner pid first), so a grade killed outright has it swept too
    folder = Path(tempfile.mkdtemp(prefix=f"{databases.SQLITE_PREFIX}{os.getpid()}-faults-"))
    engines: list[Engine] = []
    try:
        os.environ[databases.SQL_ENV] = database.url  # the grader's import and every worker read it
        lab_session.require_import()
        try:
            tasks = lab_session.module()
            engines.append(tasks.engine)
            tasks.create_tables()
        except Exception as exc:  # the learner's schema may fail in any way
            raise LabFailure(
                f"tasks.py could not make its tables on {database.kind}: {type(exc).__name__}: "
                f"{str(exc)[:400]}\ntry:      keep `engine = databases.sql_engine(...)` and create_tables() "
                "from the skeleton; run `python tasks.py` to see the error."
            ) from None
        db = databases.sql_engine("unused.sqlite3")  # reads the same $CELERYLAB_SQL_DATABASE
        engines.append(db)
        _require_tables(db)
        yield Shop(tasks, db, faults.Faults(folder))
    finally:
        for engine in engines:
            with contextlib.suppress(Exception):
                engine.dispose()
        database.drop()
        shutil.rmtree(folder, ignore_errors=True)
        for key, value in before.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _require_tables(db: Engine) -> None:
    from sqlalchemy import inspect

    found = set(inspect(db).get_table_names())
    missing = [t for t in TABLES if t not in found]
    expect(
        not missing,
        f"create_tables() did not make the table(s) {', '.join(missing)}.",
        expected=f"tables {', '.join(TABLES)}, as the skeleton defines them",
        observed=f"tables: {', '.join(sorted(found)) or 'none'}",
        hint="keep the skeleton's Table definitions and create_tables().",
    )


@pytest.fixture
def worker(lab: LabRun, shop: Shop):
    return lab.worker(
        "w1", concurrency=2, settings=faults.worker_settings(), env=shop.faults.env
    )  # two processes: two copies of a message run at once


def relay(lab: LabRun) -> str:
    """Run relay_outbox once on the worker; its final state (FAILURE when the grader crashed it)."""
    r = lab.send(RELAY)
    lab.wait(r, 30.0)
    return lab.timeline.state(r.id) or "?"


def wait_deliveries(lab: LabRun, shop: Shop, order_id: int) -> list[dict[str, Any]]:
    """The order's apply_order messages that left, each run to its end."""
    sent = [p for p in shop.deliveries(order_id) if p["sent"]]
    if sent:
        lab.wait([AsyncResult(p["id"], app=lab.app) for p in sent], 40.0)
    return sent


def no_publish(shop: Shop, order_id: int) -> str:
    if not shop.outbox(order_id):
        return "place_order wrote no outbox row for the order: there is no message for the relay to publish."
    return "relay_outbox published no apply_order for the order's unsent outbox row."


def describe(lab: LabRun, sent: list[dict[str, Any]]) -> str:
    return "; ".join(lab.timeline.describe(p["id"]) for p in sent) or "no apply_order message left"


def judge_once(lab: LabRun, shop: Shop, order_id: int, total: int, where: str, hint: str) -> None:
    """The order's effect happened exactly once, with the order's amount, and every copy succeeded."""
    sent = wait_deliveries(lab, shop, order_id)
    effects = shop.effects(order_id)
    failed = [p for p in sent if lab.timeline.state(p["id"]) != "SUCCESS"]
    observed = f"ledger rows for the order: {effects}; messages: {describe(lab, sent)}"
    if not effects and not shop.outbox(order_id):
        hint = "place_order wrote no outbox row for the order, so the relay had nothing to publish."
    expect(
        len(effects) == 1,
        f"{where}: order {order_id} was committed, so its effect must happen exactly once"
        + (" (it never happened)." if not effects else f" (it happened {len(effects)} times)."),
        expected=f"one ledger row of {total}",
        observed=observed,
        hint=hint,
    )
    expect(
        effects == [total],
        "apply_order must take the amount from the order in the database.",
        expected=f"[{total}]",
        observed=observed,
    )
    expect(
        not failed,
        f"{where}: every copy of the message must succeed; a duplicate is absorbed, not an error.",
        observed=observed,
        hint="a duplicate should find its message id already processed and return (catch the "
        "IntegrityError of the unique key, or INSERT ... ON CONFLICT DO NOTHING).",
    )


# -- the order and its outbox row: one transaction --------------------------------------------------------


@contextlib.contextmanager
def failing_outbox_insert() -> Iterator[list[str]]:
    """Any INSERT into outbox made in this process raises: the transaction around it must roll back."""
    seen: list[str] = []

    def fail(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if re.match(r'\s*INSERT\s+INTO\s+"?outbox"?\b', statement, re.I):
            seen.append(statement)
            raise InjectedFailure("the grader's injected failure writing the outbox row")

    event.listen(Engine, "before_cursor_execute", fail)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", fail)


@pytest.mark.points(2)
@pytest.mark.deadline(30)
@pytest.mark.rules("one-transaction")
def test_failed_outbox_write_leaves_no_order(lab, shop, worker):
    """Rolled back: when writing the outbox row fails, no order remains and nothing is published"""
    customer = f"rollback-{secrets.token_hex(4)}"
    raised: BaseException | None = None
    with failing_outbox_insert() as seen, PublishLog() as log:
        try:
            shop.tasks.place_order(customer, 700, "")
        except InjectedFailure as exc:
            raised = exc
        except Exception as exc:
            raised = exc if isinstance(exc.__cause__ or exc.__context__, InjectedFailure) else exc
    left = shop.orders_of(customer)
    expect(
        seen,
        "place_order wrote no outbox row: the order's message must be written with the order, in the "
        "same transaction.",
        expected="INSERT INTO outbox (order_id) ... inside place_order's transaction",
        observed=f"orders committed: {left}; published: {[p.task for p in log.published]}",
        hint="with engine.begin() as conn: insert the order, then its outbox row, in that one block.",
    )
    expect(
        not left,
        "Writing the outbox row failed, yet the order was committed: an order without its message is "
        "never delivered.",
        expected="the order and its outbox row commit together or not at all",
        observed=f"order(s) {left} in the database after place_order raised "
        f"{type(raised).__name__ if raised else 'nothing'}",
        hint="one `with engine.begin() as conn:` block around both INSERTs (not one block each).",
    )
    expect(
        not log.published,
        "place_order published while its transaction failed: a message for an order that does not exist.",
        observed=f"published: {[p.task for p in log.published]}",
        hint="place_order only writes; relay_outbox publishes.",
    )


# -- the relay delivers every committed order --------------------------------------------------------------


@contextlib.contextmanager
def service_dies_at_publish() -> Iterator[list[str]]:
    """place_order's process 'dies' at its first publish: the message never leaves (see ServiceCrash)."""
    hits: list[str] = []

    def die(sender: Any = None, **_: Any) -> None:
        hits.append(str(sender))
        raise ServiceCrash(str(sender))

    signals.before_task_publish.connect(die, weak=False, dispatch_uid="celerylab-outbox-service-crash")
    try:
        yield hits
    finally:
        signals.before_task_publish.disconnect(dispatch_uid="celerylab-outbox-service-crash")


@pytest.mark.points(2)
@pytest.mark.deadline(60)
@pytest.mark.rules("relay-delivers")
def test_order_committed_then_service_dies_is_still_delivered(lab, shop, worker):
    """Service dies after its commit, before publishing: the relay still delivers the order, once"""
    shop.settle_outbox()
    customer = f"crash-{secrets.token_hex(4)}"
    with service_dies_at_publish() as hits:
        with contextlib.suppress(ServiceCrash):
            shop.tasks.place_order(customer, 4200, "")
    committed = shop.orders_of(customer)
    expect(
        committed,
        "place_order published before its transaction committed, so the crash at that publish lost the "
        "order itself.",
        observed=f"place_order's first publish ({', '.join(hits)}) came before any commit",
        hint="place_order publishes nothing: it writes the order and an outbox row; the relay publishes.",
    )
    order_id = committed[0]
    state = relay(lab)
    judge_once(
        lab,
        shop,
        order_id,
        4200,
        "The service died right after its commit"
        + (f" (at its own publish of {hits[0].rsplit('.', 1)[-1]})" if hits else ""),
        "the outbox row committed with the order is the only promise that survives the crash: "
        f"relay_outbox (here: {state}) must publish every row not yet sent; place_order publishes nothing.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(60)
@pytest.mark.rules("relay-delivers")
def test_one_relay_run_delivers_every_unsent_order(lab, shop, worker):
    """One relay run publishes every unsent row and marks it sent: each order's effect once"""
    shop.settle_outbox()
    placed = [shop.place(lab, total)[0] for total in (100, 200, 300)]
    state = relay(lab)
    for order_id, total in zip(placed, (100, 200, 300), strict=True):
        judge_once(
            lab,
            shop,
            order_id,
            total,
            "After one relay run",
            f"relay_outbox ({state}) publishes every unsent row",
        )
        rows = shop.outbox(order_id)
        expect(
            rows and all(sent is not None for _, sent in rows),
            "relay_outbox must mark each row it published as sent (sent_at), or it publishes it again.",
            observed=f"outbox rows of order {order_id}: {rows}",
        )


# -- the consumer applies each message once (first, while both pool processes are fresh) -------------


@pytest.mark.points(1)
@pytest.mark.deadline(60)
@pytest.mark.rules("dedupe", needs=["relay-delivers"])
def test_two_copies_at_once_apply_once(lab, shop, worker):
    """Two copies of one message at once (2 processes): one effect, both succeed"""
    shop.settle_outbox()
    # The verdict comes from a round where both copies met at the barrier: each had read the dedupe table
    # (or the ledger) before either wrote. A round where they did not (the pool gave both to one process, or
    # the machine was too slow for the barrier's wait) cannot show the race and is played again with a new
    # order, up to ROUNDS times. Here both copies met in every round seen, so a wrong solution would pass only
    # if three rounds in a row missed (at most 1 in 1,000 while a round misses at most 1 time in 10). A
    # double effect in any round fails at once.
    for _ in range(ROUNDS):
        order_id, _ = shop.place(lab, 2500)
        rows = shop.outbox(order_id)
        expect(rows, no_publish(shop, order_id), observed=f"order {order_id}")
        message_id = rows[0][0]
        shop.mark_sent(message_id)  # the grader delivers it twice itself
        round_id = shop.faults.barrier(["processed_messages", "ledger"], parties=2, wait=BARRIER_WAIT)
        copies = [lab.send(CONSUMER, message_id, order_id) for _ in range(2)]
        try:
            lab.wait(copies, 40.0)
        finally:
            shop.faults.disarm()
        effects = shop.effects(order_id)
        if shop.faults.barrier_met(round_id) or len(effects) != 1:
            break
    states = [lab.timeline.describe(c.id) for c in copies]
    expect(
        len(effects) == 1,
        f"Two copies of message {message_id} ran at once; the order's effect was applied {len(effects)}x.",
        expected="one ledger row",
        observed=f"ledger rows: {effects}; copies: {'; '.join(states)}",
        hint="record the message id where it is the primary key, in the effect's transaction: the second "
        "copy's INSERT fails (or does nothing with ON CONFLICT DO NOTHING). A look-up first is "
        "check-then-act: both copies look before either writes."
        if effects
        else "apply_order(message_id, order_id) must read the order and write its ledger row.",
    )
    expect(
        all(lab.timeline.state(c.id) == "SUCCESS" for c in copies),
        "Both copies must succeed: the duplicate is absorbed, not an error.",
        observed="; ".join(states),
        hint="catch the IntegrityError of the duplicate id and return.",
    )


# -- publish, then mark ------------------------------------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(60)
@pytest.mark.rules("publish-then-mark", needs=["relay-delivers"])
def test_relay_dies_before_publishing_loses_nothing(lab, shop, worker):
    """Relay dies just before it publishes: the next run still publishes the row"""
    shop.settle_outbox()
    order_id, _ = shop.place(lab, 990)
    armed = shop.faults.crash("before", CONSUMER)
    first = relay(lab)
    expect(
        not shop.faults.armed(armed),
        no_publish(shop, order_id),
        observed=f"relay_outbox: {first}; outbox rows: {shop.outbox(order_id)}",
        hint="relay_outbox publishes apply_order for each outbox row whose sent_at is NULL.",
    )
    second = relay(lab)
    judge_once(
        lab,
        shop,
        order_id,
        990,
        "The relay's process died just before publishing, then the relay ran again",
        "mark a row sent only after its message was published (a crash in between then publishes it "
        f"again; marked first, it is lost). Relay runs: {first}, then {second}.",
    )


# -- the consumer applies each message once ----------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.deadline(60)
@pytest.mark.rules("dedupe", needs=["relay-delivers"])
def test_relay_dies_after_publishing_duplicate_is_absorbed(lab, shop, worker):
    """Relay dies after publishing, before marking sent: the duplicate it publishes next is absorbed"""
    shop.settle_outbox()
    order_id, _ = shop.place(lab, 1500)
    armed = shop.faults.crash("after", CONSUMER)
    first = relay(lab)
    expect(
        not shop.faults.armed(armed),
        no_publish(shop, order_id),
        observed=f"relay_outbox: {first}; outbox rows: {shop.outbox(order_id)}",
    )
    relay(lab)
    judge_once(
        lab,
        shop,
        order_id,
        1500,
        "The relay died after publishing and before marking the row sent, so the row was published again",
        "record each message id in a dedupe table whose key is unique, in the same transaction as the "
        "effect: the second copy finds it and returns.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(60)
@pytest.mark.rules("dedupe")
def test_consumer_dies_before_its_effect_then_redelivered_applies_once(lab, shop, worker):
    """Consumer dies after recording the message, before its effect: the redelivered copy applies it once"""
    shop.settle_outbox()
    order_id, _ = shop.place(lab, 1800)
    rows = shop.outbox(order_id)
    expect(rows, no_publish(shop, order_id), observed=f"order {order_id}")
    message_id = rows[0][0]
    shop.mark_sent(message_id)  # the grader delivers it itself, twice
    armed = shop.faults.crash_at_insert("ledger")  # the pool process dies as it writes the effect
    try:
        first = lab.send(CONSUMER, message_id, order_id)
        lab.wait(first, 40.0)  # lost with its process (or, with acks_late, run again by the worker)
    finally:
        shop.faults.disarm()
    expect(
        not shop.faults.armed(armed),
        "apply_order never wrote the order's effect: it must INSERT one ledger row with the order's amount.",
        observed=f"apply_order: {lab.timeline.describe(first.id)}; ledger rows: {shop.effects(order_id)}",
    )
    # At-least-once: a message whose worker died before it finished is delivered again.
    again = lab.send(CONSUMER, message_id, order_id)
    lab.wait(again, 40.0)
    effects = shop.effects(order_id)
    observed = (
        f"ledger rows: {effects}; the copy whose process died: {lab.timeline.describe(first.id)}; "
        f"the redelivered copy: {lab.timeline.describe(again.id)}"
    )
    expect(
        effects == [1800],
        f"apply_order's process died after it recorded message {message_id} and before its effect; the "
        "redelivered message "
        + ("never applied the effect." if not effects else f"left {len(effects)} effects."),
        expected="one ledger row of 1800",
        observed=observed,
        hint="record the message id in the same transaction as the ledger row (one `with engine.begin()` "
        "block): if the process dies in between, both roll back and the redelivery applies it. Committed "
        "on its own first, the id says 'done' for an effect that never happened.",
    )
    expect(
        lab.timeline.state(again.id) == "SUCCESS",
        "The redelivered copy must succeed.",
        observed=observed,
    )


# -- ids, not blobs -----------------------------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.deadline(60)
@pytest.mark.rules("ids-not-blobs", needs=["relay-delivers"])
def test_messages_carry_ids_not_the_order(lab, shop, worker):
    """The message carries ids (a small body), not the order's row; the consumer reads the order"""
    shop.settle_outbox()
    order_id, _ = shop.place(lab, 3300, NOTE)
    relay(lab)
    sent = wait_deliveries(lab, shop, order_id)
    expect(sent, no_publish(shop, order_id), observed=f"order {order_id}")
    big = [p for p in sent if p["bytes"] > BODY_BOUND]
    expect(
        not big,
        "The message carries the order's data (its ~4 KB note came along): a blob on the wire that is "
        "stale by the time the consumer runs.",
        expected=f"a body under {BODY_BOUND} bytes: apply_order(message_id, order_id)",
        observed="; ".join(f"{p['bytes']} bytes, args {str(p['args'])[:120]}" for p in big),
        hint="publish the outbox row's id and the order's id; apply_order reads the order from the database.",
    )
    expect(
        shop.effects(order_id) == [3300],
        "apply_order must apply the order's effect from the database (one ledger row of its amount).",
        observed=f"ledger rows: {shop.effects(order_id)}",
    )


# -- the broker goes down while the relay publishes --------------------------------------------------------

OUTAGE_WAIT = 40.0  # the longest the broker stays down waiting for the relay's run to end


@pytest.mark.exclusive
@pytest.mark.points(2)
@pytest.mark.deadline(120)
@pytest.mark.rules("broker-outage", needs=["relay-delivers", "publish-then-mark"])
def test_broker_down_while_relay_publishes_then_delivered(lab, shop, worker):
    """The broker stops while the relay publishes and starts again: the next run delivers the order, once"""
    shop.settle_outbox()
    order_id, _ = shop.place(lab, 5100)
    queue = lab.ns.queue_name("relay")
    lab.start_worker(  # the relay's own worker, whose broker the grader takes away (the Valkey, or a proxy)
        "relay",
        through_proxy=True,
        concurrency=1,
        queues=[queue],
        settings={**faults.worker_settings(), "task_ignore_result": True},  # no result to store mid-outage
        env=shop.faults.env,
    )
    shop.faults.hold(CONSUMER)
    run = lab.send(RELAY, queue=queue)
    expect(
        shop.faults.wait_held(CONSUMER, min(30.0, lab.remaining()), unless_ended=run.id),
        no_publish(shop, order_id),
        observed=f"relay_outbox: {lab.timeline.describe(run.id)}; outbox rows: {shop.outbox(order_id)}",
    )
    with lab.broker_down(keep_data=True):  # the Valkey stopped (same port after), or the relay's link cut
        shop.faults.release(CONSUMER)  # the held publish goes on, against a broker that is gone
        ended = shop.faults.ended(run.id, min(OUTAGE_WAIT, lab.remaining()))
    expect(
        ended is not None,
        "relay_outbox did not return while the broker was down: it hangs on the publish.",
        observed=f"still running after {OUTAGE_WAIT:.0f} s without a broker",
        hint="let the publish fail (Celery gives up after its retry policy) and the task end with the error.",
    )
    outage = f"the relay's run during the outage ended {ended['state']}" + (
        f" ({ended['error']})" if ended.get("error") else ""
    )
    state = relay(lab)  # the broker is back: the next run, as the relay's beat entry would send it
    judge_once(
        lab,
        shop,
        order_id,
        5100,
        f"The broker went down while the relay published ({outage}), then came back",
        "a publish that raised sent nothing: leave the row unsent (let the error end the run, or stop and "
        f"retry later) so the next run publishes it; never mark a row whose publish failed. Next: {state}",
    )
