"""The outbox: an order and its message in one transaction, a relay that publishes, a consumer that dedupes.

labs/outbox/README.md has the contract. `python tasks.py` makes the tables in ./outbox.sqlite3.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, insert, select
from sqlalchemy.exc import IntegrityError  # noqa: F401 (what a duplicate INSERT of a unique key raises)

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
# TODO: the dedupe table `processed_messages`, keyed by the message id


def create_tables() -> None:
    metadata.create_all(engine)


def place_order(customer: str, total_cents: int, note: str = "") -> int:
    with engine.begin() as conn:
        order_id = conn.execute(
            insert(orders)
            .values(customer=customer, total_cents=total_cents, note=note)
            .returning(orders.c.id)
        ).scalar_one()
    with engine.begin() as conn:  # TODO: the order and its outbox row must commit together, or not at all
        conn.execute(insert(outbox).values(order_id=order_id))
    return order_id


@app.task
def relay_outbox() -> int:
    # TODO: publish apply_order for every outbox row not yet sent, then mark it sent; return how many
    return 0


@app.task
def apply_order(message_id: int, order_id: int) -> str:
    # TODO: apply each message once (record message_id in processed_messages, in this same transaction)
    with engine.begin() as conn:
        total = conn.execute(select(orders.c.total_cents).where(orders.c.id == order_id)).scalar_one()
        conn.execute(insert(ledger).values(order_id=order_id, amount_cents=total))
    return "applied"


if __name__ == "__main__":
    create_tables()
    print(f"tables made in {engine.url}")
