"""Autograder: graceful shutdown and the worker's life cycle (labs/shutdown/README.md has the contract).

The grader sends real prefork workers the signals a deploy sends: SIGQUIT (a cold shutdown, with the
learner's soft shutdown in front of it) and SIGTERM (a warm one). It judges from the workers' events
(which process ran each attempt, when the main process cancelled it, whether the broker flagged the next
delivery as redelivered), from the life-cycle marks on the timeline (signals sent, pool processes
started, the worker's exit), from the pool pids, from the result backend, from the settings the learner's
``app.conf`` holds, and from an HTTP server the import reports every row to.

No verdict depends on chance: nothing here is random; every wait is for an observable event (a task
started, cancelled or finished, a process exited, a request arrived) bounded by the test's deadline.
Where an asynchronous exception can land (the soft limit fires inside a row's POST) the rule allows for
it: at most the row in flight is imported twice.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from celery.result import AsyncResult

from celerylab.engine import runtime
from celerylab.engine.timeline import Timeline
from celerylab.grading.session import LabFailure, LabRun, LabSession, expect

SOFT_SHUTDOWN = 2.0  # worker_soft_shutdown_timeout of the contract
MAX_TASKS = 3  # worker_max_tasks_per_child
MAX_MEMORY = 100_000  # worker_max_memory_per_child, KiB
LONG = 4.0  # transcode / long receipt in the cold shutdown: still running when the 2 s are up (with 2 s
# to spare: a cancel that a loaded machine delays by a second or two must still find them running)
QUICK = 1.0  # the receipt that the soft shutdown lets finish
CANCEL_EARLY = 0.4  # the cancel never comes sooner than SOFT_SHUTDOWN after the signal, minus this
BACK_BOUND = 15.0  # signal -> transcode back on the rescue worker (seen: ~3 s)
REQUEUE_BOUND = 3.0  # the deploy worker's exit -> its given-back message started on the rescue worker
LATE_MARGIN = 1.0  # after transcode came back: a late-acked receipt comes back in the same restore, at once
# import_rows: 12 rows x 0.1 s (and a POST each). The stub holds the first report of row HOLD_ROW for
# HOLD_SECONDS (a reply trickled a byte at a time, so no client read timeout fires): an attempt that reaches
# it is still running when its 1 s limit comes, however slow or fast the host, and however late the worker's
# main process starts the limit's timer under load (it starts it when it reads the child's ack). Without
# the hold, a timer ~0.5 s late let attempt 1 finish all 12 rows. The attempt after the cut has ~0.6 s of
# rows left, far from its own limit: an attempt that ends within a few ms of its soft limit can be reported
# FAILURE by the main process after its process reported success.
SOFT, ROWS, ROW_SECONDS = 1.0, 12, 0.1
HOLD_ROW, HOLD_SECONDS = 6, 6.0
LIMIT_LATE = 1.2  # an attempt cut by its limit ends within this of SOFT (the timer is late under load)
BIG_KB = 80_000  # a thumbnail that leaks ~80 MB: past the 100 MB limit whatever the baseline (~60 MB)
PROBE_SLACK = 1.0  # is_alive must answer within its timeout plus this


def conf(lab: LabRun, name: str) -> Any:
    """A setting of the learner's app as the worker reads it (their app.conf, Celery's default if unset)."""
    try:
        return runtime.find_app(lab.module()).conf.get(name)
    except Exception as exc:  # the probe passed, so this is unlikely; a verdict must never crash on it
        return f"(unreadable: {type(exc).__name__})"


def summary(tl: Timeline, uuid: str, t0: float | None = None) -> str:
    """``send_receipt[ab12cd]: SUCCESS; #1 on deploy 0.0-1.0 s: success``, times from ``t0`` (the signal)."""
    t0 = t0 if t0 is not None else min((a.start for a in tl.attempts(uuid)), default=0.0)
    where = ", ".join(
        f"#{a.number} on {a.hostname.split('@')[0]} {a.start - t0:.1f}-"
        + (f"{a.end - t0:.1f} s" if a.end is not None else "? s")
        + f": {a.outcome}"
        + (" (redelivered)" if a.redelivered else "")
        for a in tl.attempts(uuid)
    )
    return f"{tl.describe(uuid).split(',')[0]}; {where or 'no attempt'}"


def backend_state(result: AsyncResult) -> str:
    try:
        return result.state
    except Exception as exc:  # the backend did not answer: say so in the verdict
        return f"(unreadable: {type(exc).__name__})"


W1 = {"concurrency": 2}  # `w1`, the default queue's worker: lab.worker("w1", **W1)


class Fleet:
    """The grade's own workers by name, each on its own queue so that none takes another's tasks, each
    started the first time a test asks for it: a group of tests starts only those it uses."""

    def __init__(self, session: LabSession, specs: dict[str, dict[str, Any]]) -> None:
        self.session, self.specs = session, specs
        self.started: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.started:
            self.started[name] = self.session.start_fleet({name: self.specs[name]})[name]
        return self.started[name]


@pytest.fixture(scope="module")
def fleet(lab_session: LabSession) -> Fleet:
    """`deploy` (the cold shutdown), `recycler` (one pool process, upkeep every 0.25 s instead of Celery's
    5 s, so a replacement starts at once), `w2` (for the liveness probe) and `successor` (takes over the
    default queue after w1's warm shutdown); `w1` is the session's reused worker (W1)."""
    ns = lab_session.ns
    spare = ns.queue_name("spare")  # nothing is ever sent there
    return Fleet(
        lab_session,
        {
            "deploy": {"concurrency": 3, "queues": [ns.queue_name("deploy")]},
            "recycler": {
                "concurrency": 1,
                "queues": [ns.queue_name("recycle")],
                "settings": {runtime.POOL_MAINTENANCE: 0.25},
            },
            "w2": {"concurrency": 1, "queues": [spare]},
            "successor": {"concurrency": 2, "queues": [spare]},
        },
    )


# -- a cold shutdown (SIGQUIT), with the soft shutdown in front of it -------------------------------------
# One deploy, three verdicts: the soft shutdown's window, transcode coming back, the receipt not coming back.


@dataclass
class Deploy:
    run: LabRun
    transcode: AsyncResult
    receipt: AsyncResult  # LONG: still running when the window closes
    quick: AsyncResult  # QUICK: finishes inside the window
    host: str
    rescue: str
    signalled: float  # time.time() of the SIGQUIT
    exit_code: int | None  # None: still running 12 s after the signal
    exited: float  # time.time() the grader saw it exit (or gave up waiting)

    @property
    def tl(self) -> Timeline:
        return self.run.timeline

    def left(self) -> float:
        """Until a message the worker gave back has had time to reach the rescue worker: both brokers
        requeue it as the worker's connection closes (Redis: the worker restores it; RabbitMQ: the broker),
        and the rescue worker is consuming by then."""
        return max(0.1, min(self.signalled + BACK_BOUND, self.exited + REQUEUE_BOUND) - time.time())


@pytest.fixture(scope="module")
def deploy(lab_session: LabSession, fleet):
    """Worker `deploy` runs transcode (4 s), a receipt (4 s) and a quick receipt (1 s); the grader sends
    it SIGQUIT, starts worker `rescue` on the same queue, and waits for `deploy` to exit."""
    run = LabRun(lab_session, 60.0)
    worker = fleet["deploy"]
    queue = worker.queues[0]  # only deploy and rescue consume it
    jobs = (
        run.send("transcode", "v-1", LONG, queue=queue),
        run.send("send_receipt", "o-long", LONG, queue=queue),
        run.send("send_receipt", "o-quick", QUICK, queue=queue),
    )
    run.wait_until(lambda tl: all(tl.accepted(r.id) for r in jobs), "the three tasks to start", 15.0)
    worker.settle()  # the receipts' early acks are done (Celery sends task-started a loop turn before them)
    signalled = worker.send_signal(signal.SIGQUIT)
    rescue = run.start_worker("rescue", concurrency=2, queues=[queue])
    code = worker.wait_exit(max(0.0, signalled + 12.0 - time.time()))
    yield Deploy(run, *jobs, worker.hostname, rescue.hostname, signalled, code, time.time())
    worker.stop()
    rescue.stop()
    if lab_session.broker.is_amqp:  # the queue's own exchange (the namespace removes the queue)
        with contextlib.suppress(Exception), lab_session.app.connection_for_write() as conn:
            conn.default_channel.exchange_delete(queue)


def cancelled_at(d: Deploy, uuid: str) -> float | None:
    """Seconds from the signal to the main process cancelling ``uuid`` on `deploy`, or None."""
    hits = [e for e in d.tl.events("task-cancelled", uuid) if e.hostname == d.host]
    return hits[0].timestamp - d.signalled if hits else None


@pytest.mark.together("deploy")
@pytest.mark.points(2)
@pytest.mark.deadline(30)
@pytest.mark.rules("soft-shutdown")
def test_soft_shutdown_lets_short_tasks_finish(lab, deploy):
    """SIGQUIT: the 2 s soft shutdown lets the 1 s receipt finish, then cancels what still runs"""
    lab.judge_from(deploy.tl)
    d, tl = deploy, deploy.tl
    timeout = conf(lab, "worker_soft_shutdown_timeout")
    expect(
        timeout == SOFT_SHUTDOWN,
        "The soft shutdown must last exactly 2 s.",
        expected=f"app.conf.worker_soft_shutdown_timeout = {SOFT_SHUTDOWN:g}",
        observed=f"worker_soft_shutdown_timeout = {timeout!r}"
        + (" (off: the default)" if not timeout else ""),
        hint=f"app.conf.worker_soft_shutdown_timeout = {SOFT_SHUTDOWN:g} in tasks.py (a worker setting).",
    )
    quick = tl.attempts(d.quick.id)  # its pool process reports the end (the main process may be too busy)
    expect(
        len(quick) == 1 and quick[0].hostname == d.host and quick[0].outcome == "success",
        "The receipt had 1 s left when SIGQUIT came: the soft shutdown must let it finish.",
        expected=f"send_receipt(o-quick) SUCCESS on deploy, within the {SOFT_SHUTDOWN:g} s soft shutdown",
        observed=summary(tl, d.quick.id, d.signalled) + f"; result backend: {backend_state(d.quick)}",
        hint="a cold shutdown cancels running tasks at once unless worker_soft_shutdown_timeout gives them "
        "time first.",
    )
    # The cancel comes after the window, never before it. How long after depends on the machine: on a
    # loaded one (or a slow RabbitMQ cancel) the 4 s tasks may even finish first; the exact window is
    # judged from the setting above, so only "not early" and "gone" are judged here.
    when = [cancelled_at(d, r.id) for r in (d.transcode, d.receipt)]
    early = [w for w in when if w is not None and w < SOFT_SHUTDOWN - CANCEL_EARLY]
    shown = ", ".join("never" if w is None else f"{w:.1f} s" for w in when)
    expect(
        not early and d.exit_code is not None,
        f"The worker cancels what still runs only after the soft shutdown's {SOFT_SHUTDOWN:g} s, then exits.",
        expected=f"transcode and the {LONG:g} s receipt cancelled ~{SOFT_SHUTDOWN:g} s after SIGQUIT; "
        "the worker gone",
        observed=f"cancelled after: {shown}; worker "
        + ("still running 12 s after SIGQUIT" if d.exit_code is None else f"exited with code {d.exit_code}"),
        hint=f"worker_soft_shutdown_timeout = {SOFT_SHUTDOWN:g} exactly (a longer one lets a deploy hang).",
    )


# -- the soft time limit and the checkpoint --------------------------------------------------------------
# One import, two verdicts: the limit that interrupts each attempt, and the retry that carries on.


@dataclass
class Import:
    run: LabRun
    result: AsyncResult
    rows: list[Any]  # the rows the stub was told about, in order

    @property
    def tl(self) -> Timeline:
        return self.run.timeline


@pytest.fixture(scope="module")
def imported(lab_session: LabSession, http_stub, fleet):
    """import_rows(12 rows, one of them held by the stub) on worker w1, until it is finished (or 15 s)."""
    run = LabRun(lab_session, 30.0)
    held = threading.Event()

    def report(request):  # the first report of HOLD_ROW is held: the attempt that sent it meets its limit
        body = request.json()
        if isinstance(body, dict) and body.get("row") == HOLD_ROW and not held.is_set():
            held.set()
            return ("trickle", HOLD_SECONDS)
        return 200, {"ok": True}

    url = http_stub.handle("/rows", report)
    run.worker("w1", **W1)
    result = run.send("import_rows", "b-1", ROWS, url)
    with contextlib.suppress(LabFailure):  # judged by the tests, with what was seen
        run.wait(result, 15.0)
    hits = http_stub.hits("/rows")
    bodies = [h.json() if h.body else None for h in hits]
    return Import(run, result, [b.get("row") if isinstance(b, dict) else b for b in bodies])


@pytest.mark.together("imported")
@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("import-soft-limit", needs=["import-resumes"])
def test_import_has_a_one_second_soft_limit(lab, imported):
    """import_rows: each attempt is stopped by a 1 s soft limit (SoftTimeLimitExceeded inside it)"""
    lab.judge_from(imported.tl)
    tl, uuid = imported.tl, imported.result.id
    soft = lab.task_options("import_rows").get("soft_time_limit")
    hard = lab.task_options("import_rows").get("time_limit")
    expect(
        soft == SOFT and (not hard or hard > SOFT),
        "import_rows needs a soft limit of exactly 1 s per attempt (and no hard limit at or under it).",
        expected=f"soft_time_limit={SOFT:g}",
        observed=f"import_rows has soft_time_limit={soft!r}, time_limit={hard!r}",
        hint=f"soft_time_limit={SOFT:g} on import_rows (per task, or a global task_soft_time_limit).",
    )
    tries = tl.attempts(uuid)
    durations = [a.duration for a in tries]
    # ~1.3 s of rows: the first attempt must be cut at ~1 s, and so must every one after it but the last,
    # which may finish sooner (what the task does once interrupted is rule import-resumes).
    cut = durations[:1] + durations[1:-1]
    interrupted = len(tries) >= 2 or len(set(imported.rows)) < ROWS  # attempt 1 did not do every row
    expect(
        tries
        and None not in durations
        and interrupted
        and all(SOFT - 0.3 <= d <= SOFT + LIMIT_LATE for d in cut)
        and durations[-1] <= SOFT + LIMIT_LATE,
        f"import_rows({ROWS} rows, {ROWS * ROW_SECONDS:g} s) must be cut by its soft limit every ~1 s.",
        expected=f"every attempt but the last ends ~{SOFT:g} s after it started, before its rows are done",
        observed=f"{summary(tl, uuid)}; {len(set(imported.rows))} of {ROWS} rows reported",
        hint=f"soft_time_limit={SOFT:g} on import_rows.",
    )


@pytest.mark.together("imported")
@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("import-resumes", needs=["import-soft-limit"])
def test_import_resumes_from_its_checkpoint(lab, imported):
    """import_rows past its soft limit: retried at once from the checkpoint, every row once, SUCCESS"""
    lab.judge_from(imported.tl)
    tl, uuid, rows = imported.tl, imported.result.id, imported.rows
    tries = tl.attempts(uuid)
    missing = sorted(set(range(ROWS)) - set(rows))
    repeats = len(rows) - len(set(rows))
    interruptions = max(0, len(tries) - 1)
    seen = f"{summary(tl, uuid)}; {len(rows)} rows reported, {len(set(rows))} distinct"
    if (eta := tl.pending_eta(uuid)) is not None and eta > time.time():
        hint = (
            f"the retry is parked for {eta - time.time():.0f} s: retry with countdown=0 "
            "(default_retry_delay is 180 s)."
        )
    elif (
        len(tries) == 1
        and missing
        and tries[0].outcome == "success"
        and (tries[0].duration or 0) >= SOFT - 0.3  # it ran until the limit, then returned
    ):
        hint = (
            f"the soft limit stopped it after {len(set(rows))} rows and it returned: on "
            'SoftTimeLimitExceeded retry from the first row not done (self.retry(kwargs={"start": done}, '
            "countdown=0)), do not return."
        )
    elif len(tries) < 2:
        hint = "nothing interrupted it: the soft limit comes first (rule import-soft-limit)."
    elif repeats > interruptions:
        hint = (
            "each retry started over: pass the first row not done in the retry "
            '(self.retry(kwargs={"start": done}, countdown=0)) and loop from it.'
        )
    elif missing:
        hint = (
            "rows were skipped or it stopped early: on SoftTimeLimitExceeded retry from the first row not "
            "done (do not return, do not re-raise)."
        )
    else:
        hint = "it must end SUCCESS: see the attempts above (out of retries? max_retries)."
    expect(
        tries[-1:]
        and tries[-1].outcome == "success"  # as its process reported it (see ROWS)
        and len(tries) >= 2
        and not missing
        and repeats <= interruptions,
        f"import_rows({ROWS} rows, {ROWS * ROW_SECONDS:g} s) must resume where the soft limit stopped it.",
        expected=f"attempts of ~{SOFT:g} s, each retried at once from the first row not done; "
        f"rows 0-{ROWS - 1} each imported once (the row in flight at a limit may repeat); then SUCCESS",
        observed=seen + (f"; missing rows {missing[:8]}" if missing else "") + f"; {repeats} repeated",
        hint=hint,
    )


# -- recycling pool processes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recycler(fleet):
    """One worker with one pool process on its own queue: which process ran what is then unambiguous."""
    worker = fleet["recycler"]
    return worker, worker.queues[0]


def thumbnails(lab: LabRun, queue: str, sizes: list[int]) -> list[int | None]:
    """Render one thumbnail per size, one after the other; the pid of the pool process that ran each."""
    pids = []
    for n, kb in enumerate(sizes):
        result = lab.send("render_thumbnail", f"img-{n}", kb, queue=queue)
        lab.wait(result, 10.0)
        tries = lab.timeline.attempts(result.id)
        pids.append(tries[-1].pid if tries else None)
    return pids


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("recycle-every-3", needs=["recycle-on-memory"])
def test_pool_process_replaced_every_three_tasks(lab, recycler):
    """worker_max_tasks_per_child: a new pool process after every 3 tasks"""
    worker, queue = recycler
    pids = thumbnails(lab, queue, [1] * 6)
    groups = [pids[i : i + MAX_TASKS] for i in range(0, len(pids), MAX_TASKS)]
    ok = all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == len(groups)
    setting = conf(lab, "worker_max_tasks_per_child")
    expect(
        ok,
        "The leaking render_thumbnail must not grow one process forever: recycle it every 3 tasks.",
        expected="6 thumbnails on one pool process: pids A A A B B B",
        observed="pids " + " ".join(str(p) for p in pids) + f"; worker_max_tasks_per_child = {setting!r}",
        hint=f"app.conf.worker_max_tasks_per_child = {MAX_TASKS} in tasks.py (a worker setting).",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("recycle-on-memory", needs=["recycle-every-3"])
def test_pool_process_replaced_past_the_memory_limit(lab, recycler):
    """worker_max_memory_per_child: the process that grew past ~100 MB is replaced after its task"""
    worker, queue = recycler
    pids = thumbnails(lab, queue, [1, BIG_KB, 1])
    setting = conf(lab, "worker_max_memory_per_child")
    expect(
        setting == MAX_MEMORY and pids[0] == pids[1] != pids[2],
        "A process that leaked ~80 MB in one task must be replaced after it, not after 3 tasks.",
        expected=f"small, {BIG_KB // 1000} MB, small thumbnails: pids A A B (checked after each task)",
        observed="pids " + " ".join(str(p) for p in pids) + f"; worker_max_memory_per_child = {setting!r}",
        hint=f"app.conf.worker_max_memory_per_child = {MAX_MEMORY:_} (KiB, ~100 MB) in tasks.py.",
    )


# -- liveness --------------------------------------------------------------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("liveness-own-node")
def test_liveness_probe_asks_its_own_node(lab, fleet):
    """is_alive(hostname): True for a worker that answers, False for a hung one while others answer"""
    up, hung = lab.worker("w1", **W1), fleet["w2"]
    module = lab.module()

    def probe(host: str, timeout: float) -> tuple[Any, float]:
        """is_alive's answer and how long it took, in a thread: a probe that never returns is a verdict."""
        answer: list[Any] = [f"did not return within {timeout + PROBE_SLACK + 2:g} s"]

        def call() -> None:
            try:
                answer[0] = module.is_alive(host, timeout=timeout)
            except Exception as exc:  # the learner's function: its error is the verdict
                answer[0] = f"raised {type(exc).__name__}: {exc}"[:160]

        begun = time.monotonic()
        thread = threading.Thread(target=call, name="celerylab-is-alive", daemon=True)
        thread.start()
        thread.join(timeout + PROBE_SLACK + 2)
        return answer[0], time.monotonic() - begun

    alive, took = probe(up.hostname, 1.0)
    expect(
        alive is True,
        "is_alive must be True for a worker that answers a ping.",
        expected=f"is_alive({up.hostname!r}) -> True",
        observed=f"-> {alive!r} after {took:.1f} s",
        hint="app.control.ping(destination=[hostname], timeout=timeout), True if that node replied.",
    )
    hung.send_signal(signal.SIGSTOP)  # hung: alive as a process, deaf as a worker
    try:
        dead, took = probe(hung.hostname, 0.5)
    finally:
        hung.stop()
    expect(
        dead is False and took <= 0.5 + PROBE_SLACK,
        "A hung worker must fail its liveness probe, even while another worker answers.",
        expected=f"is_alive({hung.hostname!r}, timeout=0.5) -> False within {0.5 + PROBE_SLACK:g} s",
        observed=f"-> {dead!r} after {took:.1f} s (worker w1 was answering)",
        hint="ping only that node (destination=[hostname]) with the timeout given: a pong from any other "
        "worker says nothing about this one.",
    )
    unknown, took = probe(lab.ns.hostname("nobody"), 0.5)
    expect(
        unknown is False and took <= 0.5 + PROBE_SLACK,
        "A worker that does not exist is not alive.",
        expected="is_alive('nobody@...', timeout=0.5) -> False",
        observed=f"-> {unknown!r} after {took:.1f} s",
        hint="return True only if a reply came from that hostname.",
    )


# -- warm shutdown, and the results -----------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.deadline(25)
@pytest.mark.rules("results-unchanged")
def test_warm_shutdown_finishes_running_tasks(lab, http_stub, fleet):
    """SIGTERM: running tasks finish with their results, a task sent after is left for the next worker"""
    worker = lab.worker("w1", **W1)
    url = http_stub.script("/rows-none", [200])
    running = {
        "transcode": lab.send("transcode", "v-2", QUICK),
        "send_receipt": lab.send("send_receipt", "o-2", QUICK),
    }
    lab.wait_until(lambda tl: all(tl.accepted(r.id) for r in running.values()), "both tasks to start", 10.0)
    worker.settle()  # the receipt's early ack is done before the signal
    signalled = worker.send_signal(signal.SIGTERM)
    later = {
        "import_rows": lab.send("import_rows", "b-2", 3, url),
        "render_thumbnail": lab.send("render_thumbnail", "img-w", 1),
    }
    code = worker.wait_exit(min(10.0, lab.remaining()))
    tl = lab.timeline
    on_old = [n for n, r in later.items() if any(a.hostname == worker.hostname for a in tl.attempts(r.id))]
    expect(
        code is not None and not on_old,
        "A warm shutdown takes no new task: what comes after SIGTERM waits for the next worker.",
        expected="the worker exits by itself once its running tasks are done, and starts nothing new",
        observed=("still running after 10 s" if code is None else f"exit code {code}")
        + (f"; it started {', '.join(on_old)} after SIGTERM" if on_old else ""),
    )
    with contextlib.suppress(Exception):  # the next worker takes over the queue (a failure shows below)
        fleet["successor"].resume_queue(lab.ns.queue)
    results = {**running, **later}
    lab.wait(list(results.values()))
    wanted = {
        "transcode": "video v-2",
        "send_receipt": "receipt o-2",
        "import_rows": 3,
        "render_thumbnail": "a pid (int)",
    }
    got = {name: (tl.state(r.id), lab.result(r)) for name, r in results.items()}
    bad = {
        name: g
        for name, g in got.items()
        if g[0] != "SUCCESS"
        or (g[1] != wanted[name] if name != "render_thumbnail" else type(g[1]) is not int)
    }
    early = [n for n in running if tl.attempts(running[n].id)[-1].hostname != worker.hostname]
    began = min(a.start for r in running.values() for a in tl.attempts(r.id))
    expect(
        not bad and not early,
        "Every task returns what the skeleton returns; the two running at SIGTERM finish on that worker.",
        expected=f"SUCCESS with {wanted}; transcode and send_receipt done before the worker exits",
        observed=f"(state, result): {bad or got}"
        + (f"; ran again elsewhere: {early}" if early else "")
        + f"; SIGTERM {signalled - began:.1f} s after they started",
        hint="keep the task bodies' return values (and results: no ignore_result).",
    )


# -- after the cold shutdown: what came back ---------------------------------------------------------------
# Last in the module on purpose: transcode runs again on the rescue worker (4 s) while the tests above run.


@pytest.mark.together("deploy")
@pytest.mark.points(2)
@pytest.mark.deadline(30)
@pytest.mark.rules("transcode-requeued")
def test_cancelled_transcode_runs_again_elsewhere(lab, deploy):
    """SIGQUIT: transcode, cancelled by the cold shutdown, is redelivered to the rescue worker and succeeds"""
    lab.judge_from(deploy.tl)
    d, tl = deploy, deploy.tl

    def done_or_back(t: Timeline) -> bool:
        tries = t.attempts(d.transcode.id)
        return t.state(d.transcode.id) == "SUCCESS" or any(a.hostname == d.rescue for a in tries)

    with contextlib.suppress(LabFailure):  # judged below, with what was seen
        d.run.wait_until(done_or_back, "transcode back on the rescue worker", d.left())
        d.run.wait(d.transcode, LONG + 3.0)
    tries = tl.attempts(d.transcode.id)
    if tries and tries[-1].outcome == "success" and (len(tries) == 1 or tries[-1].hostname == d.rescue):
        return  # came back on the rescue worker (or, when the cancel came too late, finished in place)
    late = lab.task_options("transcode").get("acks_late")
    expect(
        False,
        "transcode was running when the cold shutdown cancelled it; it is idempotent and must not be lost.",
        expected=f"attempt 1 cancelled on deploy, attempt 2 on rescue (redelivered), SUCCESS within "
        f"{BACK_BOUND:.0f} s of SIGQUIT",
        observed=summary(tl, d.transcode.id, d.signalled)
        + f"; result backend: {backend_state(d.transcode)}; transcode has acks_late={late!r}",
        hint="acks_late=True on transcode: a cancelled task whose message was never acked goes back to the "
        "queue"
        if not late
        else "it did not come back: see the attempts above.",
    )


@pytest.mark.together("deploy")
@pytest.mark.points(1)
@pytest.mark.deadline(30)
@pytest.mark.rules("receipt-at-most-once")
def test_cancelled_receipt_is_not_run_again(lab, deploy):
    """SIGQUIT: the receipt cancelled mid-run is not sent again (at most once)"""
    lab.judge_from(deploy.tl)
    d, tl = deploy, deploy.tl

    def back(t: Timeline) -> bool:  # the restore that brings transcode back would bring a late receipt too
        return any(a.hostname == d.rescue for a in t.attempts(d.transcode.id))

    def again(t: Timeline) -> bool:
        return len(t.attempts(d.receipt.id)) > 1

    with contextlib.suppress(LabFailure):
        d.run.wait_until(lambda t: back(t) or again(t), "a redelivery", d.left())
    returned = [a.start for a in tl.attempts(d.transcode.id) if a.hostname == d.rescue]
    margin = LATE_MARGIN - (time.time() - returned[0]) if returned else LATE_MARGIN
    with contextlib.suppress(LabFailure):  # unless transcode came back long enough ago
        d.run.wait_until(again, "send_receipt to come back", max(0.0, margin))
    late = lab.task_options("send_receipt").get("acks_late")
    expect(
        not again(tl),
        "send_receipt emails a customer: after a cold shutdown cancelled it, it must not run a second time.",
        expected="one attempt (cancelled); the message was acked when the worker took it",
        observed=summary(tl, d.receipt.id, d.signalled) + f"; send_receipt has acks_late={late!r}",
        hint="acks_late=False on send_receipt (Celery's default; set it per task to override a global "
        "task_acks_late=True).",
    )
