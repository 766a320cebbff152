"""Proofs for the bank's "predict what happens" questions.

Each test runs its question's code (tests/kit/proofs/tasks.py) on a real prefork worker against a real
broker, asserts what actually happened, and checks that the choice the bank marks as right says so. One
worker is shared by all proofs; only the acknowledgement proof starts (and kills) its own.
"""

from __future__ import annotations

import inspect
import json
import re
import secrets
import shutil
import time
from pathlib import Path

import httpx
import pytest
import redis
import requests
from celery import chain, chord, group
from celery.canvas import _chain
from celery.exceptions import ChordError

from celerylab.engine.brokers import free_port
from celerylab.engine.stubs import ScriptedHTTPServer
from celerylab.grading.session import LabRun, LabSession
from celerylab.paths import state_dir
from celerylab.study.quizbank import load_bank
from tests.kit.conftest import is_gone

PROOFS = Path(__file__).with_name("proofs")
QUESTIONS = {q.id: q for q in load_bank() if q.kind == "predict"}
BUDGET = 30.0  # seconds a proof may wait on the workers before it fails with what it last saw


@pytest.fixture(scope="module")
def proofs(celerylab_broker):
    logs = state_dir() / "logs" / "quiz-proofs"
    shutil.rmtree(logs, ignore_errors=True)  # this run's logs only
    session = LabSession("quiz-proofs", PROOFS, celerylab_broker, logs)
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def run(proofs) -> LabRun:
    """This test's timeline (events since it began) over the shared session."""
    return LabRun(proofs, BUDGET)


@pytest.fixture
def tasks(run):
    run.worker("w1", concurrency=2)  # the shared worker, replaced only if a proof left it unhealthy
    return run.module()


@pytest.fixture
def claim(request):
    """The right choice of the question this proof belongs to, checking the question names this test."""

    def right_choice(qid: str) -> str:
        q = QUESTIONS[qid]
        assert q.proof == request.node.name, f"{qid} names {q.proof}, not {request.node.name}"
        return q.choices[q.answer]

    return right_choice


def test_json_round_trip(tasks, claim):
    assert tasks.describe.delay((1, 2)).get(timeout=BUDGET) == {"1": "list"}
    assert "{'1': 'list'}" == claim("first_task-003")


def test_text_on_5xx_is_success(run, tasks, claim, http_stub):
    url = http_stub.script("/flaky", [503])
    result = tasks.fetch_url.delay(url)
    run.wait(result)
    assert result.state == "SUCCESS" and '"status": 503' in result.get()
    assert len(run.timeline.attempts(result.id)) == 1 and len(http_stub.hits("/flaky")) == 1
    assert "succeeds on the first attempt" in claim("retries-003")


def test_retry_gives_up_with_original_exception(run, tasks, claim):
    result = tasks.flaky.delay()
    run.wait(result)
    # Judged from the worker's events, not the result backend: with a zero retry delay and two pool processes,
    # the third run can store FAILURE before the second run's process has stored its RETRY, which then
    # overwrites it (CI saw the backend end as RETRY). The events give each run's own outcome.
    attempts = run.timeline.attempts(result.id)
    assert [a.outcome for a in attempts] == ["retry", "retry", "failure"]
    assert "ValueError" in attempts[-1].exception and "still down" in attempts[-1].exception
    assert "3 runs" in claim("retries-004") and "ValueError" in claim("retries-004")


def test_httpx_errors_are_not_builtin(run, tasks, claim):
    result = tasks.call_api.delay(f"http://127.0.0.1:{free_port()}/")  # nothing listens there
    run.wait(result)
    assert [a.outcome for a in run.timeline.attempts(result.id)] == ["failure"], "one attempt, no retry"
    assert isinstance(result.result, httpx.ConnectError)
    assert "runs once" in claim("retries-011") and "never retries" in claim("retries-011")


def test_key_made_inside_task_changes_on_retry(run, tasks, claim):
    result = tasks.charge.delay(40)
    run.wait(result)
    first, second = run.timeline.attempts(result.id)  # one task id, two runs of the body
    key_of = re.compile(r"key ([0-9a-f-]{36})")
    assert first.outcome == "retry" and second.outcome == "success"
    assert key_of.search(first.exception).group(1) != key_of.search(result.get()).group(1)
    assert claim("idempotency-002").startswith("Two")


def test_early_ack_is_lost_acks_late_is_redelivered(run, proofs, tasks, claim):
    queue = proofs.ns.queue_name("acks")
    restore_fast = {}
    if proofs.broker.is_redis:  # kombu restores unacked messages after visibility_timeout (1 h by default)
        options = {
            **proofs.ns.config()["broker_transport_options"],
            "visibility_timeout": 2,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
        restore_fast = {"broker_transport_options": options}
    doomed = proofs.start_worker("acks-a", concurrency=2, queues=[queue])
    early = tasks.early_ack.apply_async((1,), queue=queue)
    late = tasks.late_ack.apply_async((1,), queue=queue)
    run.wait_until(lambda tl: tl.attempts(early.id) and tl.attempts(late.id), "both tasks running")
    doomed.settle()  # Celery acks early one event-loop turn after the start: let that turn happen first
    doomed.kill()
    survivor = proofs.start_worker("acks-b", concurrency=2, queues=[queue], settings=restore_fast)
    try:
        run.wait_until(lambda tl: len(tl.attempts(late.id)) == 2, "late_ack delivered again")
        again = run.timeline.attempts(late.id)[1]
        assert again.hostname == survivor.hostname and again.redelivered
        active = survivor.inspect().active()[survivor.hostname]
        assert [t["id"] for t in active] == [late.id], "early_ack did not come back with it"
        assert not survivor.inspect().reserved()[survivor.hostname]
        assert len(run.timeline.attempts(early.id)) == 1
    finally:
        survivor.stop()
    assert claim("idempotency-008").startswith("Only late_ack")


def test_chain_in_chain(tasks, claim):
    workflow = chain(tasks.add.s(2, 2) | tasks.mul.s(10))
    assert isinstance(workflow.tasks[0], _chain) and len(workflow.tasks) == 1, "a chain wrapping a chain"
    assert workflow.delay().get(timeout=BUDGET) == 40
    assert claim("canvas-001").startswith("40")


def test_chain_passes_result_as_first_argument(tasks, claim):
    assert (tasks.add.s(2, 2) | tasks.sub.s(10)).delay().get(timeout=BUDGET) == -6
    assert claim("canvas-002") == "-6"


def test_group_results_keep_header_order(run, tasks, claim):
    result = group(tasks.nap.s(0.6, "slow"), tasks.nap.s(0.0, "fast"))()
    assert result.get(timeout=BUDGET) == ["slow", "fast"]
    run.wait(result.results)
    slow, fast = (run.timeline.attempts(r.id)[0] for r in result.results)
    assert fast.end < slow.end, "the second task finished first, yet its result comes second"
    assert claim("canvas-003").startswith("['slow', 'fast']")


def test_chord_with_failing_header(run, tasks, claim):
    result = chord([tasks.add.s(1, 1), tasks.fail.s(), tasks.add.s(2, 2)])(tasks.total.s())
    result.get(timeout=BUDGET, propagate=False)
    assert result.state == "FAILURE" and isinstance(result.result, ChordError)
    assert "ValueError('boom')" in str(result.result)
    assert run.timeline.task_ids("total") == [], "the body never reached a worker"
    assert "ChordError" in claim("canvas-004") and "total never runs" in claim("canvas-004")


def test_soft_time_limit_is_not_timeouterror(run, tasks, claim):
    result = tasks.slow.delay()
    run.wait(result)
    assert result.state == "FAILURE" and type(result.result).__name__ == "SoftTimeLimitExceeded"
    assert not isinstance(result.result, TimeoutError)
    assert run.timeline.attempts(result.id)[0].duration < 2.9, "interrupted during the 3 s sleep"
    assert "SoftTimeLimitExceeded" in claim("acks-002")


def test_hard_time_limit_kills_the_process(run, tasks, claim):
    result = tasks.stuck.delay()
    run.wait(result)
    assert result.state == "FAILURE" and type(result.result).__name__ == "TimeLimitExceeded"
    attempt = run.timeline.attempts(result.id)[0]
    deadline = time.monotonic() + 10
    while not is_gone(attempt.pid) and time.monotonic() < deadline:  # the kill follows the failure event
        time.sleep(0.05)
    assert is_gone(attempt.pid), "the pool process that ran it was terminated"
    assert "TimeLimitExceeded" in claim("acks-003") and "terminated" in claim("acks-003")


def test_broad_except_swallows_soft_time_limit(tasks, claim):
    assert tasks.report.delay().get(timeout=BUDGET) == "partial (SoftTimeLimitExceeded)"
    assert '"partial (SoftTimeLimitExceeded)"' in claim("acks-010")


def test_task_routes_match_task_names(proofs, tasks, claim):
    assert tasks.resize.name == "tasks.resize"
    assert tasks.resize.delay("cat.png").get(timeout=BUDGET) == proofs.ns.queue  # the default queue
    assert "default queue" in claim("routing-001") and '"tasks.resize"' in claim("routing-001")


def test_ignored_result_stays_pending(run, tasks, claim):
    result = tasks.send_email.delay("ada@example.com")
    run.wait(result)
    assert run.timeline.state(result.id) == "SUCCESS", "the worker ran it"
    assert result.state == "PENDING"
    assert claim("pitfalls-003").startswith('"PENDING"')


def _held(worker, deadline: float) -> tuple[int, int]:
    """(running, reserved) tasks of ``worker`` once its reserved count has been stable for two reads."""
    last = None
    while True:
        inspect = worker.inspect()
        now = (len(inspect.active()[worker.hostname]), len(inspect.reserved()[worker.hostname]))
        if now == last or time.monotonic() > deadline:
            return now
        last = now


def test_prefetch_one_with_early_acks_reserves_one_more(run, proofs, tasks, claim):
    settings = {"worker_prefetch_multiplier": 1}
    held = {}
    for kind, task in (("early", tasks.early_ack), ("late", tasks.late_ack)):
        queue = proofs.ns.queue_name(f"prefetch-{kind}")
        worker = proofs.start_worker(f"prefetch-{kind}", concurrency=1, queues=[queue], settings=settings)
        try:
            sent = [task.apply_async((n,), queue=queue) for n in range(3)]
            run.wait_until(lambda tl, s=sent: tl.attempts(s[0].id), f"the first {kind} task running")
            worker.settle()  # the early ack, and the fetch it makes room for, happen a loop turn later
            worker.settle()
            held[kind] = _held(worker, time.monotonic() + 10)
            assert len(run.timeline.attempts(sent[1].id)) == 0, "only one task runs at a time"
        finally:
            worker.stop()
    assert held["early"] == (1, 1), f"early acks: (running, reserved) = {held['early']}"
    assert held["late"] == (1, 0), f"acks_late: (running, reserved) = {held['late']}"
    assert claim("prefetch-010").startswith("One task running and one reserved")


def test_blocking_call_without_timeout_holds_the_pool(run, proofs, claim):
    queue = proofs.ns.queue_name("silent")
    worker = proofs.start_worker("silent", concurrency=2, queues=[queue])
    tasks = run.module()
    try:
        with ScriptedHTTPServer() as server:  # accepts each request and answers nothing until it stops
            url = server.script("/report", ["hang"])
            calls = [tasks.fetch_report.apply_async((url,), queue=queue) for _ in range(2)]
            assert len(server.wait_hits("/report", 2, BUDGET)) == 2, "both calls reached the server"
            quick = [tasks.quick.apply_async((n,), queue=queue) for n in range(4)]
            held = _held(worker, time.monotonic() + BUDGET)
            assert held == (2, 4), f"(running, reserved) = {held}: both processes held, the rest waiting"
            hung_up = time.time()  # leaving the block stops the server: it hangs up on both calls
        run.wait(calls + quick)
    finally:
        worker.stop()
    assert all(isinstance(r.result, requests.ConnectionError) for r in calls), [r.result for r in calls]
    ends = [a.end for r in calls for a in run.timeline.attempts(r.id)]
    assert all(end >= hung_up for end in ends), "each call lasted until the server hung up"
    assert inspect.signature(requests.Session.request).parameters["timeout"].default is None, "no default"
    starts = [a.start for r in quick for a in run.timeline.attempts(r.id)]
    assert len(starts) == 4 and min(starts) >= hung_up, "no quick task started before the server hung up"
    assert claim("pitfalls-012").startswith("They wait") and "no default timeout" in claim("pitfalls-012")


def test_large_argument_on_redis_is_base64_plus_argsrepr(run, proofs, claim):
    if not proofs.broker.is_redis:
        pytest.skip("the question is about kombu's Redis transport")
    queue = proofs.ns.queue_name("parked")  # no worker consumes it: the message stays as stored
    blob = secrets.token_hex(500_000)  # 1,000,000 characters
    run.module().digest.apply_async((blob,), queue=queue)
    client = redis.Redis.from_url(proofs.broker.url)
    raw = client.lindex(f"{proofs.ns.name}:{queue}", 0)  # the list under the namespace's key prefix
    client.close()
    envelope = json.loads(raw)
    assert envelope["properties"]["body_encoding"] == "base64"
    assert 1_000 <= len(envelope["headers"]["argsrepr"]) <= 1_100, "a repr of the arguments, cut near 1 KB"
    assert 1_000_000 * 4 / 3 < len(raw) < 1_000_000 * 4 / 3 + 4_000, len(raw)
    assert claim("pitfalls-013").startswith("About 1.33 MB")
