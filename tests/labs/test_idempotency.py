"""Autograder: idempotency (labs/idempotency/README.md has the contract).

The learner's `charge` runs on real prefork workers and calls a payment gateway the grader owns (an HTTP
endpoint on the `http_stub` server). The gateway counts every call and every charge; verdicts come from
what it saw, from the tasks' results and from the workers' events, never from running the task in here.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Sequence

import pytest
from celery.result import AsyncResult

from celerylab.session import expect
from celerylab.timeline import DeadlineExceeded

COPIES = 8  # the same key sent at once in the concurrency test
HOLD_MAX = 10.0  # a held gateway reply is released after this at the latest
RELEASE_AFTER = 3.0  # the longest the concurrency test holds the first charge while copies pile up
REDELIVERY_WAIT = 12.0  # Redis: visibility_timeout 2 s + a 1 s restore sweep + a fresh worker's start


class Gateway:
    """A Stripe-like payment gateway (the contract is in the README).

    A new key charges and answers ``{"receipt": ...}``; a key it has charged before answers the same
    receipt without charging again; a key whose first request is still being processed gets 409.
    Tests can make the first request for a key fail (nothing charged) or hold its reply until released.
    """

    def __init__(self, stub) -> None:
        self.base_url = stub.base_url
        stub.handle("/charge", self._charge)
        self._cond = threading.Condition()
        self.calls: list[dict] = []  # every request body
        self.charges: list[dict] = []  # every time money moved
        self._receipts: dict[str, str] = {}
        self._inflight: set[str] = set()
        self._fail_first: dict[str, int] = {}
        self._holds: dict[str, threading.Event] = {}

    def fail_first(self, key: str, status: int = 503) -> None:
        self._fail_first[key] = status

    def hold(self, key: str) -> threading.Event:
        """Hold the reply to the first charge for ``key`` until the returned event is set."""
        self._holds[key] = event = threading.Event()
        return event

    def calls_for(self, key: str) -> list[dict]:
        with self._cond:
            return [c for c in self.calls if c.get("idempotency_key") == key]

    def charges_for(self, key: str) -> list[dict]:
        with self._cond:
            return [c for c in self.charges if c.get("idempotency_key") == key]

    def wait_charge(self, key: str, timeout: float) -> dict | None:
        with self._cond:
            self._cond.wait_for(lambda: self.charges_for(key), timeout)
            found = self.charges_for(key)
        return found[0] if found else None

    def release_all(self) -> None:
        for event in list(self._holds.values()):
            event.set()

    def _charge(self, request) -> tuple[int, dict]:
        try:
            body = request.json() or {}
        except ValueError:
            return 400, {"error": "the body must be JSON"}
        key = body.get("idempotency_key")
        with self._cond:
            self.calls.append(body)
            self._cond.notify_all()
            if key in self._fail_first:
                return self._fail_first.pop(key), {"error": "gateway unavailable, nothing charged"}
            if key is not None and key in self._inflight:
                return 409, {"error": "idempotency_key_in_use"}
            if key is not None and key in self._receipts:
                return 200, {"receipt": self._receipts[key], "replayed": True}
            receipt = f"rcpt_{len(self.charges) + 1}_{secrets.token_hex(3)}"
            self.charges.append({**body, "receipt": receipt})
            if key is not None:
                self._receipts[key] = receipt
                self._inflight.add(key)
            hold = self._holds.get(key)
            self._cond.notify_all()
        if hold is not None:
            hold.wait(HOLD_MAX)
        with self._cond:
            self._inflight.discard(key)
        return 200, {"receipt": receipt}


@pytest.fixture(scope="module")
def gateway(http_stub) -> Gateway:
    return Gateway(http_stub)


@pytest.fixture
def workers(lab, gateway):
    """Two workers, two pool processes each, on the default queue (reused across tests). Prefetch 1: a
    worker holds only what it runs, so a burst of copies spreads over all four processes."""
    settings = {"gateway_url": gateway.base_url}
    yield lab.workers(["a", "b"], concurrency=2, prefetch_multiplier=1, settings=settings)
    gateway.release_all()


def new_key() -> str:
    return f"order-{secrets.token_hex(4)}"


def finished(lab, results: Sequence[AsyncResult], timeout: float) -> bool:
    """True once every task is final (per the workers' events), False if the wait ran out."""
    try:
        lab.timeline.wait_final([r.id for r in results], min(timeout, lab.remaining()))
        return True
    except DeadlineExceeded:
        return False


def outcome(lab, result: AsyncResult) -> str:
    """``'rcpt_…'`` for a success, else the final state and the last error the workers reported."""
    state = lab.timeline.state(result.id)
    if state == "SUCCESS":
        return repr(result.get(timeout=5))
    tries = lab.timeline.attempts(result.id)
    error = next((a.exception for a in reversed(tries) if a.exception), None)
    return f"{state or 'never ran'}" + (f" ({error})" if error else "")


def tried_once(timeline, results: Sequence[AsyncResult]) -> int:
    """How many of these tasks have finished at least one attempt (success, retry or failure)."""
    return sum(1 for r in results if any(a.end is not None for a in timeline.attempts(r.id)))


def summary(lab, results: Sequence[AsyncResult]) -> str:
    counts = Counter(outcome(lab, r) for r in results)
    return ", ".join(f"{n} x {what}" for what, n in counts.most_common())


def gateway_text(gateway: Gateway, key: str) -> str:
    calls, charges = gateway.calls_for(key), gateway.charges_for(key)
    return f"the gateway got {len(calls)} call(s) and charged {len(charges)} time(s) for this key"


@pytest.mark.points(1)
@pytest.mark.deadline(15)
def test_new_key_charges_once(lab, workers, gateway):
    """A new key: one call to the gateway, with the key; SUCCESS with the gateway's receipt"""
    key = new_key()
    result = lab.send("charge", 42, 1999, key)
    lab.wait(result)
    charges = gateway.charges_for(key)
    expect(
        lab.timeline.state(result.id) == "SUCCESS" and len(charges) == 1,
        "charge(42, 1999, key) with a key never seen before should charge once and succeed.",
        expected="SUCCESS after exactly one charge",
        observed=f"{outcome(lab, result)}; {gateway_text(gateway, key)}",
        hint="call gateway_charge(user_id, amount, idempotency_key) and return its receipt.",
    )
    value = result.get(timeout=5)
    expect(
        value == charges[0]["receipt"],
        "charge should return the gateway's receipt id.",
        expected=repr(charges[0]["receipt"]),
        observed=repr(value),
    )
    sent = {k: charges[0].get(k) for k in ("user_id", "amount", "idempotency_key")}
    expect(
        sent == {"user_id": 42, "amount": 1999, "idempotency_key": key},
        "The gateway must get the user, the amount and the idempotency key as they were given.",
        expected=f"user_id=42, amount=1999, idempotency_key={key!r}",
        observed=repr(sent),
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
def test_repeat_returns_the_first_receipt(lab, workers, gateway):
    """The same key again, later: no second call to the gateway, and the same receipt back"""
    key = new_key()
    first = lab.send("charge", 7, 500, key)
    lab.wait(first)
    second = lab.send("charge", 7, 500, key)
    lab.wait(second)
    values = [outcome(lab, first), outcome(lab, second)]
    calls = len(gateway.calls_for(key))
    expect(
        values[0] == values[1] and values[0].startswith("'rcpt_") and calls == 1,
        "A repeated charge (a client retry, a redelivery) must be answered from your record with the "
        "first receipt: to the caller, a duplicate looks exactly like the original.",
        expected="both calls return the same receipt; 1 call to the gateway",
        observed=f"first: {values[0]}; second: {values[1]}; {gateway_text(gateway, key)}",
        hint='save the receipt under the key and return it for a duplicate, not "duplicate".',
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
def test_new_key_charges_again(lab, workers, gateway):
    """Two keys, same user and amount: two charges, two different receipts"""
    keys = [new_key(), new_key()]
    results = [lab.send("charge", 9, 250, k) for k in keys]
    lab.wait(results)
    values = [outcome(lab, r) for r in results]
    charged = [len(gateway.charges_for(k)) for k in keys]
    expect(
        charged == [1, 1] and values[0] != values[1] and all(v.startswith("'rcpt_") for v in values),
        "Deduplicate by the idempotency key only: the same user paying the same amount twice, with two "
        "keys, is two purchases.",
        expected="two charges, two different receipts",
        observed=f"receipts: {values}; charges per key: {charged}",
        hint="the record's key is the idempotency key, nothing else.",
    )


@pytest.mark.points(3)
@pytest.mark.deadline(25)
def test_duplicates_at_once_charge_once(lab, workers, gateway):
    """8 copies of one key at once on 2 workers x 2 processes: 1 call, 8 x the same receipt"""
    key = new_key()
    release = gateway.hold(key)  # the first charge answers only once the other copies have had their go
    results = [lab.send("charge", 3, 4200, key) for _ in range(COPIES)]
    first = gateway.wait_charge(key, min(10.0, lab.remaining()))
    if first is None:
        seen = summary(lab, results) if finished(lab, results, 0.5) else "the tasks are still running"
        expect(False, "None of the copies reached the gateway.", observed=seen)
    try:  # hold until every other copy has had one go (or RELEASE_AFTER): check-then-act races now
        lab.timeline.wait_for(
            lambda tl: tried_once(tl, results) >= COPIES - 1,
            min(RELEASE_AFTER, lab.remaining()),
            "the other copies",
        )
    except DeadlineExceeded:
        pass
    release.set()
    lab.wait(results)
    hosts = {a.hostname for r in results for a in lab.timeline.attempts(r.id)}
    calls = len(gateway.calls_for(key))
    values = {outcome(lab, r) for r in results}
    expect(
        calls == 1 and len(values) == 1 and next(iter(values)) == repr(first["receipt"]),
        f"{COPIES} copies of one charge ran at once in {len(hosts)} worker(s). Exactly one may reach the "
        "gateway; the others must wait for its receipt and return it.",
        expected=f"1 call to the gateway; {COPIES} x {first['receipt']!r}",
        observed=f"{gateway_text(gateway, key)}; results: {summary(lab, results)}",
        hint="`if not exists: charge; save` lets every copy pass the check before any saves. Claim the "
        "key atomically (SET key value NX EX ttl); a copy that loses the claim retries until the "
        "receipt is there.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(20)
def test_failure_before_charging_frees_the_key(lab, workers, gateway):
    """A gateway error charges nothing: the task fails, and the same key sent again charges"""
    key = new_key()
    gateway.fail_first(key, 503)
    failed = lab.send("charge", 5, 300, key)
    lab.wait(failed)
    expect(
        lab.timeline.state(failed.id) == "FAILURE" and not gateway.charges_for(key),
        "When the gateway answers an error, nothing was charged: the task should fail (raise "
        "GatewayError), not pretend it charged.",
        expected="FAILURE, nothing charged",
        observed=f"{outcome(lab, failed)}; {gateway_text(gateway, key)}",
    )
    again = lab.send("charge", 5, 300, key)
    done = finished(lab, [again], 8.0)
    expect(
        done and lab.timeline.state(again.id) == "SUCCESS" and len(gateway.charges_for(key)) == 1,
        "The customer tries again with the same key after a failure that charged nothing: it must "
        "charge now.",
        expected="SUCCESS after exactly one charge",
        observed=f"{outcome(lab, again) if done else 'still not finished after 8 s'}; "
        f"{gateway_text(gateway, key)}",
        hint="on GatewayError, delete your claim before re-raising (only if it is still yours), so the "
        "key is free again.",
    )


@pytest.mark.points(3)
@pytest.mark.deadline(40)
def test_worker_killed_mid_charge_charges_once(lab, workers, gateway):
    """Worker killed after the gateway charged, before the ack: redelivered, 1 charge, first receipt"""
    settings = {"gateway_url": gateway.base_url, **lab.ns.redelivery_settings(visibility_timeout=2)}
    queue = lab.ns.queue_name("crash")  # only the workers of this test take it
    doomed = lab.start_worker("crash", concurrency=1, queues=[queue], settings=settings)
    key = new_key()
    release = gateway.hold(key)
    result = lab.send("charge", 11, 9900, key, queue=queue)
    first = gateway.wait_charge(key, min(10.0, lab.remaining()))
    expect(
        first is not None, "The task never reached the gateway.", observed=lab.timeline.describe(result.id)
    )
    doomed.kill()  # SIGKILL, whole worker: the charge went through, the task never saw the receipt
    release.set()
    lab.start_worker("crash-2", concurrency=1, queues=[queue], settings=settings)
    done = finished(lab, [result], REDELIVERY_WAIT)
    tries = lab.timeline.attempts(result.id)
    acks_late = lab.task_options("charge").get("acks_late")
    expect(
        len(tries) >= 2,
        "The worker died mid-charge, and the message died with it: nothing ran the charge again, so the "
        "customer paid and never got a receipt.",
        expected="the message redelivered to the fresh worker",
        observed=f"{len(tries)} attempt(s) seen; your task has acks_late={acks_late}",
        hint="acks_late=True: ack after the task returns; an unfinished message comes back.",
    )
    expect(
        done and lab.timeline.state(result.id) == "SUCCESS",
        "The redelivered charge must finish: its own claim from before the crash is not someone else's.",
        expected="SUCCESS",
        observed=lab.timeline.describe(result.id) + f"; {gateway_text(gateway, key)}",
        hint="a redelivered message keeps its task id (self.request.id): store it in the claim and "
        "carry on when the claim is yours; the gateway dedupes by key.",
    )
    value, charged = result.get(timeout=5), gateway.charges_for(key)
    expect(
        len(charged) == 1 and value == first["receipt"],
        "Redelivered after a crash, the charge must not charge twice and must return the first receipt.",
        expected=f"1 charge; result {first['receipt']!r}",
        observed=f"{gateway_text(gateway, key)}; result {value!r}",
        hint="send the same idempotency_key to the gateway: it makes asking again safe.",
    )
