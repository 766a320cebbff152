"""Mutant: the message id is committed in a transaction of its own, then the effect in another.

Duplicates and two copies at once are still absorbed (the primary key refuses the second claim), but a
consumer that dies between the two commits leaves the id saying "done" for an effect that never happened:
the redelivered message is taken for a duplicate and the order is never credited.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from celerylab.engine import databases

app = Celery("outbox")
engine = databases.sql_engine(Path(__file__).with_name("outbox.sqlite3"))  # the grade's database in a grade

metadata = MetaData()
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("customer", String(100), nullable=False),
    Column("total_cents", Integer, nullable=False),
    Column("note", Text, nullable=False, default=""),
)
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),  # the message's id: the consumer dedupes on it
    Column("order_id", Integer, nullable=False),
    Column("sent_at", DateTime, nullable=True),  # NULL: not published yet
)
ledger = Table(  # the effect: one row per order applied (no unique key: a second run would add a second row)
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, nullable=False),
    Column("amount_cents", Integer, nullable=False),
)
# Why: the primary key makes "seen this message" and "claim it" one atomic step; a SELECT first would race
processed_messages = Table(
    "processed_messages",
    metadata,
    Column("message_id", Integer, primary_key=True),
)


def create_tables() -> None:
    metadata.create_all(engine)


def place_order(customer: str, total_cents: int, note: str = "") -> int:
    # Why: the order and its outbox row commit together or not at all; publishing is the relay's job
    with engine.begin() as conn:
        order_id = conn.execute(
            insert(orders)
            .values(customer=customer, total_cents=total_cents, note=note)
            .returning(orders.c.id)
        ).scalar_one()
        conn.execute(insert(outbox).values(order_id=order_id))
    return order_id


@app.task
def relay_outbox() -> int:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.id, outbox.c.order_id).where(outbox.c.sent_at.is_(None))).all()
    for message_id, order_id in rows:
        # Why: publish first, then mark: a crash in between publishes again (a duplicate), never loses it;
        # a failed publish raises before the mark, so the row stays for the next run
        apply_order.delay(message_id, order_id)  # ids only: the consumer reads the order itself
        with engine.begin() as conn:
            conn.execute(update(outbox).where(outbox.c.id == message_id).values(sent_at=func.now()))
    return len(rows)


@app.task
def apply_order(message_id: int, order_id: int) -> str:
    try:
        with engine.begin() as conn:
            conn.execute(insert(processed_messages).values(message_id=message_id))
        with engine.begin() as conn:  # the effect in a transaction of its own, after the claim committed
            total = conn.execute(select(orders.c.total_cents).where(orders.c.id == order_id)).scalar_one()
            conn.execute(insert(ledger).values(order_id=order_id, amount_cents=total))
    except IntegrityError:
        return "duplicate"  # rolled back whole: the first copy's effect stands
    return "applied"


if __name__ == "__main__":
    create_tables()
    print(f"tables made in {engine.url}")
