"""Variant: a redis-py Lock (SET NX PX with a token; release is its own Lua compare-and-delete) on a
separate key, `key_for(key) + ":lock"`, with the task id as the token; the receipt is a plain value
at `key_for(key)`; shared_task with its options on a Task base class.
"""

import httpx
import redis
from celery import Celery, Task, shared_task
from redis.exceptions import LockNotOwnedError

app = Celery("idempotency")  # the kit supplies broker, backend and gateway_url; keep this line as it is

CLAIM_TTL = 30  # seconds: a claim whose owner vanished lapses after this
RECEIPT_TTL = 24 * 3600  # seconds: how long a finished charge is remembered
POLL = 0.2  # seconds between looks while another copy is charging


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


class ChargeTask(Task):
    acks_late = True
    max_retries = None  # poll until the receipt is there; the claim lapses after CLAIM_TTL anyway


@shared_task(bind=True, base=ChargeTask)
def charge(self, user_id: int, amount: int, idempotency_key: str) -> str:
    r, name = store(), key_for(idempotency_key)
    receipt = r.get(name)
    if receipt:
        return receipt
    lock = r.lock(name + ":lock", timeout=CLAIM_TTL)
    token = self.request.id
    if not lock.acquire(blocking=False, token=token):
        if r.get(name + ":lock") != token:  # not our own claim from before a crash
            raise self.retry(countdown=0.2)
        lock.local.token = token.encode()
    try:
        receipt = gateway_charge(user_id, amount, idempotency_key)
    except GatewayError:
        try:
            lock.release()
        except LockNotOwnedError:
            pass  # it lapsed and someone else holds it now: not ours to free
        raise
    r.set(name, receipt, ex=RECEIPT_TTL)
    try:
        lock.release()
    except LockNotOwnedError:
        pass
    return receipt
