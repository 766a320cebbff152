"""Autograder: monitoring (labs/monitoring/README.md has the contract).

The grader starts a real prefork worker (2 pool processes) the way a deployment that scrapes it would: a
free loopback port in ``$METRICS_PORT`` and an empty folder of its own in ``$PROMETHEUS_MULTIPROC_DIR``
(celerylab.engine.metrics). It scrapes ``/metrics`` over HTTP, runs a known workload (successes,
failures and two
slow charges with known sleep times), scrapes again, and judges the increase between the two scrapes the
way PromQL reads it: ``sum by (task, state)``, the share of runs within the 1.5 s SLO, ``histogram_quantile``
with Prometheus' own interpolation. Every sleep is far from the SLO bound (0.05 s and 1.7 s against 1.5 s:
a run only gets longer than its sleep, by milliseconds), and the true runtimes come from the timeline.
Queue length is judged while messages wait on the broker for real (the worker stops consuming, and the
grader counts them with its own LLEN or queue declare before it scrapes). Logs are read from the worker's
own output. Nothing here is random and no verdict depends on how fast the machine is.
"""

from __future__ import annotations

import math
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from celery.result import AsyncResult

from celerylab.engine import metrics
from celerylab.engine.metrics import Scrape, ScrapeError
from celerylab.engine.workers import Worker
from celerylab.grading.session import LabFailure, LabRun, LabSession, expect

SLO = 1.5  # seconds: the alert's threshold, "95% of charges within 1.5 s"
FAST, SLOW = 0.05, 1.7  # sleeps: far below and above the SLO bound (a run lasts its sleep plus milliseconds)
PLAN = {"ok": 14, "declined": 4, "slow": 2, "resize": 5}  # charge x 20 (16 succeed, 4 fail), resize x 5
P95_FACTOR = 2.0  # histogram_quantile(0.95) within this factor of the true p95
OVERHEAD = 1.0  # seconds a run may add to its sleep in the histogram's _sum (a loaded machine)
UNDER = 0.9  # ... and what it may lose: a runtime taken from events has the main process's clock readings
ENDPOINT_UP = 8.0  # from the worker's ping reply to its endpoint answering (worker_ready fires just after)
SETTLE = 3.0  # how long the counts may trail the workers' events (an exporter fed by events lags a little)
QUEUED = 5  # messages left waiting on the broker for the queue-length test
RUNTIME, TASKS, QUEUE = "celery_task_runtime_seconds", "celery_tasks_total", "celery_queue_length"


@dataclass
class Workload:
    """One known workload on worker w1, scraped before and after; several tests judge it."""

    run: LabRun
    worker: Worker
    url: str
    before: Scrape | None = None
    after: Scrape | None = None
    error: str = ""  # why the endpoint could not be scraped
    sent: dict[str, list[AsyncResult]] = field(default_factory=dict)  # PLAN key -> its tasks
    args: dict[str, str] = field(default_factory=dict)  # task id -> its first argument
    log: str = ""

    @property
    def increase(self) -> Scrape:
        assert self.before is not None and self.after is not None
        return self.after - self.before

    def ids(self, *kinds: str) -> list[str]:
        return [r.id for kind in (kinds or self.sent) for r in self.sent[kind]]

    def ended(self) -> Counter:
        """(registered task name, final state) -> how many, as the workers' events tell it."""
        tl = self.run.timeline
        return Counter((tl.names().get(i), tl.state(i)) for i in self.ids())

    def durations(self, kinds: tuple[str, ...]) -> list[float]:
        tl = self.run.timeline
        return sorted(a.duration for i in self.ids(*kinds) for a in tl.attempts(i) if a.duration is not None)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """The grade's folder for the workers' multiprocess files: made empty, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="celerylab-metrics-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def workload(scratch: Path, lab_session: LabSession) -> Workload:
    """Worker w1 runs the plan: the two slow charges first (they hold both pool processes, so the workload
    runs in both), then the fast ones. Scraped before and after."""
    run = LabRun(lab_session, 60.0)
    worker = run.worker("w1", concurrency=2, env=metrics.worker_env(scratch))
    w = Workload(run, worker, metrics.endpoint(worker.env))
    try:
        w.before = metrics.wait_scrape(w.url, ENDPOINT_UP)
    except ScrapeError as exc:
        w.error = str(exc)
    tag = secrets.token_hex(3)  # arguments no other text in the log contains

    def send(kind: str, task: str, arg: str, *args: object) -> AsyncResult:
        result = run.send(task, arg, *args)
        w.sent.setdefault(kind, []).append(result)
        w.args[result.id] = arg
        return result

    for n in range(PLAN["slow"]):
        send("slow", "charge", f"order-{tag}-s{n}", SLOW)
    run.wait_until(lambda tl: all(tl.accepted(r.id) for r in w.sent["slow"]), "both slow charges to start")
    for n in range(PLAN["ok"]):
        send("ok", "charge", f"order-{tag}-{n}", FAST)
    for n in range(PLAN["declined"]):
        send("declined", "charge", f"order-{tag}-d{n}", FAST, True)
    for n in range(PLAN["resize"]):
        send("resize", "resize", f"img-{tag}-{n}", FAST)
    run.wait([r for results in w.sent.values() for r in results], 30.0)
    if w.before is not None:
        w.after = _settled(w, len(w.ids()))
    w.log = worker.log()
    return w


def _settled(w: Workload, total: int) -> Scrape | None:
    """The scrape once every task is counted and observed, or the last one after SETTLE seconds."""
    deadline = time.monotonic() + SETTLE
    while True:
        try:
            after = metrics.scrape(w.url)
        except ScrapeError as exc:
            w.error = f"{exc} (after the workload; it answered before)"
            return None
        inc = after - w.before
        if (
            inc.value(TASKS) >= total and inc.value(f"{RUNTIME}_count") >= total
        ) or time.monotonic() > deadline:
            return after
        time.sleep(0.05)  # polling the endpoint, bounded by SETTLE


def require_scrapes(lab: LabRun, w: Workload) -> Scrape:
    """The workload's increase, or the verdict that the endpoint did not answer."""
    lab.judge_from(w.run.timeline)
    expect(
        w.before is not None and w.after is not None,
        "Nothing serves metrics from the worker, so Prometheus has nothing to scrape.",
        expected=f"GET {w.url} answers Prometheus' text format once the worker is ready",
        observed=w.error,
        hint="from a worker signal (worker_ready), start_http_server(int(os.environ['METRICS_PORT']), "
        "addr='127.0.0.1', registry=registry): the worker's main process serves it.",
    )
    return w.increase


def shown(series: dict) -> str:
    """``{("tasks.charge", "SUCCESS"): 16.0}`` as ``{'tasks.charge, SUCCESS': 16}``, for a verdict."""
    pairs = {
        ", ".join(map(str, key)) if isinstance(key, tuple) else str(key): round(v, 3)
        for key, v in sorted(series.items(), key=str)
        if v
    }
    return str(pairs or "no series")


# -- the endpoint: every pool process counted ------------------------------------------------------------


@pytest.mark.together("workload")
@pytest.mark.points(2)
@pytest.mark.deadline(60)
@pytest.mark.rules("metrics-endpoint", needs=["failures-counter"])
def test_endpoint_counts_every_pool_process(lab, workload):
    """The worker serves /metrics, and every pool process's tasks are in it"""
    w = workload
    inc = require_scrapes(lab, w)
    tl = w.run.timeline
    per_pid = Counter(a.pid for i in w.ids() for a in tl.attempts(i)[:1])
    counted = inc.value(TASKS)
    total = len(w.ids())
    if counted == total:
        return
    if not counted and "celery_tasks" in inc.families():
        why = "celery_tasks_total is declared but has no series: the values stayed in the pool processes"
    elif not counted:
        why = "no celery_tasks_total at all"
    elif counted in per_pid.values():
        why = f"{counted:g} is what one pool process ran: the endpoint is served from inside one of them"
    else:
        why = f"{counted:g} counted"
    expect(
        False,
        "Tasks run in the pool processes, not in the worker's main process that serves the endpoint: each "
        "process counts in its own memory unless prometheus_client's multiprocess mode adds them up.",
        expected=f"celery_tasks_total increases by {total} in all (tasks by pid: {shown(dict(per_pid))})",
        observed=why,
        hint="serve a CollectorRegistry with multiprocess.MultiProcessCollector(registry) from the main "
        "process (worker_ready); $PROMETHEUS_MULTIPROC_DIR is set for you. Or count the worker's events.",
    )


# -- failures: a counter by task name and final state ----------------------------------------------------


@pytest.mark.together("workload")
@pytest.mark.points(3)
@pytest.mark.deadline(60)
@pytest.mark.rules("failures-counter", needs=["metrics-endpoint"])
def test_counter_by_task_and_final_state(lab, workload):
    """celery_tasks_total counts each task once, by task name and final state"""
    w = workload
    inc = require_scrapes(lab, w)
    want = {key: float(n) for key, n in w.ended().items()}
    got = {key: v for key, v in inc.by(TASKS, "task", "state").items() if v}
    kind = w.after.kind("celery_tasks")
    expect(
        kind == "counter",
        "celery_tasks_total must be a counter: it only goes up, and rate()/increase() survive its resets.",
        expected="a prometheus_client Counter named celery_tasks (exposed as celery_tasks_total)",
        observed=f"celery_tasks is a {kind}" if kind else "no celery_tasks_total",
        hint='Counter("celery_tasks", "...", ["task", "state"]).',
    )
    if got == want:
        return
    states = {key[1] for key in got}
    names = {key[0] for key in got}
    if not got:
        hint = "nothing counted reaches the endpoint: the values stay in the pool processes unless the main "
        "process serves them (multiprocess mode; see the endpoint test)."
    elif None in states:
        hint = 'label each count with the final state too: .labels(task.name, state) ("SUCCESS"/"FAILURE").'
    elif states - {"SUCCESS", "FAILURE"}:
        hint = "count a task when it ends, with its final state (task_postrun's state, or task_success and "
        "task_failure), not when it is received or starts."
    elif names - {key[0] for key in want}:
        hint = "label `task` with the task's registered name (task.name, e.g. tasks.charge)."
    else:
        hint = "each task that ends adds 1 to the series of its name and final state, once."
    expect(
        False,
        "An alert on the failure ratio divides FAILURE by all: both must be exact, per task.",
        expected=f"sum by (task, state) (increase(celery_tasks_total)): {shown(want)}",
        observed=shown(got),
        hint=hint,
    )


# -- runtime: a histogram that can answer the SLO and the p95 ---------------------------------------------


def runtime_buckets(lab: LabRun, w: Workload, task: str) -> list[tuple[float, float]]:
    inc = require_scrapes(lab, w)
    kind = w.after.kind(RUNTIME)
    expect(
        kind == "histogram",
        "The runtime must be a histogram: a p95 across processes and workers is computed from buckets "
        "(a summary's quantiles cannot be added up).",
        expected=f"a prometheus_client Histogram named {RUNTIME}",
        observed=f"{RUNTIME} is a {kind}" if kind else f"no {RUNTIME}",
        hint=f'Histogram("{RUNTIME}", "...", ["task"], buckets=(...)).',
    )
    buckets = inc.buckets(RUNTIME, task=lab.task_name(task))
    expect(
        buckets,
        f"No runtime of {task} reaches the endpoint, so there is nothing to read an SLO or a p95 from.",
        expected=f'{RUNTIME}_bucket{{task="{lab.task_name(task)}", le=...}} series after the workload',
        observed=f"{RUNTIME} is declared, without series" if kind else f"no {RUNTIME}",
        hint="observe each run in the pool process, and serve what every process recorded from the main "
        "process (multiprocess mode; see the endpoint test).",
    )
    return buckets


@pytest.mark.together("workload")
@pytest.mark.points(2)
@pytest.mark.deadline(60)
@pytest.mark.rules("runtime-slo-bucket", needs=["metrics-endpoint"])
def test_histogram_has_a_bound_at_the_slo(lab, workload):
    """celery_task_runtime_seconds has a bucket at the 1.5 s SLO: the slow runs are exactly those above it"""
    w = workload
    for task, kinds in (("charge", ("ok", "declined", "slow")), ("resize", ("resize",))):
        buckets = runtime_buckets(lab, w, task)
        bounds = [le for le, _ in buckets]
        expect(
            SLO in bounds,
            f'The alert reads the share of runs within the SLO straight from the bucket le="{SLO:g}"; '
            "without a bound there, histogram_quantile can only interpolate between its neighbours.",
            expected=f"a bucket bound at exactly {SLO:g} s",
            observed=f"bounds: {', '.join(f'{b:g}' for b in bounds) or 'none'}"
            + (" (prometheus_client's default buckets)" if bounds[:-1] == DEFAULT_BUCKETS else ""),
            hint=f"Histogram(..., buckets=(..., 1.0, {SLO:g}, 2.0, ...)): put the SLO on a bound, with "
            "neighbours close around it.",
        )
        total = buckets[-1][1]
        within = dict(buckets)[SLO]
        above = sum(1 for d in w.durations(kinds) if d > SLO)
        expect(
            total - within == above,
            f"Exactly the runs that took longer than {SLO:g} s belong above the SLO bound.",
            expected=f'{task}: {above} run(s) above le="{SLO:g}" (of {len(w.ids(*kinds))})',
            observed=f"{task}: {total - within:g} of {total:g} above it",
            hint="observe each run's duration in seconds (time.perf_counter() from task_prerun to "
            "task_postrun, or around the task's body).",
        )


DEFAULT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]


@pytest.mark.together("workload")
@pytest.mark.points(2)
@pytest.mark.deadline(60)
@pytest.mark.rules("runtime-p95", needs=["metrics-endpoint"])
def test_histogram_observes_every_run_and_resolves_the_p95(lab, workload):
    """celery_task_runtime_seconds observes every run once; histogram_quantile(0.95) is near the true p95"""
    w = workload
    for task, kinds in (("charge", ("ok", "declined", "slow")), ("resize", ("resize",))):
        buckets = runtime_buckets(lab, w, task)
        runs = len(w.ids(*kinds))
        count = buckets[-1][1] if buckets else 0.0
        inc = w.increase
        expect(
            count == runs,
            "Every run is one observation, failures included: a p95 of the successes alone hides the slow "
            "failures (timeouts are slow).",
            expected=f"{task}: _count increases by {runs}",
            observed=f"{task}: by {count:g}",
            hint="observe in task_postrun (it runs after successes and failures alike), once per run.",
        )
        slept = sum({"slow": SLOW}.get(k, FAST) * len(w.sent[k]) for k in kinds)
        total = inc.value(f"{RUNTIME}_sum", task=lab.task_name(task))
        low, high = UNDER * slept, slept + OVERHEAD * runs
        expect(
            low <= total <= high,
            "The histogram's unit is seconds (its name says so): _sum is the time the runs took.",
            expected=f"{task}: _sum grows by {low:.2f}-{high:.2f} s (the runs slept {slept:.2f} s)",
            observed=f"{task}: by {total:.3f}",
            hint="observe seconds as a float (time.perf_counter() differences), not milliseconds.",
        )
    durations = w.durations(("ok", "declined", "slow"))
    true_p95 = durations[math.ceil(0.95 * len(durations)) - 1]
    buckets = w.increase.buckets(RUNTIME, task=lab.task_name("charge"))
    estimate = metrics.histogram_quantile(0.95, buckets)
    expect(
        SLO < estimate <= P95_FACTOR * true_p95,
        "An alert on the p95 reads histogram_quantile(0.95, ...), which interpolates inside the bucket the "
        "p95 falls in: the bounds around it decide how far off it is.",
        expected=f"charge: an estimate above the SLO ({SLO:g} s) and within {P95_FACTOR:g}x the true p95 "
        f"({true_p95:.2f} s)",
        observed=f"histogram_quantile(0.95) = {estimate:.2f} s from bounds "
        f"{', '.join(f'{b:g}' for b, _ in buckets)}",
        hint="bounds close together where runtimes fall, e.g. (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10).",
    )


# -- cardinality: labels from small fixed sets ------------------------------------------------------------


@pytest.mark.together("workload")
@pytest.mark.points(2)
@pytest.mark.deadline(60)
@pytest.mark.rules("bounded-labels", needs=["metrics-endpoint"])
def test_labels_hold_no_ids_or_arguments(lab, workload):
    """No label carries a task id or an argument: one series per task and state"""
    w = workload
    require_scrapes(lab, w)
    samples = [s for s in w.after.samples if s.family.startswith("celery_")]
    expect(
        samples,
        "There are no celery_* series to judge.",
        expected="celery_tasks_total and celery_task_runtime_seconds series after the workload",
        observed=f"families: {sorted(w.after.families()) or 'none'}",
    )
    unbounded = set(w.ids()) | set(w.args.values())
    leaks = sorted(
        {f"{s.name}{{{k}={v!r}}}" for s in samples for k, v in s.labels if any(u in v for u in unbounded)}
    )
    expect(
        not leaks,
        "Every distinct label value is a new time series: a task id or an order id makes one per task, and "
        "Prometheus' memory grows with traffic (cheat sheet §14: high cardinality).",
        expected="label values from small fixed sets: task names, states, queue names",
        observed=f"{len(leaks)} series like {leaks[0]}" if leaks else "",
        hint="drop that label; put ids in the logs (where the task id already is), not in metrics.",
    )
    keyed = {TASKS: ("task", "state"), f"{RUNTIME}_bucket": ("task", "le"), QUEUE: ("queue",)}
    for name, keys in keyed.items():
        groups = Counter(tuple(s.label(k) for k in keys) for s in samples if s.name == name)
        crowded = {key: n for key, n in groups.items() if n > 1}
        expect(
            not crowded,
            f"{name} must have one series per {' and '.join(keys)}: another label that varies with the "
            "traffic (a pid, a time, a worker per task) multiplies them.",
            expected=f"one series per ({', '.join(keys)})",
            observed=f"{', '.join(f'{k}: {n} series' for k, n in list(crowded.items())[:3])}",
            hint="label only with task, state (and queue for the gauge).",
        )


# -- logs: the task id on every line ----------------------------------------------------------------------


def own_lines(kind: str, arg: str) -> list[str]:
    """What the task body logs about ``arg`` (the contract keeps these calls)."""
    if kind == "resize":
        return [f"resizing image {arg}"]
    return [f"charging order {arg}"] + ([f"card declined for order {arg}"] if kind == "declined" else [])


@pytest.mark.together("workload")
@pytest.mark.points(2)
@pytest.mark.deadline(60)
@pytest.mark.rules("task-id-logs")
def test_every_log_line_carries_the_task_id(lab, workload):
    """Every line charge and resize log carries the task's id"""
    w = workload
    lab.judge_from(w.run.timeline)
    lines = w.log.splitlines()
    missing, anonymous = [], []
    for kind, results in w.sent.items():
        for r in results:
            arg = w.args[r.id]
            mention = re.compile(rf"{re.escape(arg)}(?![\w-])")  # order-...-1 is not in order-...-10
            about = [line for line in lines if mention.search(line)]
            for text in own_lines(kind, arg):
                if not any(text in line for line in about):
                    missing.append(text)
            anonymous += [line for line in about if r.id not in line]
    expect(
        not missing,
        "The tasks' own log lines must reach the worker's log.",
        expected="each task's lines (charging order ..., card declined for order ..., resizing image ...)",
        observed=f"{len(missing)} line(s) missing, e.g. {missing[0]!r}" if missing else "",
        hint="keep the logger calls of the task bodies; log at INFO or above to the worker's output.",
    )
    expect(
        not anonymous,
        "A line without the task id cannot be tied to its task: with two processes and retries, which "
        "'charging order' line belongs to the failed task?",
        expected="the task's id (e.g. 8f14e45f-...) in every line a task logs",
        observed=f"{len(anonymous)} line(s) without it, e.g. {anonymous[0].strip()[:160]!r}"
        if anonymous
        else "",
        hint="logger = get_task_logger(__name__) (Celery's task log format adds name[id]), or a logging "
        "filter that takes the id from task_prerun.",
    )


# -- queue length: read from the broker ----------------------------------------------------------------------


def gauge_value(lab: LabRun, scrape: Scrape) -> tuple[float | None, dict]:
    """celery_queue_length of the worker's queue (by the broker's name or the learner's, ``celery``)."""
    series = scrape.by(QUEUE, "queue")
    names = {lab.ns.queue, lab.ns.short_queue(lab.ns.queue)}
    hits = [v for (queue,), v in series.items() if queue in names]
    return (hits[0] if hits else None), series


@pytest.mark.together("workload")
@pytest.mark.points(2)
@pytest.mark.deadline(40)
@pytest.mark.rules("queue-length", needs=["metrics-endpoint"])
def test_queue_length_is_read_from_the_broker(lab, workload):
    """celery_queue_length shows the messages waiting on the broker, and 0 once they ran"""
    w = workload
    require_scrapes(lab, w)
    lab.judge_from(lab.timeline)
    worker = w.worker
    worker.pause_queue(timeout=min(10.0, lab.remaining()))
    quiet = lab.ns.app("quiet")  # a producer that sends no task-sent events, like most (Celery's default)
    quiet.conf.task_send_sent_event = False
    results = [quiet.send_task(lab.task_name("resize"), args=(f"img-q{n}", FAST)) for n in range(QUEUED)]
    depth = _wait_depth(lab, QUEUED)
    try:
        waiting = metrics.scrape(w.url)
    finally:
        worker.resume_queue(timeout=min(10.0, lab.remaining()))
    value, series = gauge_value(lab, waiting)
    label_hint = (
        f"one series per queue the worker consumes, labelled queue=<its name> (here {lab.ns.queue}: "
        "app.amqp.queues in the worker)"
    )
    expect(
        value is not None,
        "The gauge must say which queue it measures.",
        expected=f'celery_queue_length{{queue="{lab.ns.queue}"}}',
        observed=f"celery_queue_length series: {shown(series)}",
        hint=label_hint,
    )
    expect(
        value == depth,
        "Queue length is what waits on the broker: messages no worker has taken yet, sent by any producer. "
        "Workers' events and their reserved tasks cannot see them.",
        expected=f"{depth} while {depth} messages wait (the grader counted them on the broker), sent with no "
        "task-sent event",
        observed=f"celery_queue_length = {value:g}",
        hint="read it when scraped, from the broker: a custom collector whose collect() asks the broker "
        "(Redis: the list's LLEN; RabbitMQ: a queue declare's message_count).",
    )
    lab.wait(results, min(15.0, lab.remaining()))
    value, series = gauge_value(lab, metrics.scrape(w.url))
    expect(
        value == 0,
        "Once the worker took and ran them, nothing waits: the gauge must be read again at every scrape.",
        expected="celery_queue_length = 0 after the messages ran",
        observed=f"celery_queue_length = {value}",
        hint="compute it in the collector's collect() (at scrape time), not once at start-up.",
    )


def _wait_depth(lab: LabRun, count: int) -> int:
    """Until the broker holds ``count`` messages in the queue (a BRPOP in flight on Redis may hand one
    back a moment later), bounded; returns the last count seen."""
    deadline = time.monotonic() + min(10.0, lab.remaining())
    while (depth := lab.ns.queue_depth()) != count and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the broker, bounded by the deadline above
    if depth != count:
        raise LabFailure(f"the grader could not make {count} messages wait on the broker (saw {depth})")
    return depth
