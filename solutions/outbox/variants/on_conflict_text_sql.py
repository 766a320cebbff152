"""Variant: plain SQL through text(): the claim is INSERT ... ON CONFLICT DO NOTHING (its rowcount says
whether this copy won), place_order drives its own transaction (begin, commit, rollback), and the relay
takes one unsent row at a time and publishes it by name with send_task."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, text

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
processed_messages = Table("processed_messages", metadata, Column("message_id", Integer, primary_key=True))


def create_tables() -> None:
    metadata.create_all(engine)


def place_order(customer: str, total_cents: int, note: str = "") -> int:
    conn = engine.connect()
    trans = conn.begin()
    try:
        oid = conn.execute(
            text("INSERT INTO orders (customer, total_cents, note) VALUES (:c, :t, :n) RETURNING id"),
            {"c": customer, "t": total_cents, "n": note},
        ).scalar_one()
        conn.execute(text("INSERT INTO outbox (order_id) VALUES (:o)"), {"o": oid})
        trans.commit()
    except Exception:
        trans.rollback()
        raise
    finally:
        conn.close()
    return oid


@app.task
def relay_outbox() -> int:
    sent = 0
    while True:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT id, order_id FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1")
            ).first()
        if row is None:
            return sent
        app.send_task("tasks.apply_order", args=[row.id, row.order_id])
        with engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET sent_at = CURRENT_TIMESTAMP WHERE id = :i"), {"i": row.id})
        sent += 1


@app.task
def apply_order(message_id: int, order_id: int) -> str:
    with engine.begin() as conn:
        claimed = conn.execute(
            text("INSERT INTO processed_messages (message_id) VALUES (:m) ON CONFLICT DO NOTHING"),
            {"m": message_id},
        ).rowcount
        if not claimed:
            return "duplicate"
        total = conn.execute(
            text("SELECT total_cents FROM orders WHERE id = :o"), {"o": order_id}
        ).scalar_one()
        conn.execute(
            text("INSERT INTO ledger (order_id, amount_cents) VALUES (:o, :a)"), {"o": order_id, "a": total}
        )
    return "applied"


if __name__ == "__main__":
    create_tables()
