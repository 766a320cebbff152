"""Autograder: acks and time limits (labs/acks/README.md has the contract).

Fault injection on real prefork workers: the grader SIGKILLs a whole worker (main process and pool) or
only the pool process running a task, and judges from the workers' events what came back and what was
lost; the soft limit's cleanup is seen by a server the grader owns, and a cleanup that hangs (the server
dribbles its reply) shows the hard limit behind it; the hard limit's process replacement by remote
control (the pool's pids). Limits are judged twice: the value the import probe reports (per task, or from
a global ``task_time_limit``/``task_soft_time_limit``, which Celery copies onto every task) must be the
contract's exactly, and the worker must behave accordingly.

No verdict depends on chance: nothing here is random, and every wait is for an observable event (a task
started, a process replaced, a request arrived) bounded by the test's deadline.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import pytest
from celery.app.defaults import DEFAULTS
from celery.result import AsyncResult

from celerylab.engine import runtime
from celerylab.engine.timeline import Attempt, Timeline
from celerylab.grading.session import LabFailure, LabRun, LabSession, expect

# Redis only sweeps unacked messages back after visibility_timeout (1 h by default), checking every
# unacked_restore_interval x unacked_restore_throttle seconds (10 x 10): shortened so a grade takes seconds.
VISIBILITY_TIMEOUT = 3
RUN_SECONDS = 1.5  # render_report/send_sms runs under a kill: long enough to be killed mid-run, and under
# any global hard limit >= 2 s a correct solution may set (task_time_limit=2 as a backstop for every task)
REDELIVERY_BOUND = 15.0  # kill -> redelivered task finished (Redis: ~4-6 s, RabbitMQ: ~1.5 s), with margin
LATE_MARGIN = 2.5  # after the report came back: time for a late-acked sms to come back in the same sweep
SOFT, HARD, CRUNCH_HARD = 1.0, 2.0, 1.0
EARLY = 0.3  # a limit never fires early; an attempt's start (in the pool process) trails the timer's a bit
LIMIT_SLACK = 0.8  # event delivery and a loaded machine
CRUNCH_SLACK = 1.2  # crunch's exact limit is read from its options; its run only shows a hard kill near 1 s
SOFT_SLACK = 0.9  # the soft-limit attempt also makes the cleanup call (a new httpx client: ~0.1-0.4 s)
ROWS_AT_SOFT = range(6, 12)  # rows written by 1 s at 0.1 s a row: 9-10 (11 if counted before writing)
LOST_WAIT = 10.0  # the pool may take up to worker_lost_wait (10 s) to report a killed process
TRICKLE = 4.0  # the hanging cleanup's reply lasts this long: far past the 2 s hard limit
GLOBAL = {
    "time_limit": "task_time_limit",
    "soft_time_limit": "task_soft_time_limit",
    "acks_late": "task_acks_late",
    "reject_on_worker_lost": "task_reject_on_worker_lost",
    "retry_on_worker_lost": "task_retry_on_worker_lost",
}


def error_of(tl: Timeline, result: AsyncResult) -> str:
    """The task's failure: from its ``task-failed`` event (a failure the worker's main process recorded,
    a time limit or a lost process, names its error only in the traceback's last line), else from the last
    attempt as the pool process saw it, else from the result backend."""
    failed = tl.events("task-failed", result.id)
    if failed:
        exception, traceback = failed[-1].get("exception") or "", failed[-1].get("traceback") or ""
        lines = [line.strip() for line in traceback.splitlines() if line.strip()]
        if exception.startswith("ExceptionWithTraceback") and lines:
            return lines[-1]
        if exception:
            return exception
    tries = tl.attempts(result.id)
    if tries and tries[-1].exception and tries[-1].outcome != "lost":
        return tries[-1].exception
    try:
        exc = result.get(timeout=2, propagate=False)
    except Exception as error:  # the backend did not answer: say so in the verdict
        return f"(no result: {type(error).__name__})"
    return f"{type(exc).__name__}({exc})" if isinstance(exc, BaseException) else ""


def summary(tl: Timeline, uuid: str) -> str:
    tries = tl.attempts(uuid)
    where = ", ".join(
        f"#{a.number} on {a.hostname.split('@')[0]} pid {a.pid}: {a.outcome}"
        + (f" after {a.duration:.1f} s" if a.duration is not None else "")
        + (" (redelivered)" if a.redelivered else "")
        for a in tries
    )
    return f"{tl.describe(uuid)}; attempts: {where or 'none'}"


def option(lab: LabRun, task: str, name: str) -> Any:
    """The option's value on the task as the probe saw it (a global task_* setting already copied in)."""
    return lab.task_options(task).get(name)


def setting(lab: LabRun, task: str, name: str) -> str:
    """``time_limit=3 (global task_time_limit)``: the option as set, and where, for a verdict."""
    value, glob = option(lab, task, name), DEFAULTS.get(GLOBAL[name])
    # The probe passed, so importing the module here works too (and a verdict must never crash on it).
    with contextlib.suppress(Exception):
        app = runtime.find_app(lab.module())
        if name not in lab.task_options(task):  # not reported by the probe: read it off the task
            value = getattr(app.tasks[lab.task_name(task)], name, None)
        glob = app.conf.get(GLOBAL[name])
    changed = glob != DEFAULTS.get(GLOBAL[name])
    where = f" (global {GLOBAL[name]})" if changed and glob == value else ""
    return f"{name}={value!r}{where}"


def first(tl: Timeline, uuid: str) -> Attempt | None:
    tries = tl.attempts(uuid)
    return tries[0] if tries else None


@pytest.fixture
def worker(lab):
    return lab.worker("w1", concurrency=2)


# -- only the pool process dies (the main process sees WorkerLostError) ---------------------------------


def kill_running_child(lab, worker, result: AsyncResult) -> int:
    lab.wait_until(lambda tl: tl.accepted(result.id), "the task to start", 10.0)
    pid = lab.timeline.attempts(result.id)[0].pid
    worker.kill_pool_process(pid)
    return pid


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("report-survives-process-death", needs=["report-survives-worker-crash"])
def test_late_ack_task_requeued_when_its_process_dies(lab, worker):
    """Pool process SIGKILLed mid-task: render_report is requeued and completes in a new process"""
    hard = option(lab, "render_report", "time_limit")
    expect(
        not hard or hard >= LOST_WAIT,
        "A hard limit on render_report races the pool noticing that its process was killed: when the limit "
        "fires first, Celery records TimeLimitExceeded and acks the message, so the report is lost.",
        expected=f"no hard limit on render_report, or one of at least {LOST_WAIT:g} s",
        observed=f"render_report has {setting(lab, 'render_report', 'time_limit')}",
        hint="drop the limit from render_report (a global task_time_limit needs a per-task override).",
    )
    result = lab.send("render_report", "r-child", RUN_SECONDS)
    pid = kill_running_child(lab, worker, result)
    with contextlib.suppress(LabFailure):
        lab.wait(result, 10.0)  # judged below, with what was seen
    tl = lab.timeline
    tries = tl.attempts(result.id)
    if tl.state(result.id) == "SUCCESS" and len(tries) >= 2 and tries[-1].pid != pid:
        return
    late = option(lab, "render_report", "acks_late")
    if not late:
        hint = (
            f"render_report has {setting(lab, 'render_report', 'acks_late')}: its message was acked before "
            "it ran; acks_late=True, plus reject_on_worker_lost=True."
        )
    elif (eta := tl.pending_eta(result.id)) is not None and eta > time.time():
        hint = (
            f"it was retried, but the retry is due in {eta - time.time():.0f} s (retry_on_worker_lost waits "
            "default_retry_delay, 180 s by default): reject_on_worker_lost=True requeues it at once."
        )
    elif option(lab, "render_report", "reject_on_worker_lost"):
        hint = "acks_late and reject_on_worker_lost are set, yet it was not requeued: see the attempts above."
    else:
        hint = (
            "with acks_late alone Celery acks the message and marks the task FAILED (WorkerLostError); "
            "reject_on_worker_lost=True on render_report requeues it instead."
        )
    expect(
        False,
        "Only render_report's pool process died (OOM killer, segfault); the task must run again, not fail.",
        expected=f"attempt 1 in pid {pid} (killed), attempt 2 in another pool process, then SUCCESS",
        observed=f"{summary(tl, result.id)}; {error_of(tl, result) or 'no error'}",
        hint=hint,
    )


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("sms-at-most-once")
def test_early_ack_task_fails_when_its_process_dies(lab, worker):
    """Pool process SIGKILLed mid-task: send_sms fails with WorkerLostError, never re-run"""
    result = lab.send("send_sms", "+15550101", RUN_SECONDS)
    kill_running_child(lab, worker, result)
    with contextlib.suppress(LabFailure):
        lab.wait(result, 10.0)
    tl = lab.timeline
    tries, error = tl.attempts(result.id), error_of(tl, result)
    # FAILURE after one attempt is at most once. The error is WorkerLostError, or TimeLimitExceeded when a
    # hard limit on send_sms fired before the pool noticed its process was gone: no second text either way.
    lost = "WorkerLost" in error or "TimeLimit" in error
    if tl.state(result.id) == "FAILURE" and len(tries) == 1 and lost:
        return
    set_ = [
        setting(lab, "send_sms", o) for o in ("acks_late", "reject_on_worker_lost", "retry_on_worker_lost")
    ]
    expect(
        False,
        "send_sms is at most once: if its process dies the text may have gone out; never send it again.",
        expected="one attempt, FAILURE with WorkerLostError",
        observed=f"{summary(tl, result.id)}; {error}; send_sms has {', '.join(set_)}",
        hint="send_sms must not be requeued or retried when its process dies: acks_late=False, "
        "reject_on_worker_lost and retry_on_worker_lost off (per task, or not set globally).",
    )


# -- time limits ---------------------------------------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("export-soft-limit", "export-cleanup", needs=["export-hard-limit"])
def test_soft_limit_runs_the_cleanup(lab, worker, http_stub):
    """export_csv past its soft limit: SoftTimeLimitExceeded at ~1 s, cleanup, FAILURE, process lives"""
    url = http_stub.script("/cleanup", [200])
    result = lab.send("export_csv", 30, url)  # 30 rows x 0.1 s: 3 s without a limit
    lab.wait(result)
    tl = lab.timeline
    one, error = first(tl, result.id), error_of(tl, result)
    soft, hard = option(lab, "export_csv", "soft_time_limit"), option(lab, "export_csv", "time_limit")
    seen = summary(tl, result.id) + (f"; {error}" if error else "")
    expect(
        not soft or soft == SOFT,
        "export_csv's soft limit must be exactly 1 s.",
        expected=f"soft_time_limit={SOFT:g} (per task, or a global task_soft_time_limit)",
        observed=f"export_csv has {setting(lab, 'export_csv', 'soft_time_limit')}; {seen}",
        hint=f"soft_time_limit={SOFT:g}.",
    )
    hard_kill = "TimeLimitExceeded" in error and "Soft" not in error
    if hard_kill and soft and hard and hard <= soft:
        hint = f"keep soft_time_limit={SOFT:g} and put the hard limit above it: time_limit={HARD:g}."
        note = f"; the hard limit fired with the soft one ({setting(lab, 'export_csv', 'time_limit')})"
    elif not soft:
        hint = f"soft_time_limit={SOFT:g} on export_csv (it raises SoftTimeLimitExceeded inside the task)."
        note = "; export_csv has no soft limit" + (" (the hard limit killed it)" if hard_kill else "")
    else:
        hint, note = "the cleanup must return quickly (httpx.post with timeout=1.0).", ""
    expect(
        one is not None
        and one.duration is not None
        and SOFT - EARLY <= one.duration <= SOFT + SOFT_SLACK
        and not hard_kill
        and tl.state(result.id) == "FAILURE",
        "export_csv must be interrupted by a 1 s soft time limit (an exception inside the task).",
        expected=f"the attempt ends after ~{SOFT:g} s, FAILURE (SoftTimeLimitExceeded raised inside it)",
        observed=seen + note,
        hint=hint,
    )
    hits = http_stub.wait_hits("/cleanup", 1, 2.0)
    body = hits[0].json() if hits else None
    written = body.get("written") if isinstance(body, dict) else None
    if not hits:
        hint = (
            "nothing caught SoftTimeLimitExceeded: catch celery.exceptions.SoftTimeLimitExceeded "
            "(not TimeoutError) around the loop and POST the cleanup there."
        )
    else:
        hint = 'one httpx.post(cleanup_url, json={"written": written}) in the except block, no more.'
    expect(
        len(hits) == 1 and type(written) is int and written in ROWS_AT_SOFT,
        "On SoftTimeLimitExceeded, export_csv must clean up its partial file, once.",
        expected='one POST to cleanup_url with {"written": <rows written so far, ~10>}',
        observed=f"{len(hits)} request(s)" + (f", body {body!r}" if hits else "") + f"; {seen}",
        hint=hint,
    )
    expect(
        "SoftTimeLimitExceeded" in error,
        "After cleaning up, export_csv must still fail (SoftTimeLimitExceeded): the export did not happen.",
        expected="FAILURE with SoftTimeLimitExceeded",
        observed=seen,
        hint="re-raise the SoftTimeLimitExceeded in the except block (a bare `raise`), after the cleanup.",
    )
    pids = worker.pool_pids()
    expect(
        one.pid in pids,
        "A soft limit is an exception inside the task: its process carries on.",
        expected=f"pid {one.pid} still in the pool",
        observed=f"pool: {pids}",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("export-hard-limit", needs=["export-cleanup"])
def test_hard_limit_stops_a_hanging_cleanup(lab, worker, http_stub):
    """export_csv whose cleanup hangs: the 2 s hard limit kills it, FAILURE TimeLimitExceeded at ~2 s"""
    url = http_stub.script("/cleanup-hangs", [("trickle", TRICKLE)])  # a byte every 0.2 s: no read timeout
    hard = option(lab, "export_csv", "time_limit")
    expect(
        not hard or hard == HARD,
        "export_csv's hard limit must be exactly 2 s: the backstop if the cleanup itself hangs.",
        expected=f"time_limit={HARD:g} (per task, or a global task_time_limit), above the 1 s soft limit",
        observed=f"export_csv has {setting(lab, 'export_csv', 'time_limit')}",
        hint=f"time_limit={HARD:g}.",
    )
    result = lab.send("export_csv", 30, url)
    with contextlib.suppress(LabFailure):
        lab.wait(result, TRICKLE + 3.0)
    hits = http_stub.hits("/cleanup-hangs")  # recorded on arrival, before the reply starts to dribble
    tl = lab.timeline
    one, error = first(tl, result.id), error_of(tl, result)
    killed = (
        one is not None
        and one.duration is not None
        and "TimeLimitExceeded" in error
        and "Soft" not in error
        and HARD - EARLY <= one.duration <= HARD + LIMIT_SLACK
    )
    if killed:  # with or without the cleanup call (no soft limit: the hard limit alone stops it)
        return
    expect(
        hits or tl.state(result.id) != "SUCCESS",
        "export_csv(30) ran to the end: no limit stopped it.",
        expected=f"killed by its hard limit ~{HARD:g} s after the start (TimeLimitExceeded)",
        observed=summary(tl, result.id) + f"; export_csv has {setting(lab, 'export_csv', 'time_limit')}",
        hint=f"time_limit={HARD:g} on export_csv, behind soft_time_limit={SOFT:g}.",
    )
    expect(
        hits,
        "To see the hard limit at work the grader makes the cleanup hang, but no cleanup call came.",
        expected="a cleanup POST after the 1 s soft limit",
        observed=summary(tl, result.id) + (f"; {error}" if error else ""),
        hint="catch celery.exceptions.SoftTimeLimitExceeded and POST to cleanup_url there.",
    )
    expect(
        killed,
        "The cleanup hung (the server dribbles its reply); the hard limit must kill the task at 2 s.",
        expected=f"FAILURE with TimeLimitExceeded ~{HARD:g} s after the start",
        observed=summary(tl, result.id)
        + (f"; {error}" if error else "")
        + f"; export_csv has {setting(lab, 'export_csv', 'time_limit')}",
        hint=f"time_limit={HARD:g} on export_csv (or a global task_time_limit={HARD:g}).",
    )


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("crunch-hard-limit")
def test_hard_limit_kills_and_replaces_the_process(lab, worker):
    """crunch past its hard limit: FAILURE TimeLimitExceeded at ~1 s; the pool replaces the process"""
    hard, soft = option(lab, "crunch", "time_limit"), option(lab, "crunch", "soft_time_limit")
    expect(
        not hard or hard == CRUNCH_HARD,
        "crunch's hard limit must be exactly 1 s.",
        expected=f"time_limit={CRUNCH_HARD:g} on crunch",
        observed=f"crunch has {setting(lab, 'crunch', 'time_limit')}",
        hint=f"time_limit={CRUNCH_HARD:g} on crunch.",
    )
    expect(
        not soft or (hard and soft > hard),
        "crunch stands for native code: a soft limit never reaches it, only the hard limit stops it.",
        expected="no soft limit on crunch (none that fires before its hard limit)",
        observed=f"crunch has {setting(lab, 'crunch', 'soft_time_limit')}",
        hint="drop soft_time_limit from crunch (and any global task_soft_time_limit).",
    )
    result = lab.send("crunch", 3.0)
    lab.wait(result)
    tl = lab.timeline
    one, error = first(tl, result.id), error_of(tl, result)
    expect(
        one is not None
        and tl.state(result.id) == "FAILURE"
        and "TimeLimitExceeded" in error
        and "Soft" not in error
        and one.duration is not None
        and CRUNCH_HARD - EARLY <= one.duration <= CRUNCH_HARD + CRUNCH_SLACK,
        "crunch must be stopped by a 1 s hard time limit.",
        expected=f"FAILURE with TimeLimitExceeded after ~{CRUNCH_HARD:g} s",
        observed=f"{summary(tl, result.id)}; {error or 'no error'}; crunch has "
        f"{setting(lab, 'crunch', 'time_limit')}",
        hint=f"time_limit={CRUNCH_HARD:g} on crunch, no soft limit.",
    )
    try:
        pids = worker.wait_pool_replaced(one.pid, min(5.0, lab.remaining()))
    except Exception as exc:
        raise LabFailure(f"The hard limit should cost crunch its process.\nobserved: {exc}") from None
    again = lab.send("crunch", 0.1)
    lab.wait(again)
    later = tl.attempts(again.id)
    expect(
        tl.state(again.id) == "SUCCESS" and later and later[0].pid != one.pid,
        "The worker should carry on with a fresh pool process.",
        expected=f"crunch(0.1) succeeds in a new process (pool now {pids}, old pid {one.pid})",
        observed=summary(tl, again.id),
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("results-unchanged", needs=["export-soft-limit", "crunch-hard-limit"])
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
    got = {name: (lab.timeline.state(r.id), lab.result(r)) for name, r in results.items()}
    bad = {name: g for name, g in got.items() if g != ("SUCCESS", wanted[name])}
    expect(
        not bad,
        "Short runs must not trip any limit, and each task returns what the skeleton returns.",
        expected=f"SUCCESS with {wanted}",
        observed=f"(state, result): {bad}",
        hint="keep the task bodies' return values; only decorators and the cleanup change.",
    )
    stray = len(http_stub.hits("/cleanup-none"))
    expect(
        not stray,
        "Cleanup belongs in the SoftTimeLimitExceeded handler only.",
        expected="no cleanup call for an export that finished",
        observed=f"{stray} cleanup call(s) for export_csv(3) that finished in 0.3 s",
        hint="POST the cleanup in `except SoftTimeLimitExceeded:`, not in a `finally:` or after the loop.",
    )


# -- a whole worker dies (kill -9 of the main process and its pool) --------------------------------------
# Last in the module on purpose: the rescue worker's 3 s visibility timeout and 1 s sweep cover the
# namespace's whole key prefix (kombu keeps one unacked hash per prefix on Redis), so while it runs it would
# also re-queue other workers' late-acked messages. Nothing runs after it; its fixture then stops it.


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
    # Only the rescuer sweeps with a short visibility timeout (nothing to set on RabbitMQ): a crashing worker
    # that swept too could requeue its own sms if delivery-to-ack took over 3 s on a loaded machine.
    settings = lab_session.ns.redelivery_settings(VISIBILITY_TIMEOUT)
    worker = run.start_worker("crash", concurrency=2, queues=[queue])
    report = run.send("render_report", "r-crash", RUN_SECONDS, queue=queue)
    sms = run.send("send_sms", "+15550100", RUN_SECONDS, queue=queue)
    run.wait_until(lambda tl: tl.accepted(report.id) and tl.accepted(sms.id), "both tasks to start", 15.0)
    worker.settle()  # the early ack of send_sms is done (Celery sends task-started a loop turn before it)
    worker.crash()  # kill -9 of the whole worker, noted in the timeline
    killed_at = time.monotonic()
    rescue = run.start_worker("rescue", concurrency=2, queues=[queue], settings=settings)
    yield Crash(run, report, sms, worker.hostname, killed_at)
    rescue.stop()
    if lab_session.broker.is_amqp:  # the queue's own exchange (the namespace removes the queue)
        with contextlib.suppress(Exception), lab_session.app.connection_for_write() as conn:
            conn.default_channel.exchange_delete(queue)


@pytest.mark.together("crash")
@pytest.mark.points(3)
@pytest.mark.deadline(30)
@pytest.mark.rules("report-survives-worker-crash")
def test_late_ack_task_survives_a_worker_crash(lab, crash):
    """Worker SIGKILLed mid-task: render_report comes back on a fresh worker and completes"""
    lab.judge_from(crash.tl)  # the verdict is the fixture's crash: -v shows that timeline
    tl = crash.tl
    with contextlib.suppress(LabFailure):  # judged below, with what was seen
        crash.run.wait(crash.report, crash.left())
    tries = tl.attempts(crash.report.id)
    back = [a for a in tries[1:] if a.hostname != crash.crashed]
    late = option(lab, "render_report", "acks_late")
    expect(
        tl.state(crash.report.id) == "SUCCESS" and back,
        "render_report was running when its worker was killed (kill -9, no warning); it must not be lost.",
        expected=f"a second attempt on the rescue worker within {REDELIVERY_BOUND:.0f} s, then SUCCESS",
        observed=f"{summary(tl, crash.report.id)}; render_report has "
        f"{setting(lab, 'render_report', 'acks_late')}",
        hint="acks_late=True on render_report: the broker then still holds the message when the worker dies."
        if not late
        else "it came back but did not succeed: see the attempts above (a time limit under 1.5 s?).",
    )
    expect(
        back[-1].redelivered,
        "The broker should flag the second delivery as a redelivery.",
        expected="delivery_info['redelivered'] set on the rescue worker's attempt",
        observed=summary(tl, crash.report.id),
    )


@pytest.mark.together("crash")
@pytest.mark.points(1)
@pytest.mark.deadline(30)
@pytest.mark.rules("sms-at-most-once")
def test_early_ack_task_is_not_redelivered(lab, crash):
    """Worker SIGKILLed mid-task: send_sms is not run again (at most once)"""
    lab.judge_from(crash.tl)
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
        observed=f"{summary(tl, crash.sms.id)}; send_sms has {setting(lab, 'send_sms', 'acks_late')}",
        hint="acks_late=False on send_sms (Celery's default; set it per task to override a global "
        "task_acks_late=True).",
    )
