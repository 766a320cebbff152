"""Autograder: idempotency (labs/idempotency/README.md has the contract).

The learner's `charge` runs on real prefork workers and calls a payment gateway the grader owns (an HTTP
server on 127.0.0.1). Its Redis store is reached through a proxy the grader owns too (`StoreSpy`): it
sees every command that touches a key's records, can make copies read a key at the same moment (so a
check-then-act race is caught on every run, not when timing allows), and can hand a claim to "another
copy" between two commands. Verdicts come from what the gateway and the store saw, from the tasks'
results and from the workers' events, never from running the task in here.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery.result import AsyncResult

from celerylab.engine.timeline import FINAL, DeadlineExceeded
from celerylab.grading.session import LabFailure, expect

COPIES = 8  # the same key sent at once in the concurrency test
HOLD_MAX = 10.0  # a held gateway reply is released after this at the latest
RELEASE_AFTER = 3.0  # the longest the concurrency test holds the first charge while copies pile up
BARRIER_WAIT = 3.0  # the longest a read of an armed key waits for a second copy's read
CLAIM_TTL = 30  # the contract's constants (seconds)
RECEIPT_TTL = 24 * 3600
RECEIPT_SLACK = 120  # a receipt's TTL, read soon after it was written, is within this of RECEIPT_TTL
POLL_MAX = 1.0  # a copy that finds another copy's claim looks again within this
COUNTDOWN_SLACK = 0.05  # seconds added to a measured retry countdown (see test_losers_poll_long_enough)
REDELIVERY_BOUND = 15.0  # rescue worker ready -> the killed message delivered again (Redis ~1-3 s)
LAPSE_MARGIN = 3.0  # stop judging the crash this long before the first claim could lapse
READS = frozenset(
    {"GET", "EXISTS", "MGET", "HGET", "HGETALL", "HMGET", "HEXISTS", "TYPE", "TTL", "PTTL", "STRLEN"}
)


# -- the store, through a proxy the grader owns ---------------------------------------------------------
def _resp_end(buf: bytes | bytearray, pos: int) -> int | None:
    """Where the RESP2/RESP3 value starting at ``pos`` ends, or None if it is not all there yet."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return None
    kind, head, after = chr(buf[pos]), bytes(buf[pos + 1 : nl]), nl + 2
    if kind in "+-:_,#(":
        return after
    if kind in "$!=":
        n = int(head)
        return after if n < 0 else (after + n + 2 if len(buf) >= after + n + 2 else None)
    if kind in "*~>%|":
        n = int(head) * (2 if kind in "%|" else 1)
        for _ in range(max(n, 0)):
            after = _resp_end(buf, after)
            if after is None:
                return None
        return after
    raise ValueError(f"not RESP: {bytes(buf[pos : pos + 20])!r}")


def _command(buf: bytearray) -> tuple[list[bytes], int] | None:
    """The first complete command in ``buf`` (its arguments) and where it ends."""
    if not buf:
        return None
    if buf[0:1] != b"*":  # an inline command
        nl = buf.find(b"\r\n")
        return (bytes(buf[:nl]).split(), nl + 2) if nl >= 0 else None
    end = _resp_end(buf, 0)
    if end is None:
        return None
    args, pos = [], buf.find(b"\r\n") + 2
    while pos < end:
        nl = buf.find(b"\r\n", pos)
        n = int(buf[pos + 1 : nl])
        args.append(bytes(buf[nl + 2 : nl + 2 + n]))
        pos = nl + 2 + n + 2
    return args, end


class Barrier:
    """Replies to reads of one key wait until ``parties`` connections' reads have been answered (or
    ``BARRIER_WAIT`` passed): the server has then answered every one of them before any copy can act."""

    def __init__(self, parties: int = 2) -> None:
        self.parties, self.conns = parties, set()
        self.cond = threading.Condition()
        self.released = False

    def arrive(self, conn: int) -> None:
        with self.cond:
            self.conns.add(conn)
            if len(self.conns) >= self.parties:
                self.released = True
                self.cond.notify_all()
            self.cond.wait_for(lambda: self.released, BARRIER_WAIT)
            self.released = True  # one round only: later reads pass at once


class StoreSpy:
    """A Redis proxy in front of the workers' result backend (the learner's ``store()``).

    It records every command that touches a watched key prefix, per connection; ``barrier(prefix)``
    makes the first reads of that key wait for each other; ``takeover(prefix, fn)`` runs ``fn`` (the
    grader writing "another copy's claim") at the first command touching the key: after the server has
    answered it if it is a read (or WATCH), before the server sees it if it is a write (DEL, EVAL...)."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        auth = parts.netloc.rpartition("@")[0]
        self.url = urlunsplit(parts._replace(netloc=(auth + "@" if auth else "") + f"127.0.0.1:{port}"))
        self._lock = threading.Lock()
        self._barriers: dict[bytes, Barrier] = {}
        self._takeovers: dict[bytes, Callable[[], None]] = {}
        self._log: list[tuple[bytes, int, str]] = []  # (prefix, connection, command) for watched prefixes
        self._watched: set[bytes] = set()
        self._ids = itertools.count(1)
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="celerylab-store-spy", daemon=True).start()

    def watch(self, prefix: str) -> None:
        with self._lock:
            self._watched.add(prefix.encode())

    def barrier(self, prefix: str, parties: int = 2) -> Barrier:
        self.watch(prefix)
        with self._lock:
            self._barriers[prefix.encode()] = barrier = Barrier(parties)
        return barrier

    def takeover(self, prefix: str, fn: Callable[[], None]) -> None:
        self.watch(prefix)
        with self._lock:
            self._takeovers[prefix.encode()] = fn

    def taken_over(self, prefix: str) -> bool:
        with self._lock:
            return prefix.encode() not in self._takeovers

    def commands(self, prefix: str) -> list[tuple[int, str]]:
        with self._lock:
            return [(c, name) for p, c, name in self._log if p == prefix.encode()]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                return
            self._sockets += [client, server]
            conn, pending = next(self._ids), deque()
            for target, args in (
                (self._up, (client, server, conn, pending)),
                (self._down, (server, client, pending)),
            ):
                threading.Thread(target=target, args=args, daemon=True).start()

    def _plan(self, conn: int, args: list[bytes]) -> tuple[Callable | None, Callable | None]:
        """What to do around this command: (before it is sent on, when its reply comes back)."""
        name = args[0].upper().decode(errors="replace") if args else ""
        with self._lock:
            hits = [p for p in self._watched if any(a.startswith(p) for a in args[1:])]
            for prefix in hits:
                flags = " NX" if name == "SET" and any(a.upper() == b"NX" for a in args[3:]) else ""
                self._log.append((prefix, conn, name + flags))
            for prefix in hits:
                fn = self._takeovers.pop(prefix, None)
                if fn is not None:
                    return (None, fn) if name in READS | {"WATCH"} else (fn, None)
            for prefix in hits:
                barrier = self._barriers.get(prefix)
                if barrier is not None and name in READS and not barrier.released:
                    return None, lambda b=barrier: b.arrive(conn)
        return None, None

    def _up(self, client: socket.socket, server: socket.socket, conn: int, pending: deque) -> None:
        buf = bytearray()
        try:
            while data := client.recv(65536):
                buf += data
                while (cmd := _command(buf)) is not None:
                    args, end = cmd
                    before, on_reply = self._plan(conn, args)
                    if before is not None:
                        before()
                    pending.append(on_reply)
                    server.sendall(bytes(buf[:end]))
                    del buf[:end]
        except (OSError, ValueError):
            pass
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _down(self, server: socket.socket, client: socket.socket, pending: deque) -> None:
        buf = bytearray()
        try:
            while data := server.recv(65536):
                buf += data
                while buf and (end := _resp_end(buf, 0)) is not None:
                    if buf[0:1] != b">":  # a RESP3 push answers no command
                        on_reply = pending.popleft() if pending else None
                        if on_reply is not None:
                            on_reply()
                    client.sendall(bytes(buf[:end]))
                    del buf[:end]
        except (OSError, ValueError):
            pass
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def store(lab_session):
    """The grader's own client on the learner's store (the real server, not the proxy)."""
    client = redis.Redis.from_url(lab_session.broker.backend_url, decode_responses=True, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture(scope="module")
def spy(lab_session):
    proxy = StoreSpy(lab_session.broker.backend_url)
    yield proxy
    proxy.close()


def record_name(lab, key: str) -> str:
    """``key_for(key)`` as the learner's module computes it: the namespace's prefix + ``charge:<key>``."""
    return f"{lab.ns.name}:charge:{key}"


def records(lab, store: redis.Redis, key: str) -> dict[str, tuple[str, str | None, int]]:
    """Every record of ``key`` (``key_for(key)`` or keys starting with it): name -> (type, value, pttl)."""
    out = {}
    for name in store.scan_iter(match=record_name(lab, key) + "*", count=1000):
        kind = store.type(name)
        out[name] = (kind, store.get(name) if kind == "string" else None, store.pttl(name))
    return out


def records_text(lab, recs: dict[str, tuple[str, str | None, int]], key: str) -> str:
    if not recs:
        return f"no record at key_for({key!r})"
    parts = []
    for name, (kind, value, pttl) in recs.items():
        short = name.removeprefix(record_name(lab, key)) or "key_for(key)"
        ttl = "no TTL" if pttl == -1 else f"TTL {pttl / 1000:.0f} s"
        shown = repr(value[:40]) if value is not None else kind
        parts.append(f"{short if short == 'key_for(key)' else 'key_for(key)' + short} = {shown}, {ttl}")
    return "; ".join(parts)


def commands_text(cmds: Sequence[tuple[int, str]]) -> str:
    counts = Counter(name for _, name in cmds)
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common()) or "none"


# -- the gateway ------------------------------------------------------------------------------------
class Gateway:
    """A Stripe-like payment gateway (the contract is in the README).

    A new key charges and answers ``{"receipt": ...}``; a key it has charged before answers the same
    receipt without charging again; a key whose first request is still being processed gets 409.
    Tests can make the first request for a key fail (nothing charged, after an optional hook), hold its
    reply until released, or charge and then drop the connection before answering.
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
        self._on_call: dict[str, Callable[[], None]] = {}
        self._holds: dict[str, threading.Event] = {}
        self._reset_after: set[str] = set()

    def fail_first(self, key: str, status: int = 503) -> None:
        self._fail_first[key] = status

    def on_call(self, key: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the first call for ``key`` arrives, before it is answered."""
        self._on_call[key] = fn

    def reset_after_charge(self, key: str) -> None:
        self._reset_after.add(key)

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

    def wait_calls(self, key: str, count: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: len(self.calls_for(key)) >= count, timeout)
            return len(self.calls_for(key))

    def release_all(self) -> None:
        for event in list(self._holds.values()):
            event.set()

    def _charge(self, request):
        try:
            body = request.json() or {}
        except ValueError:
            return 400, {"error": "the body must be JSON"}
        key = body.get("idempotency_key")
        if (hook := self._on_call.pop(key, None)) is not None:
            hook()
        with self._cond:
            self.calls.append(body)
            self._cond.notify_all()
            failing = self._fail_first.pop(key, None)
            if failing is None and key is not None and key in self._inflight:
                return 409, {"error": "idempotency_key_in_use"}
            if failing is None and key is not None and key in self._receipts:
                return 200, {"receipt": self._receipts[key], "replayed": True}
            if failing is None:
                receipt = f"rcpt_{len(self.charges) + 1}_{secrets.token_hex(3)}"
                self.charges.append({**body, "receipt": receipt})
                if key is not None:
                    self._receipts[key] = receipt
                    self._inflight.add(key)
                hold = self._holds.get(key)
                self._cond.notify_all()
        if failing is not None:
            return failing, {"error": "gateway unavailable, nothing charged"}
        if hold is not None:
            hold.wait(HOLD_MAX)
        with self._cond:
            self._inflight.discard(key)
        if key in self._reset_after:
            return "reset"  # charged, but the connection drops before the answer: an unknown outcome
        return 200, {"receipt": receipt}


@pytest.fixture(scope="module")
def gateway(http_stub) -> Gateway:
    return Gateway(http_stub)


def worker_settings(gateway: Gateway, spy: StoreSpy) -> dict:
    return {"gateway_url": gateway.base_url, "result_backend": spy.url}


@pytest.fixture
def workers(lab, gateway, spy):
    """Two workers, two pool processes each, on the default queue (reused across tests). Prefetch 1: a
    worker holds only what it runs, so a burst of copies spreads over all four processes."""
    settings = worker_settings(gateway, spy)
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


def settle(lab, results: Sequence[AsyncResult], timeout: float) -> None:
    """Give tasks the grader is done judging a bounded chance to finish, so the next test's workers are
    idle (a busy worker is replaced); not a verdict."""
    finished(lab, results, timeout)


def outcome(lab, result: AsyncResult) -> str:
    """``'rcpt_…'`` for a success, else the final state and the last error the workers reported."""
    state = lab.timeline.state(result.id)
    if state == "SUCCESS":
        return repr(lab.result(result, 5.0))
    tries = lab.timeline.attempts(result.id)
    error = next((a.exception for a in reversed(tries) if a.exception), None)
    return f"{state or 'never ran'}" + (f" ({error[:80]})" if error else "")


def tried_once(timeline, results: Sequence[AsyncResult]) -> int:
    """How many of these tasks have finished at least one attempt (success, retry or failure)."""
    return sum(1 for r in results if any(a.end is not None for a in timeline.attempts(r.id)))


def summary(lab, results: Sequence[AsyncResult]) -> str:
    counts = Counter(outcome(lab, r) for r in results)
    return ", ".join(f"{n} x {what}" for what, n in counts.most_common())


def gateway_text(gateway: Gateway, key: str) -> str:
    calls, charges = gateway.calls_for(key), gateway.charges_for(key)
    return f"the gateway got {len(calls)} call(s) and charged {len(charges)} time(s) for this key"


def attempts_text(lab, result: AsyncResult) -> str:
    tries = lab.timeline.attempts(result.id)
    kinds = Counter(a.outcome for a in tries)
    return f"{len(tries)} attempt(s) ({', '.join(f'{n} {k}' for k, n in kinds.items()) or 'none'})"


# -- the tests ------------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("new-key")
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
    value = lab.result(result)
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
@pytest.mark.rules("repeat-first-receipt", needs=["new-key"])
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
        hint="save the receipt under the key and return it for a duplicate, not a marker like 'duplicate'."
        if calls == 1
        else "save the receipt under the key when the charge succeeds and read it back before charging.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("new-key")
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


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("record-ttls", needs=["new-key"])
def test_records_expire(lab, workers, gateway, store):
    """While charging, the key's claim expires within 30 s; once charged, its receipt after 1 day"""
    key = new_key()
    release = gateway.hold(key)
    result = lab.send("charge", 4, 800, key)
    first = gateway.wait_charge(key, min(10.0, lab.remaining()))
    expect(
        first is not None, "The task never reached the gateway.", observed=lab.timeline.describe(result.id)
    )
    during = records(lab, store, key)
    release.set()
    lab.wait(result)
    after = records(lab, store, key)
    claims_ok = bool(during) and all(0 < pttl <= CLAIM_TTL * 1000 for _, _, pttl in during.values())
    expect(
        claims_ok,
        "While the gateway charges, the key must hold a claim that lapses by itself within CLAIM_TTL "
        "(30 s), so a copy that died for good cannot block the key forever.",
        expected=f"a record at key_for(key) with a TTL of at most {CLAIM_TTL} s",
        observed=f"while charging: {records_text(lab, during, key)}",
        hint="claim with SET key value NX EX CLAIM_TTL (one command: the TTL comes with the claim)."
        if during
        else "write the claim at key_for(idempotency_key) with store(), before calling the gateway.",
    )
    ttls = [pttl for _, _, pttl in after.values()]
    receipt_ok = bool(after) and all(pttl > 0 for pttl in ttls)
    receipt_ok = receipt_ok and any(
        (RECEIPT_TTL - RECEIPT_SLACK) * 1000 <= t <= RECEIPT_TTL * 1000 for t in ttls
    )
    expect(
        receipt_ok,
        "Once charged, the key's receipt must be kept for RECEIPT_TTL (1 day) and then forgotten.",
        expected=f"a record at key_for(key) with a TTL of {RECEIPT_TTL} s (and none without a TTL)",
        observed=f"after SUCCESS: {records_text(lab, after, key)}",
        hint="save the receipt with ex=RECEIPT_TTL (a SET without ex drops the claim's TTL).",
    )


@pytest.mark.points(3)
@pytest.mark.deadline(25)
@pytest.mark.rules("claim-atomic", "wait-for-receipt", needs=["new-key", "repeat-first-receipt"])
def test_duplicates_at_once_charge_once(lab, workers, gateway, spy):
    """8 copies of one key at once on 2 workers x 2 processes: 1 call, 8 x the same receipt"""
    key = new_key()
    name = record_name(lab, key)
    # Deterministic race: the first reads of the key are answered only once a second copy's read has been
    # answered too, so with a GET-then-SET (or EXISTS-then-charge) claim two copies always both see "free".
    barrier = spy.barrier(name)
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
    calls = gateway.calls_for(key)
    cmds = spy.commands(name)
    readers = len({c for c, n in cmds if n in READS})
    expect(
        len(calls) == 1,
        f"{COPIES} copies of one charge ran at once in {len(hosts)} worker(s); {len(calls)} of them called "
        "the gateway: more than one copy got past your check.",
        expected="1 call to the gateway; the other copies wait for its receipt",
        observed=f"{gateway_text(gateway, key)}; your copies sent the store: {commands_text(cmds)}; "
        f"results: {summary(lab, results)}",
        hint=f"copies in {readers} processes read the key, then acted (the grader lined up the first reads: "
        "all saw it free): check and claim in ONE step, e.g. SET key value NX EX ttl (or WATCH/MULTI, Lua)."
        if barrier.released and readers >= 2
        else "claim the key atomically (SET key value NX EX ttl) before calling the gateway.",
    )
    values = {r.id: outcome(lab, r) for r in results}
    wrong = Counter(v for v in values.values() if v != repr(first["receipt"]))
    gave_up = sum(n for v, n in wrong.items() if "MaxRetries" in v)
    expect(
        not wrong,
        "Exactly one copy charged (good), but the copies that lost the claim did not answer with its "
        "receipt: to the customer, every copy must look like the original.",
        expected=f"{COPIES} x {first['receipt']!r}",
        observed=", ".join(f"{n} x {v}" for v, n in wrong.most_common())
        + f" (retries: {retries_of(lab, results)})",
        hint="max_retries ran out while the first copy was still charging: allow retries to outlast a claim."
        if gave_up
        else "a copy that finds another copy's claim must `raise self.retry(countdown=0.2)` until "
        "the receipt is saved, then return that receipt.",
    )


def retries_of(lab, results: Sequence[AsyncResult]) -> int:
    return sum(1 for r in results for a in lab.timeline.attempts(r.id) if a.outcome == "retry")


def _eta(event) -> float | None:
    eta = event.get("eta")
    return datetime.fromisoformat(eta).timestamp() if eta else None


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("wait-for-receipt", needs=["claim-atomic", "new-key"])
def test_losers_poll_long_enough(lab, workers, gateway):
    """A copy that finds another copy's claim retries within 1 s, and has retries left for 30 s"""
    key = new_key()
    release = gateway.hold(key)
    owner = lab.send("charge", 6, 600, key)
    sent = [owner]
    try:
        first = gateway.wait_charge(key, min(10.0, lab.remaining()))
        expect(
            first is not None, "The task never reached the gateway.", observed=lab.timeline.describe(owner.id)
        )
        poller = lab.send("charge", 6, 600, key)  # finds the owner's claim: the gateway holds its reply
        sent.append(poller)

        def retried(tl) -> bool:
            tries = tl.attempts(poller.id)
            ended = bool(tries) and tries[0].end is not None
            return tl.state(poller.id) in FINAL or (ended and len(tl.events("task-received", poller.id)) >= 2)

        with contextlib.suppress(LabFailure):
            lab.wait_until(retried, "the second copy's retry", min(5.0, lab.remaining()))
        tries = lab.timeline.attempts(poller.id)
        received = lab.timeline.events("task-received", poller.id)
        again = received[1] if len(received) >= 2 and tries and tries[0].end is not None else None
        expect(
            again is not None and tries[0].outcome == "retry",
            "A second copy of the key ran while the first was still charging: it should retry (look again "
            "soon) until the receipt is there, not answer now.",
            expected="its first attempt ends in RETRY",
            observed=f"{outcome(lab, poller)}, {attempts_text(lab, poller)}; {gateway_text(gateway, key)}"
            if tries and tries[0].end is not None
            else f"its first attempt did not end within 5 s ({lab.timeline.describe(poller.id)})",
            hint="raise self.retry(countdown=0.2) when the claim is someone else's; do not sleep in the task."
            if tries and tries[0].end is not None
            else "a task that waits inside itself (time.sleep loop) holds a worker process: retry instead.",
        )
        eta = _eta(again)
        # The countdown it asked for, at most: its retry message's eta minus the moment the worker sent that
        # message (its task-sent event, just after the eta was computed; else the attempt's end). Unlike
        # the attempt's start, this does not grow with how long the attempt took on a busy machine.
        resent = lab.timeline.events("task-sent", poller.id)[1:]
        asked = (eta - (resent[0].timestamp if resent else tries[0].end)) if eta else 0.0
        expect(
            asked <= POLL_MAX,
            f"The second copy retried, but its next look is due {asked:.1f} s later: the customer waits "
            "that long after the first copy is done.",
            expected=f"a retry countdown of at most {POLL_MAX:g} s",
            observed=f"next attempt due {asked:.1f} s after the retry was sent; charge has "
            f"default_retry_delay={lab.task_options('charge').get('default_retry_delay')}",
            hint="self.retry(countdown=0.2): without a countdown, Celery waits default_retry_delay (180 s).",
        )
        # The budget, judged by behaviour: a copy that has already looked `needed - 1` times (about CLAIM_TTL
        # of countdowns) must still be allowed one more retry. Celery refuses a retry once request.retries
        # >= max_retries, so this passes exactly when max_retries >= needed. `asked` errs low by the
        # worker's send time (ms), so COUNTDOWN_SLACK is added back: at a 0.2 s countdown any budget under
        # 24 s (e.g. 100 x 0.2 s) fails whatever that error, and an exact 30 s one passes unless the send
        # took over 50 ms (the reference allows 60 s). No randomness involved.
        countdown = max(asked, 0.0) + COUNTDOWN_SLACK
        needed = math.ceil(CLAIM_TTL / countdown)
        late = lab.send("charge", 6, 600, key, retries=needed - 1)
        sent.append(late)
        with contextlib.suppress(LabFailure):
            lab.wait_until(
                lambda tl: any(a.end is not None for a in tl.attempts(late.id)),
                "the late copy's attempt",
                min(5.0, lab.remaining()),
            )
        late_tries = lab.timeline.attempts(late.id)
        expect(
            late_tries and late_tries[0].outcome == "retry",
            f"A copy that had already looked {needed - 1} times ({needed - 1} x {countdown:.2f} s, about "
            "CLAIM_TTL) gave up: a claim may be held for 30 s, so its copies must be able to wait that long.",
            expected=f"a retry (max_retries >= {needed} at a {countdown:.2f} s countdown, or None)",
            observed=f"{outcome(lab, late)}; charge has max_retries="
            f"{lab.task_options('charge').get('max_retries')}",
            hint=f"max_retries >= CLAIM_TTL / countdown, e.g. max_retries={math.ceil(CLAIM_TTL / 0.2) + 10} "
            "for countdown=0.2.",
        )
    finally:
        release.set()
        settle(lab, sent, 3.0)


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("error-frees-key", needs=["new-key"])
def test_failure_before_charging_frees_the_key(lab, workers, gateway):
    """A gateway error charges nothing: the task fails, and the same key sent again charges"""
    key = new_key()
    gateway.fail_first(key, 503)
    failed = lab.send("charge", 5, 300, key)
    lab.wait(failed)
    tries = lab.timeline.attempts(failed.id)
    expect(
        lab.timeline.state(failed.id) == "FAILURE" and not gateway.charges_for(key),
        "When the gateway answers an error, nothing was charged: the task should fail (raise "
        "GatewayError) at once, not retry inside itself and not pretend it charged.",
        expected="FAILURE after 1 call, nothing charged",
        observed=f"{outcome(lab, failed)} after {attempts_text(lab, failed)}; {gateway_text(gateway, key)}",
        hint="do not list GatewayError in autoretry_for (nor self.retry on it): re-raise it."
        if len(tries) > 1
        else "re-raise the GatewayError after freeing the key.",
    )
    again = lab.send("charge", 5, 300, key)
    done = finished(lab, [again], 8.0)
    expect(
        done and lab.timeline.state(again.id) == "SUCCESS" and len(gateway.charges_for(key)) == 1,
        "The customer tries again with the same key after a failure that charged nothing: it must "
        "charge now.",
        expected="SUCCESS after exactly one charge",
        observed=f"{outcome(lab, again) if done else 'still not finished after 8 s'}, "
        f"{attempts_text(lab, again)}; {gateway_text(gateway, key)}",
        hint="on GatewayError, delete your claim before re-raising (only if it is still yours), so the "
        "key is free again.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("release-own-claim", needs=["record-ttls"])
def test_release_only_your_own_claim(lab, workers, gateway, store, spy):
    """A claim that changed hands during the call: the gateway error does not delete the new owner's"""
    key = new_key()
    name = record_name(lab, key)
    foreign = f"claimed:another-copy-{secrets.token_hex(4)}"
    found: dict[str, tuple] = {}

    def take_over() -> None:  # your claim lapsed while the gateway was slow, and another copy claimed the key
        for rec in found:
            store.set(rec, foreign, keepttl=True)

    def before_error() -> None:  # the gateway got the call: the claim is written, find it, arm the takeover
        found.update(records(lab, store, key))
        spy.takeover(name, take_over)

    gateway.on_call(key, before_error)
    gateway.fail_first(key, 503)
    result = lab.send("charge", 8, 700, key)
    try:
        with contextlib.suppress(LabFailure):  # judged below: whatever happens after its first attempt
            lab.wait_until(
                lambda tl: any(a.end is not None for a in tl.attempts(result.id)),
                "the first attempt to end",
                min(8.0, lab.remaining()),
            )
        expect(
            found,
            "When the gateway got the call, the key had no record: nothing claimed it.",
            expected="a claim at key_for(key) while the gateway charges",
            observed=f"no record at key_for({key!r}) when the gateway got the call",
        )
        after = records(lab, store, key)
        cmds = [n for _, n in spy.commands(name)]
        moved = spy.taken_over(name)
        kept = all(
            after.get(rec, (None, None, 0))[1] == (foreign if moved else found[rec][1]) for rec in found
        )
        deleted = [rec for rec in found if rec not in after]
        expect(
            kept,
            "Your claim lapsed while the gateway was slow and another copy claimed the key (the grader "
            "wrote it). On the gateway's error your task removed that other copy's claim.",
            expected="the other copy's claim still there after your task failed",
            observed=f"your task sent after the error: {', '.join(cmds) or 'nothing'}; now: "
            f"{records_text(lab, after, key)}",
            hint="compare-and-delete in ONE step: a Lua script (if GET == mine then DEL) or "
            "WATCH/GET/MULTI/DEL/EXEC; a GET then a DEL is check-then-act."
            if any(n in READS for n in cmds) and deleted
            else "delete the claim only if it still holds YOUR token (Lua compare-and-delete, WATCH/MULTI).",
        )
    finally:
        if found:  # the grader's fake claim: let a task that retries finish
            with contextlib.suppress(redis.RedisError):
                store.delete(*found)
        settle(lab, [result], 3.0)


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("keep-claim-on-unknown", needs=["record-ttls"])
def test_unknown_outcome_keeps_the_claim(lab, workers, gateway, store):
    """The gateway charged but the connection dropped before its answer: the claim is kept"""
    key = new_key()
    during: dict[str, tuple] = {}
    gateway.on_call(key, lambda: during.update(records(lab, store, key)))
    gateway.reset_after_charge(key)
    result = lab.send("charge", 12, 1200, key)
    lab.wait(result)
    after = records(lab, store, key)
    state = lab.timeline.state(result.id)
    charges = gateway.charges_for(key)
    expect(
        len(charges) == 1 and (state == "FAILURE" or outcome(lab, result) == repr(charges[0]["receipt"])),
        "The gateway charged, then the connection dropped: your task cannot know whether money moved. It "
        "may fail, or retry as the same task (the gateway then answers the first receipt); nothing else.",
        expected="FAILURE, or SUCCESS with the first receipt; 1 charge",
        observed=f"{outcome(lab, result)}, {attempts_text(lab, result)}; {gateway_text(gateway, key)}",
    )
    expect(
        during,
        "Your task called the gateway without a claim on the key: nothing shows a charge is under way.",
        expected="a claim at key_for(key) while the gateway charges",
        observed=f"no record at key_for({key!r}) when the gateway got the call",
    )
    expect(
        after,
        "The gateway charged, then the connection dropped (not a GatewayError: an httpx error). Money may "
        "have moved, yet your task deleted its claim: a new copy would charge again if the gateway forgot.",
        expected="the claim kept at key_for(key) (it lapses after CLAIM_TTL, or the same task settles it)",
        observed=f"{outcome(lab, result)}; while charging: {records_text(lab, during, key)}; now: none",
        hint="free the key only on GatewayError (an error reply: nothing charged), not on any exception, "
        "in a finally, or on httpx errors.",
    )


@pytest.mark.points(3)
@pytest.mark.deadline(45)
@pytest.mark.rules("acks-late", "own-claim", needs=["new-key"])
def test_worker_killed_mid_charge_charges_once(lab, workers, gateway, spy):
    """Worker killed after the gateway charged, before the ack: redelivered, 1 charge, first receipt"""
    settings = worker_settings(gateway, spy)
    queue = lab.ns.queue_name("crash")  # only the workers of this test take it
    doomed = lab.start_worker(
        "crash", concurrency=1, prefetch_multiplier=1, queues=[queue], settings=settings
    )
    key = new_key()
    release = gateway.hold(key)
    result = lab.send("charge", 11, 9900, key, queue=queue)
    first = gateway.wait_charge(key, min(10.0, lab.remaining()))
    expect(
        first is not None, "The task never reached the gateway.", observed=lab.timeline.describe(result.id)
    )
    lapse = time.monotonic() + CLAIM_TTL - LAPSE_MARGIN  # the claim was written before this charge
    doomed.crash()  # SIGKILL, whole worker: the charge went through, the task never saw the receipt
    release.set()
    # The rescue sweeps unacked messages back after 2 s, every 1 s; a short mutex expiry, so a sweep lock
    # a killed worker might hold cannot keep it from sweeping (kombu's default expiry is 300 s).
    rescue_settings = {**settings, **lab.ns.redelivery_settings(visibility_timeout=2)}
    if lab.broker.is_redis:
        rescue_settings["broker_transport_options"]["unacked_mutex_expire"] = 1
    rescue = lab.start_worker("crash-2", concurrency=1, queues=[queue], settings=rescue_settings)
    try:
        with contextlib.suppress(DeadlineExceeded):
            lab.timeline.wait_for(
                lambda tl: len(tl.attempts(result.id)) >= 2,
                min(REDELIVERY_BOUND, lab.remaining()),
                "redelivery",
            )
        tries = lab.timeline.attempts(result.id)
        acks_late = lab.task_options("charge").get("acks_late")
        expect(
            len(tries) >= 2,
            "The worker died mid-charge (kill -9), and the message died with it: the customer paid and "
            "the task never finished."
            if not acks_late
            else "charge has acks_late=True, yet the killed message did not come back to the fresh worker.",
            expected=f"the message delivered again to the fresh worker within {REDELIVERY_BOUND:.0f} s",
            observed=f"{len(tries)} attempt(s) seen; charge has acks_late={acks_late}",
            hint="acks_late=True: the worker acknowledges only when the task returns, so an unfinished "
            "message comes back."
            if not acks_late
            else "nothing in your code stops it; the machine may be overloaded: grade again, and report "
            "it if it repeats.",
        )
        with contextlib.suppress(DeadlineExceeded):
            lab.timeline.wait_for(
                lambda tl: tl.state(result.id) in FINAL,
                max(0.1, min(lapse - time.monotonic(), lab.remaining())),
                "the redelivered charge",
            )
        state = lab.timeline.state(result.id)
        tries = lab.timeline.attempts(result.id)
        polls = sum(1 for a in tries[1:] if a.outcome == "retry")
        expect(
            state == "SUCCESS",
            f"The message came back, but it took its own claim from before the crash for another copy's: "
            f"it retried {polls} times, waiting for a receipt only itself could fetch."
            if polls
            else "The redelivered charge must finish: its own claim from before the crash is not "
            "someone else's.",
            expected=f"SUCCESS within {CLAIM_TTL - LAPSE_MARGIN:.0f} s of the charge (its claim still held)",
            observed=lab.timeline.describe(result.id) + f"; {gateway_text(gateway, key)}",
            hint="a redelivered message keeps its task id (self.request.id): put it in the claim and carry "
            "on when the claim is yours; the gateway dedupes by key.",
        )
        value, charged = lab.result(result), gateway.charges_for(key)
        expect(
            len(charged) == 1 and value == first["receipt"],
            "Redelivered after a crash, the charge must not charge twice and must return the first receipt.",
            expected=f"1 charge; result {first['receipt']!r}",
            observed=f"{gateway_text(gateway, key)}; result {value!r}",
            hint="send the same idempotency_key to the gateway: it makes asking again safe.",
        )
    finally:
        rescue.stop()  # its 2 s visibility timeout would re-queue other workers' late-acked messages too
