"""Variant: bound tasks with acks_late (a consumer that dies mid-effect is delivered again); the claim is a
savepoint inside the effect's transaction, and the relay reads a batch of rows and marks them one by one."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from celerylab.engine import databases

app = Celery("outbox")
engine = databases.sql_engine(Path(__file__).with_name("outbox.sqlite3"))
BATCH = 100

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
    Column("message_id", Integer, primary_key=True),
    Column("processed_at", DateTime, server_default=func.now()),
)


def create_tables() -> None:
    metadata.create_all(engine)


def place_order(customer: str, total_cents: int, note: str = "") -> int:
    with engine.connect() as conn, conn.begin():
        order_id = conn.execute(
            insert(orders).returning(orders.c.id),
            {"customer": customer, "total_cents": total_cents, "note": note},
        ).scalar_one()
        conn.execute(insert(outbox), {"order_id": order_id})
    return order_id


@app.task(bind=True, acks_late=True)
def relay_outbox(self) -> int:
    count = 0
    while True:
        with engine.connect() as conn:
            batch = conn.execute(
                select(outbox).where(outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(BATCH)
            ).all()
        for row in batch:
            apply_order.apply_async(kwargs={"message_id": row.id, "order_id": row.order_id})
            with engine.begin() as conn:
                conn.execute(update(outbox).where(outbox.c.id == row.id).values(sent_at=func.now()))
            count += 1
        if len(batch) < BATCH:
            return count


@app.task(bind=True, acks_late=True)
def apply_order(self, message_id: int, order_id: int) -> str:
    with engine.begin() as conn:
        try:
            with conn.begin_nested():
                conn.execute(insert(processed_messages).values(message_id=message_id))
        except IntegrityError:
            return "duplicate"
        order = conn.execute(select(orders).where(orders.c.id == order_id)).one()
        conn.execute(insert(ledger).values(order_id=order.id, amount_cents=order.total_cents))
    return "applied"


if __name__ == "__main__":
    create_tables()
    print(f"tables made in {engine.url}")
