"""Autograder: prefetch, acks_late, rate limits and concurrency (labs/prefetch/README.md has the contract).

Real prefork workers on the learner's tasks.py. The grader judges from the workers' events (which worker
received and started which task, and when) and from remote control (each worker's prefetch count, the tasks
it holds reserved, its pool size), so a setting made in app.conf, config_from_object, a base class or a
decorator counts the same.

Nothing here is random. Where the verdict is "the worker never fetched X while Y ran", the window is Y's
whole run (seconds), and a worker with room in its prefetch window fetches within milliseconds of the slot
freeing up. In the two-worker story, worker `b` may only fetch once `a` holds all its own settings let it
hold (waited for by remote control), so a hoarding `a` is seen hoarding on every run, never beaten to the
queue by `b`.
"""

from __future__ import annotations

import contextlib
import statistics

import pytest
from celery.app.defaults import DEFAULTS

from celerylab.engine import inspection, runtime
from celerylab.engine.timeline import ATTEMPT_START, Timeline
from celerylab.grading.session import LabFailure, LabRun, LabSession, expect

HOLD_SECONDS = 1.5  # transcode's run while the grader watches what else the worker fetches
STORY_SECONDS = 2.0  # the story's long job: the idle worker runs every thumbnail well within it
SHORTS = 3
FILL_WAIT = 4.0  # until worker a holds what its window allows (milliseconds; more on a loaded machine)
RATE, RATE_CALLS = 1.0, 6  # notify_partner: 1 start a second per worker; 6 calls on two workers: ~2 s
# A start every 1 s on each worker: judged by each worker's mean gap, (last - first) / (starts - 1), so a late
# first start (the pool slow to pick it up on a loaded machine) moves it by half that delay at most. "2/s"
# gives 0.5 s, "30/m" 2 s, no limit ~0.03 s: a wrong limit passes, or a right one fails, only if a start is
# delayed by half a second more than the one before or after it.
MIN_MEAN_GAP, MAX_MEAN_GAP = 0.75, 1.6
RATE_WAIT = 9.0  # 6 calls at 1/s: ~2 s on two workers, 5 s if one worker took them all
CONCURRENCY = 3


@pytest.fixture(scope="module")
def queues(lab_session: LabSession):
    """A queue per scenario, so a worker idle from an earlier test never takes a task meant for another."""
    names = {key: lab_session.ns.queue_name(key) for key in ("single", "own", "pair", "idle")}
    yield names
    if lab_session.broker.is_amqp:  # each queue's own exchange (the namespace removes the queues)
        with contextlib.suppress(Exception), lab_session.app.connection_for_write() as conn:
            for name in names.values():
                conn.default_channel.exchange_delete(name)


def option(lab: LabRun, task: str, name: str):
    """The option's value on the task as the import probe saw it (a global task_* setting copied in)."""
    return lab.task_options(task).get(name)


def conf(lab: LabRun, key: str):
    """A setting of the learner's app as tasks.py leaves it (None if it cannot be read)."""
    with contextlib.suppress(Exception):  # the probe passed, so the import works; a verdict must not crash
        return runtime.find_app(lab.module()).conf.get(key)
    return None


def started(tl: Timeline, uuid: str) -> bool:
    return bool(tl.events(ATTEMPT_START, uuid))


def received_by(tl: Timeline, uuid: str, hostname: str) -> list[float]:
    return [e.timestamp for e in tl.events("task-received", uuid) if e.hostname == hostname]


def window_note(count: int | None, processes: int) -> str:
    """What a prefetch count says about the multiplier, for a verdict."""
    if count is None:
        return "the worker did not report a prefetch count"
    if count == 0:
        return "prefetch_count 0: no limit at all (worker_prefetch_multiplier = 0 means unlimited, not none)"
    multiplier = count / processes
    return f"prefetch_count {count} = {processes} process(es) x worker_prefetch_multiplier {multiplier:g}"


def disable_prefetch_note(lab: LabRun) -> str:
    if not conf(lab, "worker_disable_prefetch"):
        return ""
    return (
        "; worker_disable_prefetch is set: Celery applies it on Redis only (it logs that it ignores it on "
        "RabbitMQ) and it leaves the prefetch count as it is."
    )


def pair(lab: LabRun, queues: dict[str, str]):
    """Workers a and b (one process each, the learner's settings), started side by side on a queue nobody
    sends to; a then consumes the story's queue, and b joins it when the story says so.

    b is never on the story's queue and paused instead: on Redis a cancelled consumer may still have a BRPOP
    in flight, and a message it takes after the cancel goes back to the queue late and out of order (its
    log says "Requeuing undeliverable message ... No consumers")."""
    q = queues["pair"]
    a, b = lab.workers(["a", "b"], concurrency=1, queues=[queues["idle"]])
    if not a.consuming(q):
        a.resume_queue(q)
    return a, b, q


# -- the prefetch window ---------------------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("prefetch-one")
def test_prefetch_window_is_one_message_per_process(lab, queues):
    """A worker with 1 process asks the broker for 1 message at a time (prefetch_count 1)"""
    worker, _, _ = pair(lab, queues)  # -c 1 from the kit: only the multiplier is judged here
    count = inspection.prefetch_count(worker)
    expect(
        count == 1,
        "A worker keeps concurrency x worker_prefetch_multiplier unacknowledged messages; with long jobs "
        "in the queue every extra one is a message another worker could have started.",
        expected="prefetch_count 1 = 1 process x worker_prefetch_multiplier 1",
        observed=window_note(count, 1) + disable_prefetch_note(lab),
        hint="app.conf.worker_prefetch_multiplier = 1 (Celery's default is 4).",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("results-unchanged")
def test_tasks_return_what_the_skeleton_returns(lab, queues):
    """Every task succeeds with the result the skeleton returns"""
    _, _, q = pair(lab, queues)
    calls = {
        "transcode": (("c-1", 0.2), "c-1.mp4"),
        "thumbnail": (("c-1",), "c-1.jpg"),
        "notify_partner": (("c-1",), "notified c-1"),
    }
    results = {name: lab.send(name, *args, queue=q) for name, (args, _) in calls.items()}
    lab.wait(list(results.values()))
    got = {name: (lab.timeline.state(r.id), lab.result(r)) for name, r in results.items()}
    bad = {name: g for name, g in got.items() if g != ("SUCCESS", calls[name][1])}
    expect(
        not bad,
        "The settings change how work is handed out, not what the tasks do.",
        expected=", ".join(f"{name} -> SUCCESS {want!r}" for name, (_, want) in calls.items()),
        observed=f"(state, result): {bad}",
        hint="keep the task bodies and their return values as the skeleton has them.",
    )


# -- acks_late: a running message keeps its slot ---------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("transcode-acks-late")
def test_running_transcode_keeps_its_prefetch_slot(lab, queues):
    """Multiplier 1, one process: while transcode runs, the worker fetches nothing else"""
    # The kit sets the multiplier here (1), so only transcode's ack is judged, not the learner's multiplier.
    q = queues["single"]
    worker = lab.worker("single", concurrency=1, prefetch_multiplier=1, queues=[q])
    late = option(lab, "transcode", "acks_late")
    long = lab.send("transcode", "c-late", HOLD_SECONDS, queue=q)
    shorts = [lab.send("thumbnail", f"c-late-{i}", queue=q) for i in range(2)]
    lab.wait([long, *shorts])
    tl = lab.timeline
    run = tl.attempts(long.id)[0]
    assert run.end is not None  # it finished: lab.wait returned
    behind = [s for s in shorts if any(t < run.end for t in received_by(tl, s.id, worker.hostname))]
    waited = [run.end - min(received_by(tl, s.id, worker.hostname)) for s in behind]
    expect(
        not behind and late,
        f"transcode ran {run.duration:.1f} s on a worker with one process and a window of one message.",
        expected="nothing fetched while it ran: its unacked message fills the window (acks_late=True)",
        observed=(
            f"{len(behind)} thumbnail(s) fetched while transcode ran, then waited "
            f"{max(waited):.1f} s behind it; "
            if behind
            else "nothing was fetched meanwhile; "
        )
        + f"transcode has acks_late={late!r}",
        hint="acks_late=True on transcode: with an early ack its message is acked the moment it starts, "
        "the slot is free again, and the worker fetches one more message that must wait behind it.",
    )


# -- the worker's size -----------------------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("worker-concurrency")
def test_worker_without_c_runs_three_processes(lab, queues):
    """A worker started without -c runs the 3 pool processes tasks.py asks for"""
    # No -c on this worker's command line: the app's worker_concurrency decides.
    worker = lab.start_worker("own", concurrency=None, queues=[queues["own"]])
    try:
        size, pids = inspection.pool_size(worker), worker.pool_pids()
    finally:
        worker.stop()
    setting = conf(lab, "worker_concurrency")
    by_luck = size == CONCURRENCY and str(setting).strip() != str(CONCURRENCY)  # e.g. a 3-CPU machine
    expect(
        size == CONCURRENCY and len(pids) == CONCURRENCY and not by_luck,
        f"The worker must run {CONCURRENCY} pool processes on any machine.",
        expected=f"{CONCURRENCY} pool processes (worker_concurrency = {CONCURRENCY})",
        observed=f"{size} process(es) {pids}; worker_concurrency is {setting!r}"
        + (
            " (the default: the machine's CPU count)"
            if setting in (None, 0, DEFAULTS["worker_concurrency"])
            else ""
        )
        + ("; this machine happens to have that many CPUs" if by_luck else ""),
        hint=f"app.conf.worker_concurrency = {CONCURRENCY} (the default is the CPU count, which differs "
        "from machine to machine and in containers is often the host's).",
    )


# -- the story: two workers, one busy ----------------------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(25)
@pytest.mark.rules("prefetch-one", "transcode-acks-late")
def test_idle_worker_gets_the_short_tasks(lab, queues):
    """Two workers, one busy with transcode: every thumbnail runs on the idle one, none waits behind it"""
    a, b, q = pair(lab, queues)
    late = bool(option(lab, "transcode", "acks_late"))
    try:
        long = lab.send("transcode", "c-story", STORY_SECONDS, queue=q)
        shorts = [lab.send("thumbnail", f"c-story-{i}", queue=q) for i in range(SHORTS)]
        lab.wait_until(lambda tl: started(tl, long.id), "transcode to start on worker a", 10.0)
        window = inspection.prefetch_count(a)
        room = SHORTS if not window else min(SHORTS, max(0, window - (1 if late else 0)))
        held = inspection.wait_reserved(a, room, FILL_WAIT)  # what its settings let it hold, now held
        depth = lab.ns.queue_depth(q)
    finally:
        b.resume_queue(q)  # now b may fetch
    lab.wait([long, *shorts])
    tl = lab.timeline
    run = tl.attempts(long.id)[0]
    assert run.end is not None
    behind = [s for s in shorts if any(t < run.end for t in received_by(tl, s.id, a.hostname))]
    on_b = sum(1 for s in shorts if any(x.hostname == b.hostname for x in tl.attempts(s.id)))
    waits = [tl.attempts(s.id)[0].start - min(received_by(tl, s.id, a.hostname)) for s in behind]
    if window not in (None, 1):
        hint = "worker_prefetch_multiplier = 1: the window is then one message per process."
    elif not late:
        hint = (
            "multiplier 1 alone is not enough: with an early ack the running transcode no longer counts, "
            "so a fetches one more message behind it. acks_late=True on transcode."
        )
    else:
        hint = "see the attempts above: the thumbnails were fetched by a while it was busy."
    expect(
        not behind,
        f"Worker a ran transcode ({STORY_SECONDS:g} s) while worker b had nothing to do; the thumbnails "
        "should have gone to b.",
        expected=f"a holds no thumbnail while busy; b runs all {SHORTS}",
        observed=f"a held {len(held)} reserved (window: {window_note(window, 1)}; transcode "
        f"acks_late={late}), {depth} left on the broker for b; b ran {on_b} of {SHORTS}"
        + (f"; the held ones waited up to {max(waits):.1f} s" if waits else ""),
        hint=hint,
    )


# -- rate limits -------------------------------------------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(25)
@pytest.mark.rules("partner-rate-limit")
def test_rate_limit_is_per_worker(lab, queues):
    """Two workers run notify_partner: each starts it once a second, 2 a second in all"""
    _, b, q = pair(lab, queues)
    if not b.consuming(q):  # the story above made it join; unless it was deselected
        b.resume_queue(q)
    calls = [lab.send("notify_partner", f"c-rate-{i}", queue=q) for i in range(RATE_CALLS)]
    with contextlib.suppress(LabFailure):  # judged below from the starts seen
        lab.wait(calls, RATE_WAIT)
    tl = lab.timeline
    starts: dict[str, list[float]] = {}
    for call in calls:
        for attempt in tl.attempts(call.id)[:1]:
            starts.setdefault(attempt.hostname.split("@")[0], []).append(attempt.start)
    gaps = {w: [y - x for x, y in zip(sorted(s), sorted(s)[1:], strict=False)] for w, s in starts.items()}
    means = [statistics.mean(gs) for gs in gaps.values() if gs]
    done = sum(1 for call in calls if tl.state(call.id) == "SUCCESS")
    limit = option(lab, "notify_partner", "rate_limit")
    shown = "; ".join(
        f"{w}: {len(starts[w])} start(s), gaps {[round(g, 2) for g in gs]}" for w, gs in gaps.items()
    )
    observed = f"{done}/{RATE_CALLS} done (waited up to {RATE_WAIT:g} s); {shown or 'none started'}"
    observed += f"; rate_limit={limit!r}"
    if means and min(means) < MIN_MEAN_GAP:
        rate = 1 / max(min(means), 1e-3)
        expect(
            False,
            "notify_partner started faster than once a second on a worker.",
            expected=f"on each worker a start every {1 / RATE:g} s ({RATE:g}/s each, {2 * RATE:g}/s in all)",
            observed=observed + f" (about {rate:.1f}/s per worker, {2 * rate:.1f}/s across both)",
            hint="rate_limit is enforced by each worker's own token bucket, not across the cluster: for 2/s "
            'in all on two workers, rate_limit="1/s".'
            if limit
            else 'rate_limit="1/s" on notify_partner.',
        )
    expect(
        done == RATE_CALLS and means and max(means) <= MAX_MEAN_GAP,
        "notify_partner must run at the partner's rate, not slower: a limit far below it makes a backlog.",
        expected=f"{RATE_CALLS} calls done, on each worker a start every {1 / RATE:g} s",
        observed=observed,
        hint='rate_limit="1/s" (also written "60/m"); "1/m" is one a minute.',
    )
