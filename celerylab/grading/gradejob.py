"""One grade in a process of its own: what ``celerylab check`` and ``celerylab batch`` share.

The grade is a real ``celerylab grade`` with its own ``CELERYLAB_HOME`` (logs, reports: grades may overlap),
started through :func:`celerylab.engine.processes.spawn` (its own session, dies with its parent, stopped on
Ctrl-C), its output in a file rather than a pipe (a child the learner's code starts at import would hold
a pipe open), and a wall-clock timeout after which its whole process group is stopped: first a Ctrl-C,
which lets it clean its namespace off a shared broker, then SIGKILL. ``wrap`` puts it in a sandbox.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from celerylab.engine import processes
from celerylab.grading.labs import Lab
from celerylab.grading.results import GradeReport
from celerylab.paths import kit_root

GRADE_TIMEOUT = 600.0
OUTPUT_TAIL = 3000
_running: set[subprocess.Popen] = set()
_lock = threading.Lock()
_stopping = threading.Event()
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Run:
    report: GradeReport | None
    output: str  # the tail of what the grade printed, for a run that produced no report
    exit_code: int | None = None
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def failed(self) -> list:
        return [t for t in self.report.tests if t.status != "pass"] if self.report else []


def grade_command(
    lab: Lab,
    target: Path,
    report_dir: Path,
    broker: str | None = None,
    keyword: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    cmd = [sys.executable, "-m", "celerylab.cli", "grade", lab.name, "--target", str(target)]
    cmd += ["--report-dir", str(report_dir)]
    if broker:
        cmd += ["--broker", broker]
    if keyword:
        cmd += ["-k", keyword]
    return cmd + list(extra)


def run_grade(
    lab: Lab,
    target: Path,
    broker: str | None = None,
    keyword: str | None = None,
    *,
    home: Path | None = None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = GRADE_TIMEOUT,
    wrap: Callable[[list[str]], list[str]] | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> Run:
    """Grade ``target`` (a folder or a ``.py`` file) once. ``home`` is the grade's state folder (reports
    in ``home/report``); without it a temp folder is made and removed. ``wrap`` turns the command line into
    a sandboxed one; ``started`` hears of the process (so a batch can stop it)."""
    with tempfile.TemporaryDirectory(prefix="celerylab-grade-") as scratch:
        home = home or Path(scratch)
        report_dir = home / "report"
        cmd = grade_command(lab, target, report_dir, broker, keyword, extra)
        if wrap is not None:
            cmd = wrap(cmd)
        log = Path(scratch) / "grade.log"
        begun = time.monotonic()
        proc = processes.spawn(
            cmd, log_path=log, cwd=kit_root(), env={**os.environ, "CELERYLAB_HOME": str(home), **(env or {})}
        )
        with _lock:
            _running.add(proc)
        if started is not None:
            started(proc)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            processes.kill_group(proc, signal.SIGINT if proc.poll() is None else signal.SIGKILL, wait=15)
            with _lock:
                _running.discard(proc)
        output = log.read_text(errors="replace")[-OUTPUT_TAIL:]
        if timed_out:
            output = f"the grade took longer than {timeout:.0f} s and was stopped\n{output}"
        path = report_dir / f"{lab.name}.json"
        try:
            report = GradeReport.read(path) if path.exists() and not timed_out else None
        except (ValueError, TypeError, KeyError, OSError) as exc:  # a report damaged by whatever ran
            report, output = None, f"the grade's report could not be read ({exc})\n{output}"
        return Run(report, output, proc.returncode, round(time.monotonic() - begun, 3), timed_out)


def interrupt_running() -> None:
    """Ctrl-C every grade still running (each stops its workers and cleans its namespace)."""
    with _lock:
        procs = list(_running)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass


def map_grades(fn: Callable[[T], R], items: Iterable[T], jobs: int) -> list[R]:
    """``[fn(item) ...]``, ``jobs`` at a time, in order. A Ctrl-C is passed on to every running grade
    (they run in sessions of their own, out of the terminal's reach) and the rest are not started."""
    _stopping.clear()

    def guarded(item: T) -> R:
        if _stopping.is_set():
            raise KeyboardInterrupt
        return fn(item)

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    futures = [pool.submit(guarded, item) for item in items]
    try:
        return [f.result() for f in futures]
    except KeyboardInterrupt:
        _stopping.set()
        for f in futures:
            f.cancel()
        interrupt_running()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


HIDDEN_DIR = "tests/hidden"  # the kit's own hidden tests: tests/hidden/<lab>/test_<lab>__<what>.py


def hidden_tests(lab: Lab, folders: Iterable[Path] = (), kit: bool = False) -> list[Path]:
    """The hidden test modules of ``lab``: ``test_<lab>__*.py`` in each folder or its ``<lab>/``
    subfolder; with ``kit``, the kit's own (``tests/hidden/<lab>/``, left out of the starter pack)."""
    places = [Path(f) for f in folders] + ([kit_root() / HIDDEN_DIR] if kit else [])
    found: list[Path] = []
    for place in places:
        for folder in (place, place / lab.name):
            found += sorted(folder.glob(f"test_{lab.name}__*.py")) if folder.is_dir() else []
    return list(dict.fromkeys(p.resolve() for p in found))
