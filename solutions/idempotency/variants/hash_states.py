"""Variant: one record per key with the state machine spelled out (`pending:<task id>` / `charged:<receipt>`),
the claim with redis-py's `set(..., nx=True, ex=...)` on one line and `get=True` to read the old value in
the same command; retries on transport errors too (the same task id finds its own claim and asks the
gateway again, which answers the first receipt); release through WATCH/MULTI via `r.transaction`.
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


def free_if_mine(r: redis.Redis, name: str, token: str) -> None:
    def attempt(pipe: redis.client.Pipeline) -> None:
        if pipe.get(name) == token:
            pipe.multi()
            pipe.delete(name)

    r.transaction(attempt, name)


@app.task(
    bind=True,
    acks_late=True,
    max_retries=200,
    autoretry_for=(httpx.TransportError,),
    retry_kwargs={"countdown": 0.5, "max_retries": 3},
)
def charge(self, user_id: int, amount: int, idempotency_key: str) -> str:
    r, name = store(), key_for(idempotency_key)
    token = f"pending:{self.request.id}"
    previous = r.set(name, token, nx=True, ex=CLAIM_TTL, get=True)  # SET NX GET: the old value, atomically
    if previous is not None:
        state, _, value = previous.partition(":")
        if state == "charged":
            return value
        if previous != token:
            raise self.retry(countdown=0.15, max_retries=400)
    try:
        receipt = gateway_charge(user_id, amount, idempotency_key)
    except GatewayError:
        free_if_mine(r, name, token)
        raise
    r.set(name, f"charged:{receipt}", ex=RECEIPT_TTL)
    return receipt
