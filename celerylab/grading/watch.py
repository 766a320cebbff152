"""``celerylab watch <lab>``: save the file, see the verdict (rustlings' watch mode, on real workers).

One broker is opened for the whole session (an embedded Valkey stays warm between grades), and every save
of a file in the lab folder starts a real grade of it (celerylab.grading.gradejob) in its own process:
the tests
that failed last time run first (``$CELERYLAB_FIRST``, read by the grading plugin), and the first failure
is shown in full. A save during a grade Ctrl-Cs that grade (it stops its workers and cleans its
namespace) and starts again. Ctrl-C stops the grade and the broker: nothing is left behind.
"""

from __future__ import annotations

import threading
from pathlib import Path

from rich.console import Console

from celerylab.engine import brokers, processes
from celerylab.grading import gradejob
from celerylab.grading.labs import Lab
from celerylab.grading.results import GradeReport
from celerylab.paths import state_dir

DEBOUNCE_MS = 300


class Watcher:
    """Grades on request in a thread of its own; a new request cancels the grade under way."""

    def __init__(self, lab: Lab, target: Path | None, broker_url: str, console: Console) -> None:
        self.lab, self.target, self.broker_url, self.console = lab, target, broker_url, console
        self.failed_last: list[str] = []
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc = None
        self._thread = threading.Thread(target=self._loop, name="celerylab-watch", daemon=True)
        self.grades = 0

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def request(self, why: str) -> None:
        """Grade again; a grade under way is cancelled first."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self.console.print(f"[yellow]{why} during the grade: cancelled, grading again[/yellow]")
            gradejob.interrupt_running()
        self._wanted.set()

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        gradejob.interrupt_running()
        self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait()
            self._wanted.clear()
            if self._stop.is_set():
                return
            self._grade_once()

    def _started(self, proc) -> None:
        with self._lock:
            self._proc = proc

    def _grade_once(self) -> None:
        first = ",".join(self.failed_last)
        self.console.print(
            f"[bold]grading {self.lab.name}[/bold]"
            + (f" (last time's {len(self.failed_last)} failed test(s) first)" if self.failed_last else "")
        )
        run = gradejob.run_grade(
            self.lab,
            self.target or self.lab.folder,
            self.broker_url,
            home=state_dir() / "watch",
            env={"CELERYLAB_FIRST": first},
            started=self._started,
        )
        with self._lock:
            self._proc = None
        if self._wanted.is_set() or self._stop.is_set():
            return  # cancelled: the next grade says what it finds
        self.grades += 1
        if run.report is None:
            self.console.print(f"[red]the grade did not finish:[/red]\n{run.output[-1500:]}")
            return
        self.show(run.report)

    def show(self, report: GradeReport) -> None:
        for t in report.tests:
            mark = "[green]✓[/green]" if t.status == "pass" else "[red]✗[/red]"
            self.console.print(f"  {mark} {t.points:g}/{t.max_points:g}  {t.title}", soft_wrap=True)
        failed = [t for t in report.tests if t.status != "pass"]
        self.failed_last = [t.id for t in failed]
        if failed:
            first = failed[0]
            self.console.print(f"\n[bold red]first failure: {first.title}[/bold red]", soft_wrap=True)
            self.console.print(first.message, soft_wrap=True, markup=False)
            if first.timeline:
                self.console.print("what the workers did:", soft_wrap=True)
                self.console.print(first.timeline, soft_wrap=True, markup=False)
        verdict = "  — full marks!" if report.full_marks else ""
        colour = "green" if report.full_marks else "red"
        self.console.print(
            f"[bold {colour}]Score: {report.score:g}/{report.max_score:g}{verdict}[/bold {colour}]"
        )
        self.console.print("[dim]waiting for a save (Ctrl-C to stop)[/dim]")


def is_lab_file(path: str) -> bool:
    name = Path(path).name
    return not (name.startswith(".") or name.endswith((".pyc", "~")) or "celerybeat-schedule" in name)


def watch(
    lab: Lab,
    target: Path | None,
    broker: str | None,
    console: Console,
) -> int:
    """Grade now and after every save until Ctrl-C (which is re-raised once everything is stopped)."""
    import watchfiles

    folder = (target or lab.folder).resolve()
    with brokers.open_broker(broker) as opened:
        console.print(f"watching {folder} · broker kept warm: {opened.describe()}", soft_wrap=True)
        watcher = Watcher(lab, target, opened.url, console).start()
        watcher.request("start")
        try:
            for changes in watchfiles.watch(
                folder, debounce=DEBOUNCE_MS, step=50, watch_filter=lambda _, path: is_lab_file(path)
            ):
                names = ", ".join(sorted({Path(p).name for _, p in changes}))
                watcher.request(f"{names} saved")
        finally:
            watcher.stop()
            processes.kill_all()
    return 0
