"""Grading a class: every submission of a lab, N at a time, each in a sandbox of its own.

``celerylab batch <lab> SUBMISSIONS_DIR``: one folder per student (its name is the student's), holding the
lab's ``tasks.py`` (and whatever else the lab's files are). The steps, in order:

1. :func:`plan`: one :class:`Submission` per folder, sorted by name (hidden folders skipped).
2. :func:`grade_work`, ``jobs`` at a time: the folder is copied into a private work folder (the grade's
   only writable place), the lab's hidden tests beside it, and a real ``celerylab grade`` runs there
   (celerylab.grading.gradejob) inside the sandbox (celerylab.grading.sandbox), on its own embedded
   broker, with a wall-clock timeout after which the whole sandbox is killed. Where it runs is the one
   thing a farm changes (celerylab.grading.farm: the same function, on a farm worker).
3. Each grade becomes a :class:`Graded` with one verdict line (never a traceback): full marks, what
   failed first, or why there is no grade (timed out, killed its own grader, no tasks.py).
4. :meth:`Batch.collect` files it, once per student, as it ends: ``reports/<student>.json``
   (celerylab.grading.results), ``gradescope/<student>/results.json``, ``logs/<student>.log``; at the end
   the gradebook (celerylab.grading.gradebook). A failing or hostile submission never stops the batch, and
   a second result for a student already collected (a farm's redelivered grade) is ignored, said in a note.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celerylab.grading import gradejob, sandbox
from celerylab.grading.gradejob import Run
from celerylab.grading.labs import Lab
from celerylab.grading.results import GradeReport

DEFAULT_TIMEOUT = 300.0
LIMITS = sandbox.Limits()
NO_TASKS = "no tasks.py in the folder: nothing to grade"


@dataclass(frozen=True)
class Submission:
    student: str
    folder: Path
    index: int


@dataclass
class Graded:
    """What one grade gave, wherever it ran: the report (None: no grade), its verdict line, the tail of
    what it printed, and where it ran (a farm worker's name; empty for this machine)."""

    report: GradeReport | None
    verdict: str
    log: str
    seconds: float
    where: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: how a farm worker sends it back."""
        report = self.report.to_dict() if self.report else None
        return {"report": report, "verdict": self.verdict, "log": self.log, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> Graded:
        report = data.get("report")
        return cls(
            GradeReport.from_dict(report, f"the report from {where or 'a farm worker'}") if report else None,
            str(data["verdict"]),
            str(data.get("log", "")),
            float(data.get("seconds", 0.0)),
            where,
        )


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


def grade_work(
    lab: Lab,
    work: Path,
    *,
    uid: int,
    support: sandbox.Support | None,
    limits: sandbox.Limits = LIMITS,
    hidden: Sequence[Path] = (),
    broker: str = "embedded",
    timeout: float = DEFAULT_TIMEOUT,
) -> Graded:
    """Grade ``work/submission`` (already in place), ``work`` the grade's only writable folder: the one
    step a local batch and a farm worker share."""
    target = work / "submission"
    for folder in ("home", "tmp"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    if not (target / "tasks.py").is_file():
        return Graded(None, NO_TASKS, "", 0.0)
    wrap: Callable[[list[str]], list[str]] | None = None
    if support is not None:
        sandbox.hand_over(work, uid, support)
        wrap = lambda cmd: sandbox.wrap(cmd, work, uid, support, limits)  # noqa: E731
    extra: list[str] = []
    if hidden:  # after the hand-over: these stay root's, read-only to the grade's uid
        (work / "hidden").mkdir()
        for path in hidden:
            shutil.copyfile(path, work / "hidden" / path.name)
        extra = ["--extra-tests", str(work / "hidden")]
    env = {"TMPDIR": str(work / "tmp"), "HOME": str(work / "home"), "PYTHONDONTWRITEBYTECODE": "1"}
    env["CELERYLAB_BROKER_URL"] = ""
    run = gradejob.run_grade(
        lab, target, broker, home=work / "home", extra=extra, env=env, timeout=timeout, wrap=wrap
    )
    return Graded(run.report, verdict_of(run, timeout), run.output, run.seconds)


@dataclass
class Batch:
    """How a class is graded; :meth:`run` grades it. Subclasses change only where each grade runs
    (:meth:`grade_all`); collecting is :meth:`collect`, the same for all."""

    lab: Lab
    out: Path
    jobs: int = 2
    broker: str = "embedded"
    support: sandbox.Support | None = None  # None: no sandbox asked for
    hidden: tuple[Path, ...] = ()  # hidden test modules, run with every grade
    timeout: float = DEFAULT_TIMEOUT
    limits: sandbox.Limits = sandbox.Limits()
    notes: list[str] = field(default_factory=list, init=False)  # what it said: where farm grades ran, ignored
    _on_note: Callable[[str], None] | None = field(default=None, init=False, repr=False)
    _collected: dict[str, Outcome] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.support is not None and self.support.full and self.broker != "embedded":
            raise BatchError(
                "a sandboxed grade has only its own loopback, so it cannot reach a broker on this machine: "
                "use --broker embedded (the default), or --sandbox off"
            )

    def run(
        self,
        submissions: list[Submission],
        on_start: Callable[[str], None] | None = None,
        on_done: Callable[[Outcome], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> list[Outcome]:
        """Grade every submission; ``on_start(student)`` / ``on_done(outcome)`` hear of each (the progress
        display), ``on_note(text)`` of anything the batch ignored. One outcome per submission, in order."""
        for sub in ("reports", "gradescope", "logs"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        self._collected.clear()
        self.notes.clear()
        self._on_note = on_note

        def finished(sub: Submission, graded: Graded) -> None:
            outcome = self.collect(sub, graded)
            if outcome is not None and on_done:
                on_done(outcome)

        self.grade_all(submissions, on_start or (lambda student: None), finished)
        return [self._collected[sub.student] for sub in submissions if sub.student in self._collected]

    def grade_all(
        self,
        submissions: list[Submission],
        started: Callable[[str], None],
        finished: Callable[[Submission, Graded], None],
    ) -> None:
        """Here: ``jobs`` at a time in threads, each grade in its own process (and sandbox)."""
        scratch = Path(tempfile.mkdtemp(prefix="celerylab-batch-", dir=sandbox.scratch_parent()))
        os.chmod(scratch, 0o755)  # the sandboxed uids must reach their folders
        uid_base = sandbox.UID_BASE + (os.getpid() % 20000) * 64  # two batches at once: other uids

        def one(sub: Submission) -> None:
            started(sub.student)
            work = scratch / f"{sub.index:03d}"
            shutil.copytree(sub.folder, work / "submission", symlinks=True)
            graded = grade_work(
                self.lab,
                work,
                uid=uid_base + sub.index % 64,
                support=self.support,
                limits=self.limits,
                hidden=self.hidden,
                broker=self.broker,
                timeout=self.timeout,
            )
            finished(sub, graded)

        try:
            gradejob.map_grades(one, submissions, self.jobs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def collected(self, student: str) -> bool:
        with self._lock:
            return student in self._collected

    def say(self, text: str) -> None:
        """A line for the instructor (the progress display prints it), kept in :attr:`notes`."""
        self.notes.append(text)
        if self._on_note:
            self._on_note(text)

    def collect(self, sub: Submission, graded: Graded) -> Outcome | None:
        """File one student's grade (report, Gradescope results, log) and return its outcome; a second
        grade of a student already collected is not filed: None, and a note says so."""
        name = sub.student
        with self._lock:
            if name in self._collected:
                first = self._collected[name]
                self.say(
                    f"{name}: another grade arrived{f' from {graded.where}' if graded.where else ''} after "
                    f"theirs was collected ({first.score:g} points, {first.verdict}); ignored, so they "
                    "are counted once"
                )
                return None
            outcome = Outcome(name, graded.report, graded.verdict, graded.seconds, graded.report is not None)
            self._collected[name] = outcome
        report = graded.report
        if report is not None:
            report.target = name
            report.write(self.out / "reports" / f"{name}.json")
            gradescope = report.to_gradescope()
        else:
            gradescope = {"score": 0, "output": graded.verdict, "tests": []}
        folder = self.out / "gradescope" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(gradescope, indent=2))
        where = f"graded on {graded.where}\n" if graded.where else ""
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        (self.out / "logs" / f"{name}.log").write_text(f"{graded.verdict}\n{where}\n{graded.log}")
        return outcome


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
