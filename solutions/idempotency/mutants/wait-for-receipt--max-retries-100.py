"""Mutant (wait-for-receipt): max_retries=100 at a 0.2 s countdown: 20 s of polling, shorter than a 30 s
claim.
"""

import httpx
import redis
from celery import Celery

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


def release(r: redis.Redis, name: str, token: str) -> None:
    """Delete the claim only if it is still ours: compare-and-delete in one step (WATCH/MULTI)."""
    with r.pipeline() as pipe:
        try:
            pipe.watch(name)
            if pipe.get(name) == token:
                pipe.multi()
                pipe.delete(name)
                pipe.execute()
        except redis.WatchError:
            pass  # it changed under us, so it is no longer ours to free


# Why: acks_late keeps the message until the task returns, so a worker killed mid-charge loses nothing.
@app.task(bind=True, acks_late=True, max_retries=100)
def charge(self, user_id: int, amount: int, idempotency_key: str) -> str:
    r, name = store(), key_for(idempotency_key)
    mine = f"claimed:{self.request.id}"  # a redelivered message keeps its task id: it knows its own claim
    # Why: SET NX is check-and-claim in ONE step, so of many copies racing exactly one wins; EX frees a key
    # whose owner vanished for good.
    if not r.set(name, mine, nx=True, ex=CLAIM_TTL):
        current = r.get(name)
        if current is not None and current.startswith("done:"):
            return current.removeprefix("done:")  # a duplicate answers with the first receipt
        if current != mine:  # another copy is charging right now (or its claim just lapsed): look again soon
            raise self.retry(countdown=POLL)
        # Our own claim: this message died mid-charge and came back. The gateway dedupes by the key, so
        # asking it again returns the first receipt instead of charging twice.
    try:
        receipt = gateway_charge(user_id, amount, idempotency_key)
    except GatewayError:
        release(r, name, mine)  # an error reply charged nothing: free the key so a retry can charge
        raise
    r.set(name, f"done:{receipt}", ex=RECEIPT_TTL)  # saved before the ack (acks_late)
    return receipt
