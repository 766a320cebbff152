"""Autograder: canvas — group, chord, chain (labs/canvas/README.md has the contract).

The grader imports the learner's ``build_report(base_url, pages)``, applies the signature it returns, and
lets real prefork workers run it against pages served by an HTTP stub the grader owns. Verdicts come from
the workers' events (which process ran each attempt, when), the results, and what the stub saw (page
requests with their times, the published report, the announcement, the alerts).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import pytest
from celery.canvas import Signature
from celery.exceptions import ChordError
from celery.result import AsyncResult

from celerylab.engine.stubs import ScriptedHTTPServer
from celerylab.engine.timeline import FINAL
from celerylab.grading.session import LabFailure, expect, verdict

PAGES = 4
LATENCY = 0.15  # page n of 4 answers after (5 - n) * 0.15 s: the first page is the slowest
BIG_CHORD, BIG_CHORD_BOUND = 100, 20.0  # the README states this bound
HEADER = "fetch_page"
NEWLINE = "\\n"  # as it appears inside an exception's repr
_prefixes = itertools.count(1)
# Celery warns on every chord.link_error that errbacks may one day reach the header too (the README says so).
pytestmark = pytest.mark.filterwarnings("ignore::celery.exceptions.CPendingDeprecationWarning")


@dataclass
class Site:
    """Pages and endpoints on the grader's stub under a fresh prefix, so tests never share a hit."""

    stub: ScriptedHTTPServer
    prefix: str
    pages: int

    @property
    def base(self) -> str:
        return f"{self.stub.base_url}/{self.prefix}"

    def path(self, tail: str) -> str:
        return f"/{self.prefix}/{tail}"

    def page(self, n: int) -> dict:
        return {"page": n, "title": f"Page {n}", "words": 10 * n}

    def report(self) -> dict:
        pages = [self.page(n) for n in range(1, self.pages + 1)]
        return {"titles": [p["title"] for p in pages], "words": sum(p["words"] for p in pages)}

    def latency(self, n: int) -> float:
        return 0.0 if self.pages > PAGES else (self.pages + 1 - n) * LATENCY

    def page_hits(self) -> list:
        return [r for n in range(1, self.pages + 1) for r in self.stub.hits(self.path(f"pages/{n}"))]

    def last_reply(self) -> float:
        """When the last page's reply left the stub (request time + its latency)."""
        return max(r.time + self.latency(int(r.path.rsplit("/", 1)[1])) for r in self.page_hits())


def make_site(stub: ScriptedHTTPServer, pages: int = PAGES, failing: tuple[int, ...] = ()) -> Site:
    site = Site(stub, f"t{next(_prefixes)}", pages)

    def serve(n: int):
        def reply(_request):
            if n in failing:
                return 500, {"error": f"page {n} is broken"}
            time.sleep(site.latency(n))  # a slow page (simulated latency), not a synchronisation
            return 200, site.page(n)

        return reply

    for n in range(1, pages + 1):
        stub.handle(site.path(f"pages/{n}"), serve(n))
    for tail in ("reports", "announce", "alerts"):
        stub.script(site.path(tail), [200])
    return site


@pytest.fixture
def worker(lab):
    return lab.worker(concurrency=4)


def launch(lab, site: Site):
    """Apply the learner's workflow as the README says: ``build_report(base_url, pages).apply_async()``."""
    module = lab.module()
    build = getattr(module, "build_report", None)
    expect(
        callable(build),
        "MISSING FUNCTION: tasks.py has no function `build_report`.",
        expected="def build_report(base_url: str, pages: int) -> Signature",
        observed="none found",
        hint="keep the skeleton's build_report and make it return the workflow.",
    )
    try:
        workflow = build(site.base, site.pages)
    except Exception as exc:
        call = f"build_report({site.base!r}, {site.pages})"
        raise LabFailure(
            verdict(
                f"{call} raised {type(exc).__name__}: {exc}",
                hint="build_report only builds signatures; fix the error.",
            )
        ) from None
    expect(
        isinstance(workflow, Signature),
        "build_report must return the workflow as a signature, unsent.",
        expected="a Signature (a chain whose first step is a chord)",
        observed=repr(workflow)[:200],
        hint="return the canvas; the grader calls .apply_async() on it.",
    )
    return workflow.apply_async()


def settle(lab, final) -> None:
    """Until the workflow's last task is final, or every task seen is final and one failed (a dead end)."""

    def done(tl) -> bool:
        if tl.state(final.id) in FINAL:
            return True
        states = [tl.state(u) for u in tl.task_ids()]
        return bool(states) and all(s in FINAL for s in states) and "FAILURE" in states

    try:
        lab.timeline.wait_for(done, lab.remaining(), "end of the workflow")
    except AssertionError:
        what = f"The workflow did not finish within the test's {lab.deadline_seconds:.0f} s."
        raise LabFailure(verdict(what, observed="\n" + lab.timeline.table())) from None


def attempts(lab, name: str) -> list:
    return [a for u in lab.timeline.task_ids(name) for a in lab.timeline.attempts(u)]


def failures(lab) -> list[str]:
    """``name: exception`` of every failed task (from its task-failed event: it also covers errors raised
    after the body, e.g. when the next step of a chain cannot be sent)."""
    out = []
    for event in lab.timeline.events("task-failed"):
        name = lab.timeline.names().get(event.uuid, "?").rsplit(".", 1)[-1]
        out.append(f"{name}: {str(event.get('exception') or '?').split(NEWLINE)[0]}")
    return out


def require_header(lab, site: Site) -> list:
    """The fetch_page attempts, one per page; else a verdict that says what ran instead."""
    tries = attempts(lab, HEADER)
    requested = sorted(int(r.path.rsplit("/", 1)[1]) for r in site.page_hits())
    expect(
        len(tries) == site.pages and requested == list(range(1, site.pages + 1)),
        f"Each of the {site.pages} pages should be fetched by its own fetch_page task, once.",
        expected=f"{site.pages} fetch_page attempts; pages requested: 1 .. {site.pages}",
        observed=f"{len(tries)} fetch_page attempt(s); pages requested: {requested[:10]}"
        + ("..." if len(requested) > 10 else "")
        + f"\n{lab.timeline.table()}"[:1500],
        hint=blocked_hint(lab),
    )
    return tries


def blocked_hint(lab) -> str:
    if any("Never call result.get()" in f for f in failures(lab)):
        return "a task called .get() on another task's result; let a chord hand the results to its callback."
    return "build_report should return chord(group(fetch_page.s(url), ...), merge.s()) | publish.s(...) | ..."


def run_ok(lab, http_stub, pages: int = PAGES) -> tuple[Site, object]:
    site = make_site(http_stub, pages)
    final = launch(lab, site)
    settle(lab, final)
    return site, final


@pytest.mark.rules("parallel-fetch")
@pytest.mark.points(2)
@pytest.mark.deadline(20)
def test_pages_are_fetched_in_parallel(lab, worker, http_stub):
    """The header: one fetch_page per page, overlapping in time on two or more worker processes"""
    site, _ = run_ok(lab, http_stub)
    tries = require_header(lab, site)
    overlapping = [
        (a, b)
        for a, b in itertools.combinations(tries, 2)
        if (a.hostname, a.pid) != (b.hostname, b.pid)
        and a.end is not None
        and b.end is not None
        and a.start < b.end
        and b.start < a.end
    ]
    processes = {(a.hostname, a.pid) for a in tries}
    expect(
        overlapping,
        "The pages should be fetched at the same time, by different worker processes.",
        expected="at least two fetch_page attempts on different processes overlapping in time",
        observed=f"{len(processes)} process(es), no overlap:\n{lab.timeline.table()}",
        hint="a group sends every fetch at once; a chain of fetches runs them one by one.",
    )


@pytest.mark.rules("merge-once-in-order", needs=["parallel-fetch"])
@pytest.mark.points(2)
@pytest.mark.deadline(20)
def test_merge_waits_for_every_page_and_gets_them_in_order(lab, worker, http_stub):
    """The chord callback: merge runs once, after the last page, with every page in header order"""
    site, _ = run_ok(lab, http_stub)
    require_header(lab, site)
    merges = attempts(lab, "merge")
    expect(
        len(merges) == 1 and merges[0].outcome == "success",
        "merge should run exactly once, and succeed.",
        expected="1 successful merge attempt",
        observed=f"{len(merges)} merge attempt(s):\n{lab.timeline.table()}",
        hint=blocked_hint(lab),
    )
    early = site.last_reply() - merges[0].start
    expect(
        early <= 0,
        "merge must start only after every page has been fetched.",
        expected="merge starts after the last page's reply",
        observed=f"merge started {early:.2f} s before it",
        hint="a chord's callback runs when its whole header is done.",
    )
    value = lab.app.AsyncResult(merges[0].uuid).get(timeout=lab.remaining())
    expect(
        value == site.report(),
        "merge should get every page's result, in the order of the header.",
        expected=repr(site.report()),
        observed=repr(value),
        hint="the pages finish in reverse order here (page 1 is the slowest); a chord still passes the "
        "results in header order, as one list argument.",
    )


@pytest.mark.rules("publish-after-merge", needs=["merge-once-in-order"])
@pytest.mark.points(1)
@pytest.mark.deadline(20)
def test_publish_gets_the_merged_report(lab, worker, http_stub):
    """The chain: publish receives merge's result and posts it, once"""
    site, _ = run_ok(lab, http_stub)
    require_header(lab, site)
    posted = http_stub.hits(site.path("reports"))
    bodies = [r.json() for r in posted]
    expect(
        bodies == [site.report()],
        "publish should get merge's report as first argument and POST it once.",
        expected=f"one POST {site.path('reports')} with {site.report()!r}",
        observed=f"{len(bodies)} POST(s): {bodies!r}"[:400] + f"\n{lab.timeline.table()}",
        hint="chain the steps with `|`: each signature gets the previous result prepended.",
    )
    merges, publishes = attempts(lab, "merge"), attempts(lab, "publish")
    expect(
        len(publishes) == 1 and len(merges) == 1 and publishes[0].start > merges[0].start,
        "publish should run once, after merge.",
        observed=lab.timeline.table(),
    )


@pytest.mark.rules("announce-immutable", needs=["publish-after-merge"])
@pytest.mark.points(1)
@pytest.mark.deadline(20)
def test_announce_is_immutable_and_last(lab, worker, http_stub):
    """The last step: announce(base_url) gets no previous result, runs after publish, ends the workflow"""
    site, final = run_ok(lab, http_stub)
    received = [
        e for e in lab.timeline.events("task-received") if (e.get("name") or "").endswith(".announce")
    ]
    args = [e.get("args") for e in received]
    expect(
        args == [repr([site.base])] or args == [repr((site.base,))],
        "announce takes only base_url: the report must not be passed to it.",
        expected=f"announce received args [{site.base!r}]",
        observed=f"announce received: {args or 'never ran'}"
        + (f"\nfailures: {failures(lab)}" if failures(lab) else ""),
        hint="announce.si(base_url) is an immutable signature; announce.s(base_url) gets publish's result "
        "prepended.",
    )
    announced, reports = http_stub.hits(site.path("announce")), http_stub.hits(site.path("reports"))
    announces = attempts(lab, "announce")
    expect(
        len(announced) == 1 and len(announces) == 1 and reports and announces[0].start >= reports[0].time,
        "announce should run once, after publish has posted the report.",
        observed=f"{len(announced)} announcement(s)\n{lab.timeline.table()}",
    )
    expect(
        final.id == announces[0].uuid,
        "The workflow's result should be its last step, announce.",
        expected=f"apply_async() returns announce's result ({announces[0].uuid[:8]})",
        observed=f"it returned {lab.timeline.describe(final.id)}",
    )


@pytest.mark.rules("fail-stops-workflow", "alert-once")
@pytest.mark.points(2)
@pytest.mark.deadline(20)
def test_failing_page_fails_the_chord_and_alerts_once(lab, worker, http_stub):
    """Page 2 answers 500: the chord fails with a ChordError, nothing is published, alert runs once"""
    site = make_site(http_stub, failing=(2,))
    final = launch(lab, site)
    settle(lab, final)
    require_header(lab, site)
    states = {lab.timeline.state(u) for u in lab.timeline.task_ids(HEADER)}
    expect(
        "FAILURE" in states,
        "fetch_page of a page that answers 500 should fail.",
        observed=lab.timeline.table(),
        hint="keep raise_for_status() in fetch_page.",
    )
    ran = [n for n in ("merge", "publish", "announce") if attempts(lab, n)]
    published = http_stub.hits(site.path("reports")) + http_stub.hits(site.path("announce"))
    expect(
        not ran and not published,
        "When a page fails, nothing after the chord's header may run.",
        expected="no merge, publish or announce",
        observed=f"ran: {ran}; {len(published)} POST(s)",
    )
    chain = []
    node = final
    while node is not None and len(chain) < 10:  # announce -> publish -> merge (-> the header's GroupResult)
        if isinstance(node, AsyncResult):
            chain.append(node)
        node = node.parent
    deadline = time.monotonic() + min(5.0, lab.remaining())
    errors = []
    while time.monotonic() < deadline and not errors:  # the backend stores the chord's failure; poll it
        errors = [r.result for r in chain if r.state == "FAILURE" and isinstance(r.result, ChordError)]
        if not errors:
            time.sleep(0.05)
    expect(
        errors,
        "The chord itself should fail with a ChordError (its callback never runs).",
        expected="the workflow's result chain holds a FAILURE with celery.exceptions.ChordError",
        observed=", ".join(f"{r.id[:8]}: {r.state}" for r in chain),
    )
    alerts = [r.json() for r in http_stub.hits(site.path("alerts"))]
    expect(
        len(alerts) == 1,
        "The error callback should run exactly once for the failed workflow.",
        expected=f"one POST {site.path('alerts')}",
        observed=f"{len(alerts)} alert(s): {alerts!r}"[:500],
        hint="attach alert once, to the whole workflow (.on_error / link_error); an errback on every "
        "header task runs once per failing page, and the chord's once more.",
    )
    body = alerts[0] if isinstance(alerts[0], dict) else {}
    failed = [r.id for r in chain if r.state == "FAILURE" and isinstance(r.result, ChordError)]
    expect(
        "ChordError" in str(body.get("error", "")) and body.get("task") in failed,
        "alert should report the task that failed and its error.",
        expected=f'{{"task": "{failed[0] if failed else "?"}" (the failed task: request.id), '
        '"error": "ChordError(...)"}',
        observed=repr(alerts[0])[:300],
        hint="from alert(request, exc, traceback, base_url), POST {'task': request.id, 'error': repr(exc)}.",
    )


@pytest.mark.rules("no-blocking")
@pytest.mark.points(1)
@pytest.mark.deadline(20)
def test_no_task_waits_for_another(lab, worker, http_stub):
    """No task blocks on another task's result (no .get() inside a task)"""
    site, final = run_ok(lab, http_stub)
    blocked = [f for f in failures(lab) if "Never call result.get()" in f]
    expect(
        not blocked,
        "A task called .get() on another task's result; Celery refuses that (RuntimeError).",
        observed="; ".join(blocked)[:400],
        hint="a task that waits for others holds a worker process and can deadlock the pool; "
        "a chord passes the results to its callback instead.",
    )
    hits = site.page_hits()
    expect(hits, "No page was fetched.", observed=lab.timeline.table(), hint=blocked_hint(lab))
    first = min(r.time for r in hits)
    waiting = [
        a
        for u in lab.timeline.task_ids()
        for a in lab.timeline.attempts(u)
        if not a.name.endswith(f".{HEADER}")
        and a.start < first
        and (a.end or time.time()) > site.last_reply()
    ]
    expect(
        not waiting,
        "A task was running for as long as the pages were fetched: it waited for them.",
        observed=", ".join(f"{a.name.rsplit('.', 1)[-1]} on process {a.pid}" for a in waiting),
        hint="a chord passes the results to its callback; no task should wait on another.",
    )


@pytest.mark.rules("scales", needs=["merge-once-in-order", "publish-after-merge", "no-blocking"])
@pytest.mark.points(1)
@pytest.mark.deadline(35)
def test_chord_of_100_pages(lab, worker, http_stub):
    """A chord of 100 header tasks: merged in order and published within 20 s"""
    site = make_site(http_stub, pages=BIG_CHORD)
    begun = time.monotonic()
    final = launch(lab, site)
    settle(lab, final)
    took = time.monotonic() - begun
    posted = [r.json() for r in http_stub.hits(site.path("reports"))]
    expect(
        posted == [site.report()],
        f"A chord of {BIG_CHORD} pages should merge them all, in order.",
        expected=f"one report with titles Page 1 .. Page {BIG_CHORD}",
        observed=f"{len(posted)} report(s); {len(site.page_hits())} page request(s); "
        f"failures: {failures(lab)[:3]}",
        hint=blocked_hint(lab),
    )
    expect(
        took <= BIG_CHORD_BOUND,
        f"A chord of {BIG_CHORD} pages should be published within {BIG_CHORD_BOUND:g} s.",
        observed=f"it took {took:.1f} s",
    )
