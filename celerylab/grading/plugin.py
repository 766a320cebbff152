"""The pytest plugin that turns autograder tests into a grade.

Loaded by the kit's root ``conftest.py``. Options, markers and fixtures:

- ``--target labs|solutions|PATH``: whose ``tasks.py`` to grade (default: the learner's, ``labs/``).
- ``--broker auto|embedded|redis|rabbitmq|URL`` (see celerylab.engine.brokers for the default).
- ``--database sqlite|URL``: for a lab with a database (lab.toml ``database``), where each grade makes its own
  (default ``$CELERYLAB_DATABASE_URL``, else SQLite in a temp folder; see celerylab.engine.databases).
- ``--report-dir DIR``: where ``<lab>.json`` reports go (default ``.celerylab/reports``).
- ``$CELERYLAB_FIRST``: comma-separated test ids to run first (``celerylab watch``: last time's failures).
- ``test_<lab>__<what>.py`` modules outside tests/labs (``celerylab grade --extra-tests DIR``) are hidden
  tests of ``<lab>``: same fixtures and markers, marked ``hidden`` in the report.
- ``--tz TZ``: the time zone grader and workers run in (default ``$CELERYLAB_TZ``, else UTC+05:45), so a naive
  ``datetime.now()`` in a learner's eta is caught on every host, not only on one that is not on UTC.
- ``@pytest.mark.points(n)``: what a test is worth (1 if absent).
- ``@pytest.mark.rules("id", ..., needs=[...])``: the contract rules (lab.toml) a test judges, and the ones
  it merely relies on; a mutant of a rule may only fail tests that name it.
- ``@pytest.mark.deadline(seconds)``: the test's budget (30 s if absent); waits stop there and say
  what was last seen instead of hanging. pytest-timeout stands behind it as a backstop.
- ``@pytest.mark.together(name)`` and ``@pytest.mark.exclusive``: how the tests share the grade's time. They
  run side by side, each group in a forked shard process (celerylab.grading.shards); ``--serial`` (or
  ``$CELERYLAB_SERIAL=1``) runs them one after the other in one process.
- fixtures ``lab`` (a :class:`~celerylab.grading.session.LabRun` per test) over ``lab_session`` (per module),
  and ``http_stub`` (a :class:`~celerylab.engine.stubs.ScriptedHTTPServer` per module).

A lab test module is ``tests/labs/test_<lab>.py``; the lab's name comes from the file name.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from celerylab.engine import forkserver
from celerylab.engine.brokers import Broker, BrokerUnavailable, open_broker
from celerylab.engine.databases import DatabaseUnavailable
from celerylab.engine.stubs import ScriptedHTTPServer
from celerylab.engine.timeline import DeadlineExceeded
from celerylab.engine.workers import WorkerError
from celerylab.grading import shards
from celerylab.grading.results import GradeReport, TestResult
from celerylab.grading.session import LabFailure, LabRun, LabSession, start_probe
from celerylab.paths import kit_root, state_dir

DEFAULT_TZ = "<+0545>-05:45"  # POSIX form (no tz database needed): UTC+05:45, no DST, not a whole hour
DEFAULT_DEADLINE = 30.0
BACKSTOP_MARGIN = 60.0
MESSAGE_LINES = 8  # a verdict a learner reads; the rest is in the report
VERDICTS = (LabFailure, DeadlineExceeded, WorkerError, BrokerUnavailable, DatabaseUnavailable)
_REPORTS = pytest.StashKey[dict[str, GradeReport]]()
_BROKER = pytest.StashKey[dict[str, float]]()
_RUN = pytest.StashKey[LabRun]()
_INTERRUPTED = pytest.StashKey[bool]()
_TEMP = pytest.StashKey[list[str]]()
_SERVERS = pytest.StashKey[
    list
]()  # a zygote launched for this grade: its owners' ends (celerylab.engine.forkserver)
_EMPTIED = pytest.StashKey[set[str]]()  # labs whose log folder this grade emptied as it began
_SHARED = pytest.StashKey[dict[str, Any]]()  # what the shards share: the broker, each lab's folder and probe


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("celerylab", "celerylab grading")
    group.addoption("--target", default="labs", help="grade labs/ (default), solutions/, or a folder PATH")
    group.addoption(
        "--broker", default=None, help="auto | embedded | redis | rabbitmq | a redis:// or amqp:// URL"
    )
    group.addoption(
        "--database",
        default=None,
        help="sqlite (default) | a postgresql:// URL: where a Django lab's per-grade database is made",
    )
    group.addoption("--report-dir", default=None, help="where <lab>.json grade reports are written")
    group.addoption(
        "--serial",
        action="store_true",
        help="run the tests one after the other in one process instead of side by side in shards",
    )
    group.addoption(
        "--tz",
        default=None,
        help=f"time zone for grader and workers (default: $CELERYLAB_TZ, else {DEFAULT_TZ}, i.e. UTC+05:45)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "points(n): what an autograder test is worth (default 1)")
    config.addinivalue_line(
        "markers", f"deadline(seconds): an autograder test's budget (default {DEFAULT_DEADLINE:.0f})"
    )
    config.addinivalue_line(
        "markers",
        "rules(*ids, needs=()): the lab.toml rules an autograder test judges (and the ones it relies on)",
    )
    config.addinivalue_line(
        "markers", "together(name): tests that judge one shared scenario run in the same shard (once)"
    )
    config.addinivalue_line(
        "markers", "exclusive: the test restarts the shared embedded broker; it runs with nothing beside it"
    )
    config.stash[_REPORTS] = {}
    if _grades_a_lab(config) and forkserver.enabled():
        # The zygote's imports overlap collection; each shard takes a socket of it, this process the last.
        with contextlib.suppress(OSError, forkserver.ForkServerError):
            servers = forkserver.ForkServer.launch_shared(shards.MAX_SHARDS + 1)
            config.stash[_SERVERS] = servers
            forkserver.install(servers[-1])
    config.stash[_BROKER] = {}
    config.stash[_INTERRUPTED] = False
    config.stash[_TEMP] = []
    config.stash[_EMPTIED] = set()


def _grades_a_lab(config: pytest.Config) -> bool:
    """Whether this run grades a lab (an autograder or hidden tests named on the command line), as
    ``celerylab grade`` does; the kit's own test runs start no zygote ahead of need."""
    labs_dir = kit_root() / "tests" / "labs"
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == labs_dir or path.parent == labs_dir or "__" in path.stem:
            return True
    return False


def lab_name(module_path: Path) -> str:
    """``test_<lab>.py``, the autograder; ``test_<lab>__<what>.py``, hidden tests of the same lab."""
    return module_path.stem.removeprefix("test_").split("__", 1)[0]


def is_hidden(module_path: Path) -> bool:
    """Hidden tests: any test module but the lab's own autograder in tests/labs (``--extra-tests``)."""
    return Path(module_path).resolve().parent != kit_root() / "tests" / "labs"


def lab_folder(target: str, lab: str, scratch: list[str] | None = None) -> Path:
    """``labs``/``solutions`` name the kit's folders; any other value is a path to a lab, its parent, or a
    single ``.py`` file (a mutant, a variant, a submission), which is graded as that lab's ``tasks.py``."""
    base = kit_root() / target if target in ("labs", "solutions") else Path(target).expanduser().resolve()
    if base.is_file():
        folder = Path(tempfile.mkdtemp(prefix=f"celerylab-{lab}-")) / lab
        folder.mkdir()
        shutil.copyfile(base, folder / "tasks.py")
        if scratch is not None:
            scratch.append(str(folder.parent))
        return folder
    folder = base / lab if (base / lab).is_dir() else base
    overlay = _overlay_of(lab, folder)
    if overlay is not None:  # a mutant or variant folder holding only the files that differ
        if scratch is not None:
            scratch.append(str(overlay.parent))
        return overlay
    return folder


def _overlay_of(lab: str, folder: Path) -> Path | None:
    """A copy of the solution with ``folder`` laid over it, if ``folder`` is one of the lab's mutant or
    variant folders (see celerylab.grading.mutation.overlay); else None."""
    from celerylab.grading import labs, mutation

    try:
        entry = labs.find(lab)
    except labs.CatalogueError:
        return None
    if folder.resolve() not in {p.resolve() for p in entry.mutants + entry.variants if p.is_dir()}:
        return None
    return mutation.overlay(entry, folder, Path(tempfile.mkdtemp(prefix=f"celerylab-{lab}-")) / lab)


def rules_of(item: pytest.Item) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The rules a test judges, and the ones it needs (both from its ``rules`` marker)."""
    mark = item.get_closest_marker("rules")
    if mark is None:
        return (), ()
    return tuple(mark.args), tuple(mark.kwargs.get("needs", ()))


def _deadline(item: pytest.Item) -> float:
    mark = item.get_closest_marker("deadline")
    return float(mark.args[0]) if mark else DEFAULT_DEADLINE


DURATIONS = kit_root() / "tests" / "labs" / "durations.json"  # benchmarks/grade_latency.py --save-durations


def measured_durations() -> dict[str, float]:
    """Test id -> seconds, from DURATIONS; empty if there is none (or it cannot be read)."""
    try:
        return json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}


_durations = functools.cache(measured_durations)  # read once per grade


def _expected(item: pytest.Item) -> float:
    """How long a test is expected to take, for the order shards take tests in (the longest first): what
    the solutions' tests took when last measured; a test not measured (hidden tests, a new one) is guessed
    at a tenth of its deadline. Only the order depends on it, never a verdict."""
    return _durations().get(item.nodeid, _deadline(item) / 10)


def _points(item: pytest.Item) -> float:
    mark = item.get_closest_marker("points")
    return float(mark.args[0]) if mark else 1.0


def _is_graded(item: pytest.Item) -> bool:
    """An autograder test: it runs on a lab session (a parameter merely named ``lab`` does not count)."""
    return "lab_session" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    graded = [item for item in items if _is_graded(item)]
    if first := set(os.environ.get("CELERYLAB_FIRST", "").split(",")) - {""}:  # celerylab watch
        items.sort(key=lambda item: item.nodeid not in first)  # stable: the rest keep their order
    for item in graded:
        if not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(_deadline(item) + BACKSTOP_MARGIN))
    if graded:  # before any worker starts, so every process of the grade inherits it
        os.environ["TZ"] = config.getoption("--tz") or os.environ.get("CELERYLAB_TZ") or DEFAULT_TZ
        time.tzset()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """Graded tests run side by side in shards (celerylab.grading.shards); anything else, or ``--serial``,
    gets pytest's own loop. The parent opens the broker and runs each lab's import probe once, for all."""
    config = session.config
    if session.testsfailed or not shards.wanted(config, session.items, _is_graded):
        return None
    with contextlib.ExitStack() as stack:
        begun = time.monotonic()
        try:
            broker = stack.enter_context(open_broker(config.getoption("--broker")))
        except BrokerUnavailable:
            return None  # every test says so, as in a serial grade
        config.stash[_BROKER]["broker_start"] = time.monotonic() - begun
        shared: dict[str, Any] = {"broker": broker, "folders": {}, "phases": {}}
        config.stash[_SHARED] = shared
        for module in dict.fromkeys(str(item.fspath) for item in session.items):
            name = lab_name(Path(module))
            shared["folders"][module] = lab_folder(config.getoption("--target"), name, config.stash[_TEMP])
            shutil.rmtree(state_dir() / "logs" / name, ignore_errors=True)

        # The probes run from now on, beside the preload and while the shards start their workers.
        probes = {module: start_probe(lab_name(Path(module)), f) for module, f in shared["folders"].items()}

        def probe_every_lab() -> dict[str, dict[str, Any]]:
            return {module: verdict() for module, verdict in probes.items()}

        restarts = broker.server is not None  # an exclusive test really stops this one
        alone = {i for i, item in enumerate(session.items) if restarts and shards.exclusive(item)}
        groups = [[i for i in group if i not in alone] for group in shards.plan(session.items, _expected)]

        def on_fork(number: int) -> None:
            shared["shard"] = number

        servers = config.stash.get(_SERVERS, [])
        runner = shards.Runner(
            session,
            [g for g in groups if g],
            alone,
            on_fork,
            _result_of,
            _take_result,
            probe_every_lab,
            phases_of=_phases_of,
            take_phases=_take_phases,
            servers=servers[:-1],  # the last is this process's own
        )
        shared["probes"] = lambda module: runner.received()[module]
        if forkserver.enabled() and not servers:
            forkserver.preload()  # once here, shared by every shard's zygote and its workers
        runner.run()
        _merge_phases(config)
        config.stash[_SHARED] = {}  # the exclusive tests ran here: later fixtures are the parent's own
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last test of a group, when the next one would share this module's lab session: keep it only
    if the group left it clean (LabSession.leftovers), and even then with fresh workers; else its fixtures
    go now and the next test starts on a fresh session. So what one group leaves behind (a backlog, a busy
    worker, a pool process's history, a beat) never reaches another, whichever ran first. Serial and
    side-by-side grades decide alike."""
    if nextitem is None or not _is_graded(item) or getattr(nextitem, "fspath", None) != item.fspath:
        return
    if item.nodeid not in _group_ends(item.session):
        return
    session = item.funcargs.get("lab_session")
    if not isinstance(session, LabSession):
        return
    try:
        left = session.leftovers()
    except Exception as exc:  # a broker that cannot say: start afresh
        left = [repr(exc)]
    if left:
        item.session._setupstate.teardown_exact(shards.SessionOnly(item.session))
    else:
        session.retire_workers()


_ENDS = pytest.StashKey[set[str]]()


def _group_ends(session: pytest.Session) -> set[str]:
    if _ENDS not in session.stash:
        session.stash[_ENDS] = shards.group_ends(session.items)
    return session.stash[_ENDS]


def _result_of(config: pytest.Config, nodeid: str) -> dict[str, Any] | None:
    """In a shard: what the grade report holds about a finished test, for the parent."""
    for report in config.stash[_REPORTS].values():
        for test in report.tests:
            if test.id == nodeid:
                shard = config.stash.get(_SHARED, {}).get("shard")
                return {
                    "lab": report.lab,
                    "test": asdict(test),
                    "phases": dict(report.phases),
                    "shard": shard,
                }
    return None


def _phases_of(config: pytest.Config) -> dict[str, Any]:
    """In a shard, at its end: every lab's phases, with its sessions' teardowns now counted."""
    shard = config.stash.get(_SHARED, {}).get("shard")
    return {"shard": shard, "labs": {lab: dict(r.phases) for lab, r in config.stash[_REPORTS].items()}}


def _take_phases(payload: dict[str, Any]) -> None:
    config = _CONFIG["config"]
    for lab, phases in payload["labs"].items():
        config.stash[_SHARED]["phases"][(lab, payload["shard"])] = phases


def _take_result(item: pytest.Item, payload: dict[str, Any] | None, message: str) -> None:
    """In the parent: a test's result as a shard reported it, or a verdict for one a shard never finished."""
    config = item.config
    name = lab_name(Path(item.fspath))
    report = _report(config, name)
    if payload is None and not message:
        return  # no result (a skipped test), as in a serial grade
    if payload is not None:
        test = TestResult(**payload["test"])
        config.stash[_SHARED]["phases"][(payload["lab"], payload["shard"])] = payload["phases"]
    else:
        judged, needs = rules_of(item)
        test = TestResult(
            id=item.nodeid,
            title=_title(item),
            max_points=_points(item),
            points=0.0,
            status="fail",
            message=message,
            rules=list(judged),
            needs=list(needs),
            hidden=is_hidden(Path(item.fspath)),
        )
    report.target = report.target or _shown(config.stash[_SHARED]["folders"][str(item.fspath)])
    report.broker = report.broker or config.stash[_SHARED]["broker"].describe()
    report.tests = [t for t in report.tests if t.id != item.nodeid] + [test]


def _merge_phases(config: pytest.Config) -> None:
    """One set of phases per lab from its shards': time spent is summed, setup and teardown (side by side)
    are the longest shard's."""
    shared = config.stash[_SHARED]
    for (lab, _), phases in shared["phases"].items():
        merged = _report(config, lab).phases
        for key, value in phases.items():
            if key in ("session_setup", "teardown", "database_setup"):
                merged[key] = max(merged.get(key, 0.0), value)
            elif key != "broker_start":
                merged[key] = round(merged.get(key, 0.0) + value, 3)
        merged["shards"] = merged.get("shards", 0) + 1
    for report in config.stash[_REPORTS].values():
        report.phases["broker_start"] = round(config.stash[_BROKER].get("broker_start", 0.0), 3)


@pytest.fixture(scope="session")
def celerylab_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    shared = request.config.stash.get(_SHARED, {})
    if "broker" in shared:  # opened by the parent of the shards, and closed by it
        yield shared["broker"]
        return
    begun = time.monotonic()
    with open_broker(request.config.getoption("--broker")) as broker:
        request.config.stash[_BROKER]["broker_start"] = time.monotonic() - begun
        yield broker


@pytest.fixture(scope="module")
def lab_session(request: pytest.FixtureRequest, celerylab_broker: Broker) -> Iterator[LabSession]:
    name = lab_name(Path(request.module.__file__))
    shared = request.config.stash.get(_SHARED, {})
    module = str(Path(request.module.__file__))
    folder = shared.get("folders", {}).get(module) or lab_folder(
        request.config.getoption("--target"), name, request.config.stash[_TEMP]
    )
    logdir = state_dir() / "logs" / name
    if "shard" in shared:  # each shard its own folder of worker logs (the parent emptied the lab's)
        logdir = logdir / f"shard-{shared['shard']}"
    elif name not in request.config.stash[_EMPTIED]:  # a serial grade: emptied once, not per session
        shutil.rmtree(logdir, ignore_errors=True)
    request.config.stash[_EMPTIED].add(name)
    begun = time.monotonic()
    session = LabSession(
        name,
        folder,
        celerylab_broker,
        logdir,
        request.config.getoption("--database"),
        probe=(lambda: shared["probes"](module)) if "probes" in shared else None,
    )
    report = _report(request.config, name)
    report.target = _shown(folder)
    report.broker = celerylab_broker.describe()
    report.phases["broker_start"] = round(request.config.stash[_BROKER].get("broker_start", 0.0), 3)
    report.phases["session_setup"] = max(
        report.phases.get("session_setup", 0.0), round(time.monotonic() - begun, 3)
    )
    report.phases["sessions"] = report.phases.get("sessions", 0) + 1  # a fresh one per dirty group
    try:
        yield session
    finally:
        begun = time.monotonic()
        session.close()
        # Several sessions may feed one report (a shard takes several groups, hidden tests are modules of
        # their own): worker starts add up; a setup, a teardown or a database counts at its longest.
        report.phases["worker_start"] = round(
            report.phases.get("worker_start", 0.0) + session.worker_start_seconds, 3
        )
        if session.database is not None:
            report.phases["database_setup"] = max(
                report.phases.get("database_setup", 0.0), round(session.database_seconds, 3)
            )
        report.phases["teardown"] = max(
            report.phases.get("teardown", 0.0), round(time.monotonic() - begun, 3)
        )


@pytest.fixture
def lab(request: pytest.FixtureRequest, lab_session: LabSession) -> LabRun:
    run = LabRun(lab_session, _deadline(request.node))
    request.node.stash[_RUN] = run
    return run


@pytest.fixture(scope="module")
def http_stub() -> Iterator[ScriptedHTTPServer]:
    """A scripted loopback HTTP server the learner's tasks call; it records every request."""
    with ScriptedHTTPServer() as server:
        yield server


def _report(config: pytest.Config, name: str) -> GradeReport:
    reports = config.stash[_REPORTS]
    if name not in reports:
        reports[name] = GradeReport(lab=name, target="", broker="")
    return reports[name]


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(kit_root()))
    except ValueError:
        return str(path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    if not _is_graded(item):
        return
    report = _report(item.config, lab_name(Path(item.fspath)))
    phases = report.phases
    phases[f"in_{rep.when}"] = round(phases.get(f"in_{rep.when}", 0.0) + rep.duration, 3)  # for the benchmark
    if rep.when == "teardown" and rep.passed:
        return
    if rep.when == "call" or rep.failed:
        message = _message(call) if rep.failed else ""
        if (
            rep.failed
            and call.excinfo is not None
            and call.excinfo.errisinstance(VERDICTS + (AssertionError,))
        ):
            rep.longrepr = message
        run = item.stash.get(_RUN, None)
        log = run.session.logs(since=time.time() - rep.duration - 1) if (run and rep.failed) else ""
        judged, needs = rules_of(item)
        if log:
            rep.sections.append(("celerylab worker logs", log))
        title = _title(item)
        result = TestResult(
            id=item.nodeid,
            title=title,
            max_points=_points(item),
            points=0.0 if rep.failed else _points(item),
            status="fail" if rep.failed else "pass",
            message=message,
            duration=round(rep.duration, 3),
            backoff_wait=round(run.backoff_wait, 3) if run else 0.0,
            waited=round(_waited(run), 3),
            log=log[-3000:],
            timeline=run.evidence.table() if (run and rep.failed) else "",
            rules=list(judged),
            needs=list(needs),
            hidden=is_hidden(Path(item.fspath)),
        )
        report.tests = [t for t in report.tests if t.id != item.nodeid] + [result]


def _waited(run: LabRun | None) -> float:
    """What the test's scenario waited on Celery (its evidence's busy time), for the latency benchmark."""
    try:
        return run.evidence.busy() if run else 0.0
    except Exception:  # a recorder that never started: nothing was in flight
        return 0.0


def _title(item: pytest.Item) -> str:
    return (getattr(item.obj, "__doc__", None) or item.name).strip().splitlines()[0]


def _message(call: pytest.CallInfo) -> str:
    if call.excinfo is None:
        return ""
    exc = call.excinfo.value
    if isinstance(exc, VERDICTS):
        return str(exc)
    if isinstance(exc, AssertionError):
        return str(exc) or "an assertion failed"
    if str(exc).startswith("Timeout >"):  # pytest-timeout's backstop: a wait the deadline did not bound
        return (
            f"the test ran {BACKSTOP_MARGIN:.0f} s past its deadline and was stopped. The grader was stuck "
            "waiting on something its deadline does not bound; this is a grader bug, please report it."
        )
    # What went wrong first, then the end of the traceback (where it happened): a long traceback must not
    # push the error itself out of the message.
    head = f"the grader hit an unexpected {type(exc).__name__}: {str(exc)[:500]}"
    tb = str(call.excinfo.getrepr(style="short", chain=False))
    return f"{head}\n{tb[-2500:]}"


def pytest_keyboard_interrupt(excinfo) -> None:
    """Ctrl-C: fixtures still stop every worker; pytest's banner and half-made summary stay unprinted,
    and ``celerylab grade`` says it in one line (see ``interrupted``)."""
    config = _CONFIG.get("config")
    if config is None:
        return
    config.stash[_INTERRUPTED] = True
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter._tw = type(reporter._tw)(io.StringIO())  # the terminal writer, aimed at nothing


_CONFIG: dict[str, pytest.Config] = {}


def interrupted(config: pytest.Config) -> bool:
    return config.stash.get(_INTERRUPTED, False)


def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG["config"] = session.config


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in config.stash.get(_TEMP, []):
        shutil.rmtree(folder, ignore_errors=True)
    _CONFIG.pop("config", None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if interrupted(config):
        return
    reports = config.stash.get(_REPORTS, {})
    out_dir = Path(config.getoption("--report-dir") or state_dir() / "reports")
    for report in reports.values():
        if report.tests:
            report.duration = round(sum(t.duration for t in report.tests), 3)
            report.write(out_dir / f"{report.lab}.json")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if interrupted(config):
        return
    for report in config.stash.get(_REPORTS, {}).values():
        if report.tests:
            write_score_table(terminalreporter, report, timelines=config.option.verbose > 0)


def write_score_table(tr, report: GradeReport, timelines: bool = False) -> None:
    """The verdicts; with ``timelines`` (``-v``), what the workers did during each failed test too."""
    tr.write_sep("=", f"celerylab · {report.lab} · {report.target}")
    tr.write_line(f"broker: {report.broker}")
    for t in report.tests:
        mark, colour = ("✓", {"green": True}) if t.status == "pass" else ("✗", {"red": True})
        tr.write(f"  {mark} {t.points:g}/{t.max_points:g}  ", **colour)
        tr.write_line(t.title)
        lines = t.message.splitlines()
        for line in lines[:MESSAGE_LINES]:
            tr.write_line(f"         {line}")
        if len(lines) > MESSAGE_LINES:
            tr.write_line(f"         (... {len(lines) - MESSAGE_LINES} more lines in the JSON report)")
        if timelines and t.status == "fail" and t.timeline:
            tr.write_line("         what the workers did:")
            for line in t.timeline.splitlines()[:30]:
                tr.write_line(f"           {line}")
    full = report.full_marks
    tr.write_line(
        f"Score: {report.score:g}/{report.max_score:g}" + ("  — full marks!" if full else ""),
        green=full,
        red=not full,
        bold=True,
    )
