"""Autograder: acks and time limits (labs/acks/README.md has the contract).

Fault injection on real prefork workers: the grader SIGKILLs a whole worker (main process and pool) or
only the pool process running a task, and judges from the workers' events what came back and what was
lost; the soft limit's cleanup is seen by a server the grader owns; the hard limit's process replacement
by remote control (the pool's pids).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import pytest
from celery.result import AsyncResult

from celerylab.session import LabFailure, LabRun, LabSession, expect
from celerylab.timeline import ATTEMPT_START, Timeline

# Redis only sweeps unacked messages back after visibility_timeout (1 h by default), checking every
# unacked_restore_interval x unacked_restore_throttle seconds (10 x 10): shortened so a grade takes seconds.
VISIBILITY_TIMEOUT = 3
CRASH_SECONDS = 2.0  # how long the tasks on the crashed worker run
REDELIVERY_BOUND = 15.0  # kill -> redelivered task finished (Redis: ~4-6 s, RabbitMQ: ~1.5 s), with margin
LATE_MARGIN = 2.5  # after the report came back: time for a late-acked sms to come back in the same sweep
SOFT, HARD, CRUNCH_HARD = 1.0, 2.0, 1.0
LIMIT_SLACK = 0.8  # event delivery and a loaded machine
SOFT_SLACK = 0.9  # the soft-limit attempt also makes the cleanup call (a new httpx client: ~0.1-0.4 s)


def started(tl: Timeline, uuid: str) -> bool:
    """Running in a pool process, and accepted by the main process (an early ack happens just before)."""
    return bool(tl.events(ATTEMPT_START, uuid)) and bool(tl.events("task-started", uuid))


def error_of(result: AsyncResult) -> str:
    """The exception the result backend holds. A failure reported by the worker's main process (time limit,
    lost process) reaches the events only as `ExceptionWithTraceback()`, so the timeline cannot name it."""
    try:
        exc = result.get(timeout=5, propagate=False)
    except Exception as error:  # the backend did not answer: say so in the verdict
        return f"(no result: {type(error).__name__})"
    return f"{type(exc).__name__}({exc})" if isinstance(exc, BaseException) else ""


def summary(tl: Timeline, uuid: str) -> str:
    tries = tl.attempts(uuid)
    where = ", ".join(
        f"#{a.number} on {a.hostname.split('@')[0]} pid {a.pid}: {a.outcome}"
        + (" (redelivered)" if a.redelivered else "")
        for a in tries
    )
    return f"{tl.describe(uuid)}; attempts: {where or 'none'}"


# -- a whole worker dies (kill -9 of the main process and its pool) --------------------------------------


@dataclass
class Crash:
    run: LabRun
    report: AsyncResult
    sms: AsyncResult
    crashed: str  # hostname of the killed worker
    killed_at: float  # time.monotonic() of the kill

    def left(self) -> float:
        """What remains of the redelivery bound: both crash tests wait against the same clock."""
        return max(0.1, self.killed_at + REDELIVERY_BOUND - time.monotonic())

    @property
    def tl(self) -> Timeline:
        return self.run.timeline


@pytest.fixture(scope="module")
def crash(lab_session: LabSession):
    """Both tasks running on worker `crash`, which is SIGKILLed whole; then worker `rescue` starts on its
    queue. Shared by the two crash tests (one crash, two verdicts)."""
    run = LabRun(lab_session, 60.0)
    queue = lab_session.ns.queue_name("crash")  # only these two workers consume it
    settings = lab_session.ns.redelivery_settings(VISIBILITY_TIMEOUT)  # nothing to set on RabbitMQ
    worker = run.start_worker("crash", concurrency=2, queues=[queue], settings=settings)
    report = run.send("render_report", "r-crash", CRASH_SECONDS, queue=queue)
    sms = run.send("send_sms", "+15550100", CRASH_SECONDS, queue=queue)
    run.wait_until(lambda tl: started(tl, report.id) and started(tl, sms.id), "both tasks to start", 15.0)
    worker.crash()  # kill -9 of the whole worker, noted in the timeline
    killed_at = time.monotonic()
    run.start_worker("rescue", concurrency=2, queues=[queue], settings=settings)
    yield Crash(run, report, sms, worker.hostname, killed_at)
    if lab_session.broker.is_amqp:  # the queue's own exchange (the namespace removes the queue)
        with contextlib.suppress(Exception), lab_session.app.connection_for_write() as conn:
            conn.default_channel.exchange_delete(queue)


@pytest.mark.points(3)
@pytest.mark.deadline(30)
def test_late_ack_task_survives_a_worker_crash(lab, crash):
    """Worker SIGKILLed mid-task: render_report comes back on a fresh worker and completes"""
    tl = crash.tl
    try:
        crash.run.wait(crash.report, crash.left())
    except LabFailure:
        pass  # judged below, with what was seen
    tries = tl.attempts(crash.report.id)
    back = [a for a in tries[1:] if a.hostname != crash.crashed]
    expect(
        tl.state(crash.report.id) == "SUCCESS" and back,
        "render_report was running when its worker was killed (kill -9, no warning); it must not be lost.",
        expected=f"a second attempt on the rescue worker within {REDELIVERY_BOUND:.0f} s, then SUCCESS",
        observed=summary(tl, crash.report.id),
        hint="acks_late=True: the message is acknowledged only after the task ran, so the broker still "
        "holds it when the worker dies and delivers it again.",
    )
    expect(
        back[-1].redelivered,
        "The broker should flag the second delivery as a redelivery.",
        expected="delivery_info['redelivered'] set on the rescue worker's attempt",
        observed=summary(tl, crash.report.id),
    )


@pytest.mark.points(1)
@pytest.mark.deadline(30)
def test_early_ack_task_is_not_redelivered(lab, crash):
    """Worker SIGKILLed mid-task: send_sms is not run again (at most once)"""
    tl = crash.tl

    def report_back(t: Timeline) -> bool:
        return any(a.hostname != crash.crashed for a in t.attempts(crash.report.id))

    def sms_again(t: Timeline) -> bool:
        return len(t.attempts(crash.sms.id)) > 1

    with contextlib.suppress(LabFailure):  # the sweep that brings the report back would bring a late sms too
        crash.run.wait_until(lambda t: report_back(t) or sms_again(t), "a redelivery", crash.left())
    with contextlib.suppress(LabFailure):
        crash.run.wait_until(sms_again, "send_sms to come back", LATE_MARGIN)
    expect(
        not sms_again(tl),
        "send_sms texts a customer: running it again after a crash would send a second text.",
        expected="one attempt only: the message was acknowledged when the worker took it, so it is gone",
        observed=summary(tl, crash.sms.id),
        hint="leave send_sms acking early (acks_late=False, Celery's default); "
        "a global task_acks_late=True makes every task at-least-once.",
    )


# -- only the pool process dies (the main process sees WorkerLostError) ---------------------------------


@pytest.fixture
def worker(lab):
    return lab.worker("w1", concurrency=2)


def kill_running_child(lab, worker, result: AsyncResult) -> int:
    lab.wait_until(lambda tl: started(tl, result.id), "the task to start", 10.0)
    pid = lab.timeline.attempts(result.id)[0].pid
    worker.kill_pool_process(pid)
    return pid


@pytest.mark.points(2)
@pytest.mark.deadline(20)
def test_late_ack_task_requeued_when_its_process_dies(lab, worker):
    """Pool process SIGKILLed mid-task: render_report is requeued and completes in a new process"""
    result = lab.send("render_report", "r-child", 1.5)
    pid = kill_running_child(lab, worker, result)
    lab.wait(result)
    tl = lab.timeline
    tries = tl.attempts(result.id)
    expect(
        tl.state(result.id) == "SUCCESS" and len(tries) >= 2 and tries[-1].pid != pid,
        "When only the pool process running render_report dies (OOM killer, segfault), the worker's main "
        "process sees WorkerLostError; the task must run again, not fail.",
        expected=f"attempt 1 in pid {pid} (killed), attempt 2 in another pool process, then SUCCESS",
        observed=f"{summary(tl, result.id)}; {error_of(result) or 'no error'}",
        hint="with acks_late alone Celery acknowledges the message and marks the task FAILED "
        "(WorkerLostError); reject_on_worker_lost=True requeues it instead.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(20)
def test_early_ack_task_fails_when_its_process_dies(lab, worker):
    """Pool process SIGKILLed mid-task: send_sms fails with WorkerLostError, never re-run"""
    result = lab.send("send_sms", "+15550101", 1.5)
    kill_running_child(lab, worker, result)
    lab.wait(result)
    tl = lab.timeline
    tries, error = tl.attempts(result.id), error_of(result)
    expect(
        tl.state(result.id) == "FAILURE" and len(tries) == 1 and "WorkerLost" in error,
        "send_sms is at most once: if its process dies, the text may or may not have gone out; "
        "never send it again.",
        expected="one attempt, FAILURE with WorkerLostError",
        observed=f"{summary(tl, result.id)}; {error}",
        hint="no acks_late + reject_on_worker_lost on send_sms (nor globally).",
    )


# -- time limits ---------------------------------------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(20)
def test_soft_limit_runs_the_cleanup(lab, worker, http_stub):
    """export_csv past its soft limit: SoftTimeLimitExceeded at ~1 s, cleanup, FAILURE, process lives"""
    url = http_stub.script("/cleanup", [200])
    result = lab.send("export_csv", 30, url)  # 30 rows x 0.1 s: 3 s without a limit
    lab.wait(result)
    tl = lab.timeline
    tries = tl.attempts(result.id)
    first = tries[0] if tries else None
    error = (first.exception or "") if first else ""
    ran = f"; it ran {first.duration:.1f} s" if first and first.duration else ""
    hard_kill = error_of(result).startswith("TimeLimitExceeded")  # the 2 s backstop, not the soft limit
    expect(
        first is not None
        and first.duration is not None
        and first.duration <= SOFT + SOFT_SLACK
        and not hard_kill,
        "export_csv must be interrupted by a 1 s soft time limit.",
        expected=f"the attempt ends after ~{SOFT:g} s (SoftTimeLimitExceeded raised inside it)",
        observed=summary(tl, result.id) + ran + ("; the hard limit killed it" * hard_kill),
        hint="soft_time_limit=1 on the task. The cheat sheet is wrong: the exception is "
        "celery.exceptions.SoftTimeLimitExceeded, not TimeoutError.",
    )
    hits = http_stub.wait_hits("/cleanup", 1, 2.0)
    body = hits[0].json() if hits else None
    written = body.get("written") if isinstance(body, dict) else None
    expect(
        len(hits) == 1 and isinstance(written, int) and 3 <= written <= 15,
        "On SoftTimeLimitExceeded, export_csv must clean up its partial file once.",
        expected='one POST to cleanup_url with {"written": <rows written so far, ~10>}',
        observed=f"{len(hits)} request(s)" + (f", body {body!r}" if hits else ""),
        hint="wrap the loop in try/except SoftTimeLimitExceeded and httpx.post(cleanup_url, "
        "json={'written': written}, timeout=1.0) in the except block.",
    )
    expect(
        tl.state(result.id) == "FAILURE" and "SoftTimeLimitExceeded" in error,
        "After cleaning up, export_csv must still fail: the export did not happen.",
        expected="FAILURE with SoftTimeLimitExceeded",
        observed=summary(tl, result.id),
        hint="re-raise in the except block (a bare `raise`).",
    )
    hard = lab.task_options("export_csv").get("time_limit")
    expect(
        isinstance(hard, int | float) and SOFT < hard <= HARD + 1,
        "A soft limit needs a hard limit behind it, in case the cleanup itself hangs.",
        expected=f"time_limit={HARD:g} on export_csv",
        observed=f"time_limit={hard!r}",
    )
    pids = worker.pool_pids()
    expect(
        first.pid in pids,
        "A soft limit is an exception inside the task: its process carries on.",
        expected=f"pid {first.pid} still in the pool",
        observed=f"pool: {pids}",
    )


@pytest.mark.points(2)
@pytest.mark.deadline(20)
def test_hard_limit_kills_and_replaces_the_process(lab, worker):
    """crunch past its hard limit: FAILURE TimeLimitExceeded at ~1 s; the pool replaces the process"""
    result = lab.send("crunch", 3.0)
    lab.wait(result)
    tl = lab.timeline
    tries = tl.attempts(result.id)
    first, error = (tries[0] if tries else None), error_of(result)
    ran = f"; it ran {first.duration:.1f} s" if first and first.duration else ""
    expect(
        first is not None
        and tl.state(result.id) == "FAILURE"
        and error.startswith("TimeLimitExceeded")
        and first.duration is not None
        and first.duration <= CRUNCH_HARD + LIMIT_SLACK,
        "crunch must be stopped by a 1 s hard time limit.",
        expected=f"FAILURE with TimeLimitExceeded after ~{CRUNCH_HARD:g} s",
        observed=f"{summary(tl, result.id)}; {error or 'no error'}{ran}",
        hint="time_limit=1, no soft limit (native code never sees SoftTimeLimitExceeded).",
    )
    try:
        pids = worker.wait_pool_replaced(first.pid, min(5.0, lab.remaining()))
    except Exception as exc:
        raise LabFailure(f"The hard limit should cost crunch its process.\nobserved: {exc}") from None
    again = lab.send("crunch", 0.1)
    lab.wait(again)
    later = tl.attempts(again.id)
    expect(
        tl.state(again.id) == "SUCCESS" and later and later[0].pid != first.pid,
        "The worker should carry on with a fresh pool process.",
        expected=f"crunch(0.1) succeeds in a new process (pool now {pids}, old pid {first.pid})",
        observed=summary(tl, again.id),
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
def test_quick_tasks_still_succeed(lab, worker, http_stub):
    """Within their limits every task succeeds with its result, and no cleanup runs"""
    url = http_stub.script("/cleanup-none", [200])
    calls = {
        "render_report": ("r-ok", 0.1),
        "send_sms": ("+15550102", 0.1),
        "export_csv": (3, url),
        "crunch": (0.2,),
    }
    wanted = {"render_report": "report r-ok", "send_sms": "sent to +15550102", "export_csv": 3, "crunch": 0.2}
    results = {name: lab.send(name, *args) for name, args in calls.items()}
    lab.wait(list(results.values()))
    got = {name: (lab.timeline.state(r.id), r.get(timeout=5, propagate=False)) for name, r in results.items()}
    bad = {name: g for name, g in got.items() if g != ("SUCCESS", wanted[name])}
    expect(
        not bad,
        "Short runs must not trip any limit, and each task returns what the skeleton returns.",
        expected=f"SUCCESS with {wanted}",
        observed=f"{bad}",
        hint="soft_time_limit=1, time_limit=2 on export_csv; time_limit=1 on crunch.",
    )
    stray = len(http_stub.hits("/cleanup-none"))
    expect(
        not stray,
        "Cleanup belongs in the SoftTimeLimitExceeded handler only.",
        observed=f"{stray} cleanup call(s) for an export that finished",
    )
