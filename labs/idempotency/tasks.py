"""Lab: idempotency. Read README.md in this folder first.

This is the cheat sheet's §6 `charge`, made runnable. Copies sent at once all call the gateway; a copy
sent later answers "duplicate" instead of the receipt; a worker killed mid-charge takes the message along.
Fix `charge` to meet the contract in the README; `celerylab grade idempotency` tells you how close you are.
"""

import httpx
import redis
from celery import Celery

app = Celery("idempotency")  # the kit supplies broker, backend and gateway_url; keep this line as it is

CLAIM_TTL = 30  # seconds: a claim whose owner vanished lapses after this
RECEIPT_TTL = 24 * 3600  # seconds: how long a finished charge is remembered


class GatewayError(Exception):
    """The gateway answered with an error: nothing was charged."""


def gateway_charge(user_id: int, amount: int, idempotency_key: str) -> str:
    """POST the charge to the payment gateway (given; keep it): the receipt id, or GatewayError."""
    body = {"user_id": user_id, "amount": amount, "idempotency_key": idempotency_key}
    reply = httpx.post(f"{app.conf.gateway_url}/charge", json=body, timeout=5)
    if reply.status_code != 200:
        raise GatewayError(f"{reply.status_code} {reply.text}")
    return reply.json()["receipt"]


_store: redis.Redis | None = None


def store() -> redis.Redis:
    """The Redis for your dedup records: the kit's result backend (given; one client per process)."""
    global _store
    if _store is None:
        _store = redis.Redis.from_url(app.conf.result_backend, decode_responses=True)
    return _store


def key_for(idempotency_key: str) -> str:
    """The record's key, inside the kit's namespace so a grade cleans it up (given)."""
    prefix = (app.conf.result_backend_transport_options or {}).get("global_keyprefix", "")
    return f"{prefix}charge:{idempotency_key}"


def already_processed(idempotency_key: str) -> bool:
    return store().exists(key_for(idempotency_key)) == 1


def save_receipt(idempotency_key: str, receipt: str) -> None:
    store().set(key_for(idempotency_key), receipt, ex=RECEIPT_TTL)


# TODO: claim the key atomically, answer duplicates with the first receipt, survive a crash, free it on error.
@app.task(bind=True)
def charge(self, user_id: int, amount: int, idempotency_key: str) -> str:
    if already_processed(idempotency_key):
        return "duplicate"
    result = gateway_charge(user_id, amount, idempotency_key)
    save_receipt(idempotency_key, result)
    return result
