"""Autograder: retries with backoff (labs/retries/README.md has the contract).

The learner's `fetch` runs on a real prefork worker and calls a scripted HTTP server the grader owns;
verdicts come from what that server saw and from the workers' events (attempts, gaps, final state).
"""

import pytest

from celerylab.engine.brokers import free_port
from celerylab.engine.runtime import RANDOM
from celerylab.grading.session import expect

MAX_RETRIES = 3
CAP = 2.0  # retry_backoff_max
BOUNDS = [min(CAP, 2.0**n) for n in range(MAX_RETRIES)]  # the longest allowed wait before retry n+1
SLACK = 0.75  # scheduling on a busy 2-core machine; countdowns are whole seconds, so 2 vs 4 s stays clear
REQUEST_TIMEOUT = 1.0


@pytest.fixture
def worker(lab):
    return lab.worker(concurrency=4)


@pytest.fixture
def maxed_queue(lab) -> str:
    """A queue only the pinned worker consumes: a retry goes back to the queue it came from, so no attempt
    of the cap test can land on the ordinary worker (whose draws are random), and no attempt of another
    test on this one."""
    queue = lab.ns.queue_name("maxed")
    lab.worker("maxed", concurrency=4, queues=[queue], settings={RANDOM: "max"})
    return queue


def attempts_text(lab, result, hits: int | None = None) -> str:
    """What happened, from the worker's events and (with ``hits``) what the server saw."""
    tries = lab.timeline.attempts(result.id)
    text = f"{len(tries)} attempt(s), final state {lab.timeline.state(result.id)}" + (
        f", last error: {tries[-1].exception[:90]}" if tries and tries[-1].exception else ""
    )
    if hits is not None:
        text += f"; the server saw {hits} request(s)"
        if hits > len(tries):
            text += " (more requests than attempts: the task retries inside itself, not through Celery)"
    return text


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("success-2xx")
def test_success_on_first_try(lab, worker, http_stub):
    """A 200 reply: one request, SUCCESS, the reply's JSON as the result"""
    url = http_stub.script("/ok", [200])
    result = lab.send("fetch", url)
    lab.wait(result)
    expect(
        lab.timeline.state(result.id) == "SUCCESS",
        "fetch(url) of a healthy server should succeed.",
        expected="SUCCESS",
        observed=attempts_text(lab, result, len(http_stub.hits("/ok"))),
    )
    value = lab.result(result)
    expect(
        value == {"path": "/ok", "attempt": 1, "status": 200},
        "fetch should return the reply's JSON body.",
        expected="{'path': '/ok', 'attempt': 1, 'status': 200}",
        observed=repr(value),
    )
    expect(
        len(http_stub.hits("/ok")) == 1,
        "A healthy server should be called once.",
        observed=f"{len(http_stub.hits('/ok'))} requests",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("no-retry-4xx")
def test_client_error_fails_at_once(lab, worker, http_stub):
    """A 404 is not retried: one request, then FAILURE"""
    url = http_stub.script("/missing", [404])
    result = lab.send("fetch", url)
    lab.wait(result)
    hits = len(http_stub.hits("/missing"))
    expect(
        lab.timeline.state(result.id) == "FAILURE" and hits == 1,
        "A 4xx means the request itself is wrong; asking again cannot help.",
        expected="FAILURE after exactly 1 request",
        observed=f"{attempts_text(lab, result)}; {hits} request(s)",
        hint="raise an exception for 4xx that is NOT in autoretry_for.",
    )


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("retry-5xx")
def test_retries_server_errors_until_success(lab, worker, http_stub):
    """503, 502, then 200: retried twice, then SUCCESS"""
    url = http_stub.script("/flaky", [503, 502, 200])
    result = lab.send("fetch", url)
    lab.wait(result)
    tries = lab.timeline.attempts(result.id)
    expect(
        lab.timeline.state(result.id) == "SUCCESS" and len(tries) == 3,
        "A 5xx is worth retrying: the server may recover.",
        expected="3 attempts (503, 502, 200), then SUCCESS",
        observed=attempts_text(lab, result, len(http_stub.hits("/flaky"))),
        hint="httpx does not raise on a 5xx by itself: raise an exception for 5xx and let Celery retry it "
        "(autoretry_for, or self.retry).",
    )


@pytest.mark.rules("retry-connection")
@pytest.mark.points(1)
@pytest.mark.deadline(20)
def test_retries_connection_errors(lab, worker, http_stub):
    """A connection reset, then 200: retried; a refused connection: retried too"""
    url = http_stub.script("/reset", ["reset", 200])
    reset = lab.send("fetch", url)
    refused = lab.send("fetch", f"http://127.0.0.1:{free_port()}/refused")  # nothing listens there
    lab.wait_until(
        lambda tl: (
            len([a for a in tl.attempts(refused.id) if a.end is not None]) >= 2
            or tl.state(refused.id) in ("SUCCESS", "FAILURE")
        ),
        "a second attempt at the refused URL",
    )
    lab.wait(reset)
    tries = lab.timeline.attempts(reset.id)
    hint = (
        "a dropped connection raises httpx.RemoteProtocolError or ReadError, a refused one ConnectError; "
        "httpx.TransportError is the parent of all of them (NetworkError misses RemoteProtocolError)."
    )
    expect(
        lab.timeline.state(reset.id) == "SUCCESS" and len(tries) == 2,
        "A dropped connection is worth retrying.",
        expected="2 attempts (reset, 200), then SUCCESS",
        observed=attempts_text(lab, reset),
        hint=hint,
    )
    refused_tries = lab.timeline.attempts(refused.id)
    expect(
        len(refused_tries) >= 2,
        "A refused connection (the server is restarting) is worth retrying.",
        expected="a second attempt after the first ConnectError",
        observed=attempts_text(lab, refused),
        hint=hint,
    )


@pytest.mark.rules("request-timeout")
@pytest.mark.points(1)
@pytest.mark.deadline(20)
def test_request_has_a_timeout(lab, worker, http_stub):
    """A server that hangs: the request times out within ~1 s and is retried"""
    url = http_stub.script("/hang", ["hang", 200])
    result = lab.send("fetch", url)
    lab.wait(result)
    tries = lab.timeline.attempts(result.id)
    first = tries[0].duration if tries and tries[0].duration is not None else None
    expect(
        first is not None and first <= REQUEST_TIMEOUT + 0.8,
        "A request without a short timeout blocks a worker process for as long as the server likes.",
        expected=f"the first attempt gives up after at most {REQUEST_TIMEOUT:g} s",
        observed=f"it took {first:.1f} s" if first is not None else attempts_text(lab, result),
        hint="httpx.get(url, timeout=1.0)",
    )
    expect(
        lab.timeline.state(result.id) == "SUCCESS" and len(tries) == 2,
        "A timeout is worth retrying.",
        expected="2 attempts (timeout, 200), then SUCCESS",
        observed=attempts_text(lab, result),
    )


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("max-retries", needs=["retry-5xx"])
def test_gives_up_after_three_retries(lab, worker, http_stub):
    """A server that always answers 503: exactly 4 attempts (1 + 3 retries), then FAILURE"""
    url = http_stub.script("/down", [503])
    result = lab.send("fetch", url)
    lab.wait(result)
    tries = lab.timeline.attempts(result.id)
    expect(
        lab.timeline.state(result.id) == "FAILURE" and len(tries) == MAX_RETRIES + 1,
        "Retries must end: give up after 3 retries and let the task fail.",
        expected=f"{MAX_RETRIES + 1} attempts, then FAILURE",
        observed=attempts_text(lab, result, len(http_stub.hits("/down"))),
        hint="max_retries=3 (and retry on 5xx at all).",
    )


def _dead_server_waits(lab, http_stub, label: str, tasks: int, **options) -> tuple[list[list[float]], str]:
    results = [lab.send("fetch", http_stub.script(f"/{label}-{i}", [503]), **options) for i in range(tasks)]
    lab.wait(results)
    gaps = [lab.timeline.gaps(r.id) for r in results]
    expect(
        all(len(g) == MAX_RETRIES for g in gaps),
        "Each task should retry 3 times against a dead server.",
        expected=f"{MAX_RETRIES} waits per task",
        observed=f"waits per task: {[len(g) for g in gaps]}",
    )
    return gaps, "; ".join(", ".join(f"{x:.1f}" for x in g) for g in gaps)


@pytest.mark.rules("backoff", needs=["retry-5xx", "max-retries"])
@pytest.mark.points(1)
@pytest.mark.deadline(25)
def test_backoff_is_exponential_and_capped(lab, maxed_queue, http_stub):
    """Against a dead server, with every random draw at its top: waits of at most 1, 2, 2 s"""
    # The worker's random draws all sit at their upper bound, so the longest wait a solution can produce
    # is the one measured, on every run: an uncapped or too-steep backoff is caught deterministically.
    gaps, shown = _dead_server_waits(lab, http_stub, "cap", 2, queue=maxed_queue)
    too_long = [(n, x) for g in gaps for n, x in enumerate(g) if x > BOUNDS[n] + SLACK]
    expect(
        not too_long,
        "Each wait must stay within the exponential bound and the 2 s cap.",
        expected=f"wait before retry n+1 within 0..{BOUNDS} s (random draws pinned to their maximum)",
        observed=f"waits (s): {shown}",
        hint="retry_backoff=1 with retry_backoff_max=2 (Celery's default cap is 600 s).",
    )


@pytest.mark.rules("jitter", needs=["retry-5xx", "max-retries"])
@pytest.mark.points(1)
@pytest.mark.deadline(25)
def test_backoff_is_jittered(lab, worker, http_stub):
    """Four tasks against a dead server: the waits are random (jittered), yet not all zero"""
    gaps, shown = _dead_server_waits(lab, http_stub, "jitter", 4)
    # Odds that a jittered solution fails: Celery draws randrange(2), randrange(3), randrange(3) per task,
    # so all 12 draws at their bound (or all at zero) happen with p = (1/18)**4, about 1 in 100,000.
    deterministic = all(abs(x - BOUNDS[n]) < SLACK for g in gaps for n, x in enumerate(g))
    flat = [x for g in gaps for x in g]
    expect(
        not deterministic and max(flat) >= 0.9,
        "Waits must be jittered (random 0..bound) yet real (not all zero).",
        expected="waits spread over 0..bound across tasks",
        observed=f"waits (s): {shown}",
        hint="retry_jitter=True; without it every client retries in lockstep (thundering herd).",
    )
