"""Grading a class: every submission of a lab, N at a time, each in a sandbox of its own.

``celerylab batch <lab> SUBMISSIONS_DIR``: one folder per student (its name is the student's), holding the
lab's ``tasks.py`` (and whatever else the lab's files are). The steps, in order:

1. :func:`plan`: one :class:`Submission` per folder, sorted by name (hidden folders skipped).
2. :func:`grade_one`, ``jobs`` at a time: the folder is copied into a private work folder (the grade's
   only writable place), the lab's hidden tests beside it, and a real ``celerylab grade`` runs there
   (celerylab.grading.gradejob) inside the sandbox (celerylab.grading.sandbox), on its own embedded
   broker, with a
   wall-clock timeout after which the whole sandbox is killed.
3. Each grade becomes an :class:`Outcome` with one verdict line (never a traceback): full marks, what
   failed first, or why there is no grade (timed out, killed its own grader, no tasks.py).
4. Its files are collected into the output folder as it ends: ``reports/<student>.json``
   (celerylab.grading.results), ``gradescope/<student>/results.json``, ``logs/<student>.log``; at the end the
   gradebook (celerylab.grading.gradebook). A failing or hostile submission never stops the batch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celerylab.grading import gradejob, sandbox
from celerylab.grading.gradejob import Run
from celerylab.grading.labs import Lab
from celerylab.grading.results import GradeReport

DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Submission:
    student: str
    folder: Path
    index: int


@dataclass
class Outcome:
    student: str
    report: GradeReport | None
    verdict: str
    seconds: float
    graded: bool  # a grade ran to its report

    @property
    def score(self) -> float:
        return self.report.score if self.report else 0.0


class BatchError(ValueError):
    """The batch cannot start (no such folder, a broker the sandbox cannot reach); says what to do."""


def plan(submissions: Path) -> list[Submission]:
    if not submissions.is_dir():
        raise BatchError(f"{submissions} is not a folder (give one folder per student inside it)")
    folders = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise BatchError(f"{submissions} holds no student folders")
    return [Submission(_safe(p.name), p, n) for n, p in enumerate(folders)]


def _safe(name: str) -> str:
    """A student's name as a file name (it names their report files)."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", name)[:100] or "_"


@dataclass
class Batch:
    """How a class is graded; :meth:`run` grades it."""

    lab: Lab
    out: Path
    jobs: int = 2
    broker: str = "embedded"
    support: sandbox.Support | None = None  # None: no sandbox asked for
    hidden: tuple[Path, ...] = ()  # hidden test modules, run with every grade
    timeout: float = DEFAULT_TIMEOUT
    limits: sandbox.Limits = sandbox.Limits()

    def __post_init__(self) -> None:
        if self.support is not None and self.support.full and self.broker != "embedded":
            raise BatchError(
                "a sandboxed grade has only its own loopback, so it cannot reach a broker on this machine: "
                "use --broker embedded (the default), or --sandbox off"
            )

    def run(self, submissions: list[Submission], on_start=None, on_done=None) -> list[Outcome]:
        """Grade every submission, ``jobs`` at a time; ``on_start(student)`` / ``on_done(outcome)`` hear
        of each (the progress display)."""
        for sub in ("reports", "gradescope", "logs"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="celerylab-batch-", dir=sandbox.scratch_parent()))
        os.chmod(scratch, 0o755)  # the sandboxed uids must reach their folders
        uid_base = sandbox.UID_BASE + (os.getpid() % 20000) * 64  # two batches at once: other uids

        def one(sub: Submission) -> Outcome:
            if on_start:
                on_start(sub.student)
            outcome = self.grade_one(sub, scratch, uid_base + sub.index % 64)
            if on_done:
                on_done(outcome)
            return outcome

        try:
            return gradejob.map_grades(one, submissions, self.jobs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def grade_one(self, sub: Submission, scratch: Path, uid: int) -> Outcome:
        work = scratch / f"{sub.index:03d}"
        target = work / "submission"
        for folder in ("home", "tmp"):
            (work / folder).mkdir(parents=True)
        shutil.copytree(sub.folder, target, symlinks=True)
        if not (target / "tasks.py").is_file():
            return self._collect(sub, None, "no tasks.py in the folder: nothing to grade", 0.0)
        wrap: Callable[[list[str]], list[str]] | None = None
        if self.support is not None:
            support, limits = self.support, self.limits
            sandbox.hand_over(work, uid, support)
            wrap = lambda cmd: sandbox.wrap(cmd, work, uid, support, limits)  # noqa: E731
        extra: list[str] = []
        if self.hidden:  # after the hand-over: these stay root's, read-only to the grade's uid
            (work / "hidden").mkdir()
            for path in self.hidden:
                shutil.copyfile(path, work / "hidden" / path.name)
            extra = ["--extra-tests", str(work / "hidden")]
        env = {"TMPDIR": str(work / "tmp"), "HOME": str(work / "home"), "PYTHONDONTWRITEBYTECODE": "1"}
        env["CELERYLAB_BROKER_URL"] = ""
        run = gradejob.run_grade(
            self.lab,
            target,
            self.broker,
            home=work / "home",
            extra=extra,
            env=env,
            timeout=self.timeout,
            wrap=wrap,
        )
        return self._collect(sub, run, verdict_of(run, self.timeout), run.seconds)

    def _collect(self, sub: Submission, run: Run | None, verdict: str, seconds: float) -> Outcome:
        report = run.report if run else None
        name = sub.student
        if report is not None:
            report.target = name
            report.write(self.out / "reports" / f"{name}.json")
            gradescope = report.to_gradescope()
        else:
            gradescope = {"score": 0, "output": verdict, "tests": []}
        folder = self.out / "gradescope" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(gradescope, indent=2))
        log = f"{verdict}\n\n{run.output if run else ''}"
        (self.out / "logs" / f"{name}.log").write_text(log)
        return Outcome(name, report, verdict, seconds, report is not None)


def verdict_of(run: Run, timeout: float) -> str:
    """One line a teacher can read in a gradebook cell."""
    if run.timed_out:
        return f"stopped: the grade ran past its {timeout:.0f} s limit, and everything it ran was killed"
    if run.report is None:
        return (
            f"no grade: the grader ended without a report (exit code {run.exit_code}); "
            "the submission may have killed or starved its grader (see its log)"
        )
    report = run.report
    if report.full_marks:
        return "full marks"
    failed = run.failed
    first = failed[0]
    line = next((ln for ln in first.message.splitlines() if ln.strip()), "failed")
    if first.message.splitlines() and "cannot be loaded" in line:
        cause = first.message.split("observed:", 1)[-1].strip().splitlines()
        return f"tasks.py cannot be loaded: {cause[0][:160] if cause else ''}".rstrip()
    return f"{len(failed)} of {len(report.tests)} tests failed; first: {line[:200]}"
