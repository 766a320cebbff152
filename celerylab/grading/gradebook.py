"""A class's grades as an LMS takes them: a CSV gradebook and a GitHub-style autograding summary.

``gradebook.csv``: one row per student: ``student, score, max, <one column per test>..., hidden, seconds,
verdict``. Test columns are the tests' titles in the autograder's order, the hidden tests' prefixed
``hidden:``; a cell is the points earned (0 when the grade never ran). ``hidden`` is the points from hidden
tests, so an instructor sees what the learners could not have tested themselves.

``summary.json``: the shape GitHub Classroom's autograding reporter used (``version``, ``status``,
``max_score``, ``tests`` with ``name``, ``status``, ``score``, ``message``), one per student, under
``students``, with the class's totals.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celerylab.grading.batch import Outcome


def columns(outcomes: Sequence[Outcome]) -> list[tuple[str, str, bool]]:
    """(test id, column title, hidden) of every test any grade ran, in the order they ran."""
    seen: dict[str, tuple[str, str, bool]] = {}
    for outcome in outcomes:
        for t in outcome.report.tests if outcome.report else []:
            title = f"hidden: {t.title}" if t.hidden else t.title
            seen.setdefault(t.id, (t.id, title, t.hidden))
    return list(seen.values())


def max_score(outcomes: Sequence[Outcome]) -> float:
    return max((o.report.max_score for o in outcomes if o.report), default=0.0)


def write_csv(outcomes: Sequence[Outcome], path: Path) -> None:
    cols = columns(outcomes)
    top = max_score(outcomes)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            ["student", "score", "max", *(title for _, title, _ in cols), "hidden", "seconds", "verdict"]
        )
        for o in outcomes:
            points = {t.id: t.points for t in o.report.tests} if o.report else {}
            hidden = sum(points.get(i, 0.0) for i, _, h in cols if h)
            out.writerow(
                [
                    o.student,
                    f"{o.score:g}",
                    f"{top:g}",
                    *(f"{points.get(i, 0.0):g}" for i, _, _ in cols),
                    f"{hidden:g}",
                    f"{o.seconds:.1f}",
                    o.verdict,
                ]
            )


def student_summary(outcome: Outcome, top: float) -> dict[str, Any]:
    """One student in GitHub Classroom's autograding result shape."""
    tests = [
        {
            "name": t.title,
            "status": t.status,
            "score": t.points,
            "max_score": t.max_points,
            "message": t.message,
            "hidden": t.hidden,
            "duration": t.duration,
        }
        for t in (outcome.report.tests if outcome.report else [])
    ]
    if outcome.report is None:
        status = "error"
    else:
        status = "pass" if outcome.report.full_marks else "fail"
    return {
        "version": 1,
        "status": status,
        "score": outcome.score,
        "max_score": top,
        "verdict": outcome.verdict,
        "tests": tests,
    }


def summary(lab: str, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    top = max_score(outcomes)
    students = {o.student: student_summary(o, top) for o in outcomes}
    return {
        "version": 1,
        "lab": lab,
        "max_score": top,
        "students": students,
        "totals": {
            "students": len(outcomes),
            "full_marks": sum(s["status"] == "pass" for s in students.values()),
            "errors": sum(s["status"] == "error" for s in students.values()),
        },
    }


def write(lab: str, outcomes: Sequence[Outcome], out: Path) -> tuple[Path, Path]:
    """``gradebook.csv`` and ``summary.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(outcomes, out / "gradebook.csv")
    (out / "summary.json").write_text(json.dumps(summary(lab, outcomes), indent=2))
    return out / "gradebook.csv", out / "summary.json"
