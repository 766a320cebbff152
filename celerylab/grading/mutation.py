"""Grading the graders: every mutant must be caught where its rule is judged, every variant must pass.

A lab's ``solutions/<lab>/mutants/<rule>[--<what>].py`` each break one rule of the lab's contract (its
``lab.toml`` rules); ``solutions/<lab>/variants/*.py`` are correct solutions written differently from the
reference. :func:`check` grades each of them ``repeat`` times, each grade a real ``celerylab grade`` in its
own process, and judges:

- the reference solution and every variant: full marks on every run;
- a mutant of rule R: on every run, at least one failed test judges R (``@pytest.mark.rules("R")``), and
  every failed test judges or needs R. A mutant that passes is a missing test; one that fails elsewhere
  is a grader that blames the wrong rule.

A mutant or variant folder is an overlay: only the files that differ, laid over a copy of the solution
(:func:`overlay`), which is how a lab whose solution is a whole project (a Django one) is mutated.

``celerylab grade --repeat N`` uses the same runs to show each test's pass rate, so a race in a learner's
code shows up as 17/20 rather than as a lucky pass.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from celerylab.grading.gradejob import GRADE_TIMEOUT, Run, map_grades, run_grade
from celerylab.grading.labs import Lab, mutant_rule
from celerylab.grading.results import TestResult

__all__ = ["GRADE_TIMEOUT", "Run", "check", "grade_once", "grade_runs", "judge", "pass_rates"]


def grade_once(lab: Lab, target: Path, broker: str | None = None, keyword: str | None = None) -> Run:
    """One real grade of ``target`` (a folder or a ``.py`` file) in a fresh process
    (celerylab.grading.gradejob)."""
    return run_grade(lab, target, broker, keyword, timeout=GRADE_TIMEOUT)


def grade_runs(
    lab: Lab, target: Path, repeat: int, broker: str | None = None, jobs: int = 1, keyword: str | None = None
) -> list[Run]:
    return map_grades(lambda _: grade_once(lab, target, broker, keyword), range(repeat), jobs)


def pass_rates(runs: Iterable[Run]) -> dict[str, tuple[str, int, int]]:
    """test id -> (title, runs passed, runs graded)."""
    rates: dict[str, tuple[str, int, int]] = {}
    for run in runs:
        for t in run.report.tests if run.report else []:
            title, passed, total = rates.get(t.id, (t.title, 0, 0))
            rates[t.id] = (title, passed + (t.status == "pass"), total + 1)
    return rates


@dataclass
class Verdict:
    kind: str  # "solution" | "variant" | "mutant"
    path: Path
    rule: str | None
    runs: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def caught(self) -> int:
        """Runs that judged it right: full marks for a correct solution, a catch for a mutant."""
        return len(self.runs) - len({p.split(":", 1)[0] for p in self.problems})


def _evidence(test: TestResult) -> str:
    """A failed verdict's first lines (what, expected, observed): a flake in CI must be diagnosable from
    its log alone."""
    return " / ".join((test.message or "").splitlines()[:4])


def judge(kind: str, path: Path, rule: str | None, runs: list[Run]) -> Verdict:
    verdict = Verdict(kind, path, rule, runs)
    for n, run in enumerate(runs, 1):
        if run.report is None:
            verdict.problems.append(f"run {n}: no report\n{run.output}")
        elif kind != "mutant":
            if not run.report.full_marks:
                lost = "; ".join(f"{t.title}: {_evidence(t)}" for t in run.failed)
                verdict.problems.append(f"run {n}: {run.report.score:g}/{run.report.max_score:g} ({lost})")
        else:
            judged = [t for t in run.failed if rule in t.rules]
            elsewhere = [
                f"{t.title} ({_evidence(t)})"
                for t in run.failed
                if rule not in t.rules and rule not in t.needs
            ]
            if not judged:
                verdict.problems.append(f"run {n}: survived (no test of rule {rule} failed)")
            if elsewhere:
                verdict.problems.append(f"run {n}: also failed tests of other rules: {elsewhere}")
    return verdict


SKIP = shutil.ignore_patterns("mutants", "variants", "__pycache__", "*.pyc", "db.sqlite3")


def overlay(lab: Lab, folder: Path, into: Path) -> Path:
    """A mutant or variant that is a folder holds only the files that differ from the solution (say
    ``orders/services.py``): the graded code is a copy of the solution with those files laid over it, so
    one mistake in a multi-file project is one small file. Returns ``into``."""
    shutil.copytree(lab.solution, into, ignore=SKIP)
    shutil.copytree(folder, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    return into


Target = tuple[str, Path, str | None]  # kind, path, the rule a mutant breaks (None otherwise)


def targets(lab: Lab, kinds: Iterable[str] = ("solution", "variant", "mutant")) -> list[Target]:
    out: list[Target] = []
    if "solution" in kinds:
        out.append(("solution", lab.solution, None))
    if "variant" in kinds:
        out += [("variant", p, None) for p in lab.variants]
    if "mutant" in kinds:
        out += [("mutant", p, mutant_rule(p)) for p in lab.mutants]
    return out


def check(
    lab: Lab,
    repeat: int = 1,
    broker: str | None = None,
    kinds: Iterable[str] = ("solution", "variant", "mutant"),
    jobs: int = 2,
    on_run: Callable[[Target, Run], None] | None = None,
) -> list[Verdict]:
    """Grade the solution, the variants and the mutants of ``lab`` ``repeat`` times each; ``on_run`` hears
    of each grade as it ends (a check of every mutant ten times takes a while)."""
    forward = None if on_run is None else (lambda _lab, target, run: on_run(target, run))
    return check_many([lab], repeat, broker, kinds, jobs, forward)[lab.name]


def check_many(
    chosen: Sequence[Lab],
    repeat: int = 1,
    broker: str | None = None,
    kinds: Iterable[str] = ("solution", "variant", "mutant"),
    jobs: int = 2,
    on_run: Callable[[Lab, Target, Run], None] | None = None,
) -> dict[str, list[Verdict]]:
    """:func:`check` for several labs from one pool of ``jobs`` grades, so it stays full from one lab to the
    next; verdicts by lab name."""
    kinds = tuple(kinds)
    plan = [(lab, target) for lab in chosen for target in targets(lab, kinds) for _ in range(repeat)]

    def one(job: tuple[Lab, Target]) -> Run:
        lab, target = job
        run = grade_once(lab, target[1], broker)
        if on_run is not None:
            on_run(lab, target, run)
        return run

    runs = map_grades(one, plan, jobs)
    verdicts: dict[str, list[Verdict]] = {lab.name: [] for lab in chosen}
    for i in range(0, len(plan), repeat):
        lab, (kind, path, rule) = plan[i]
        verdicts[lab.name].append(judge(kind, path, rule, runs[i : i + repeat]))
    return verdicts
