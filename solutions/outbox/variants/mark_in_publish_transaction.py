"""Variant: the relay marks the row and publishes inside one transaction that commits after the publish (a
crash before the commit rolls the mark back); the consumer writes the effect first and lets the dedupe
table's unique column roll the whole transaction back for a duplicate."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from celerylab.engine import databases

app = Celery("outbox")
engine = databases.sql_engine(Path(__file__).with_name("outbox.sqlite3"))

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
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, nullable=False),
    Column("sent_at", DateTime, nullable=True),
)
ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, nullable=False),
    Column("amount_cents", Integer, nullable=False),
)
processed_messages = Table(
    "processed_messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", Integer, nullable=False, unique=True),
)


def create_tables() -> None:
    metadata.create_all(engine)


def place_order(customer: str, total_cents: int, note: str = "") -> int:
    with engine.begin() as conn:
        result = conn.execute(insert(orders).values(customer=customer, total_cents=total_cents, note=note))
        order_id = result.inserted_primary_key[0]
        conn.execute(insert(outbox).values(order_id=order_id))
    return order_id


@app.task
def relay_outbox() -> int:
    published = 0
    while True:
        with engine.begin() as conn:
            row = conn.execute(
                select(outbox.c.id, outbox.c.order_id).where(outbox.c.sent_at.is_(None)).order_by(outbox.c.id)
            ).first()
            if row is None:
                return published
            conn.execute(update(outbox).where(outbox.c.id == row.id).values(sent_at=func.now()))
            apply_order.apply_async((row.id, row.order_id))  # the mark commits only after this returned
        published += 1


@app.task
def apply_order(message_id: int, order_id: int) -> str:
    try:
        with engine.begin() as conn:
            total = conn.execute(select(orders.c.total_cents).where(orders.c.id == order_id)).scalar_one()
            conn.execute(insert(ledger).values(order_id=order_id, amount_cents=total))
            conn.execute(insert(processed_messages).values(message_id=message_id))
    except IntegrityError:
        return "duplicate"
    return "applied"


if __name__ == "__main__":
    create_tables()
    print(f"tables made in {engine.url}")
