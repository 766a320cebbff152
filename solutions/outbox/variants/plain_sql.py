"""Variant: plain SQL through text() for the queries (SQLite and PostgreSQL both speak INSERT ... RETURNING
and ON CONFLICT DO NOTHING); the consumer learns "duplicate" from the row count, not an IntegrityError."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, text

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
    Column("message_id", Integer, primary_key=True),
)


def create_tables() -> None:
    metadata.create_all(engine)


def place_order(customer: str, total_cents: int, note: str = "") -> int:
    with engine.begin() as conn:
        order_id = conn.execute(
            text("INSERT INTO orders (customer, total_cents, note) VALUES (:c, :t, :n) RETURNING id"),
            {"c": customer, "t": total_cents, "n": note},
        ).scalar_one()
        conn.execute(text("INSERT INTO outbox (order_id) VALUES (:o)"), {"o": order_id})
    return order_id


@app.task
def relay_outbox() -> int:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, order_id FROM outbox WHERE sent_at IS NULL ORDER BY id")).all()
    for row in rows:
        apply_order.delay(row.id, row.order_id)
        with engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET sent_at = CURRENT_TIMESTAMP WHERE id = :m"), {"m": row.id})
    return len(rows)


@app.task
def apply_order(message_id: int, order_id: int) -> str:
    with engine.begin() as conn:
        claimed = conn.execute(
            text("INSERT INTO processed_messages (message_id) VALUES (:m) ON CONFLICT DO NOTHING"),
            {"m": message_id},
        ).rowcount
        if claimed != 1:
            return "duplicate"
        conn.execute(
            text(
                "INSERT INTO ledger (order_id, amount_cents) SELECT id, total_cents FROM orders WHERE id = :o"
            ),
            {"o": order_id},
        )
    return "applied"


if __name__ == "__main__":
    create_tables()
    print(f"tables made in {engine.url}")
