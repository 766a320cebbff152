"""What an autograder test uses to run a learner's tasks for real and judge them.

``LabSession`` (one per lab module in a pytest run): the learner's folder, a namespace on the broker,
the import probe's verdict, an event recorder, and workers reused across tests while they stay healthy.
``LabRun`` (one per test): the timeline since the test began, its deadline, and helpers that turn every
way a learner's code can go wrong into a :class:`LabFailure` that says what to do next.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from celery.result import AsyncResult

from celerylab import runtime
from celerylab.brokers import Broker
from celerylab.namespaces import Namespace
from celerylab.timeline import DeadlineExceeded, Recorder, Timeline
from celerylab.workers import Beat, Worker, WorkerError

PROBE_TIMEOUT = float(
    os.environ.get("CELERYLAB_PROBE_TIMEOUT", "20")
)  # importing tasks.py may not take longer


class LabFailure(AssertionError):
    """A verdict for the learner: what was expected, what happened, what to try."""


def verdict(what: str, *, expected: str = "", observed: str = "", hint: str = "") -> str:
    lines = [what]
    if expected:
        lines.append(f"expected: {expected}")
    if observed:
        lines.append(f"observed: {observed}")
    if hint:
        lines.append(f"try:      {hint}")
    return "\n".join(lines)


def expect(condition: Any, what: str, *, expected: str = "", observed: str = "", hint: str = "") -> None:
    """Fail the test with a learner-facing verdict unless ``condition`` holds."""
    if not condition:
        raise LabFailure(verdict(what, expected=expected, observed=observed, hint=hint))


class LabSession:
    def __init__(self, name: str, folder: Path, broker: Broker, logdir: Path) -> None:
        self.name, self.folder, self.broker = name, folder, broker
        self.ns = Namespace(broker, name)
        self.logdir = logdir
        shutil.rmtree(logdir, ignore_errors=True)
        logdir.mkdir(parents=True, exist_ok=True)
        self._probe_result: dict[str, Any] | None = None
        self._probing = threading.Thread(target=self._run_probe, name="celerylab-probe", daemon=True)
        self._probing.start()  # overlaps the recorder's start and the first worker's
        self.app = self.ns.app("grader")
        self.recorder = Recorder(self.ns.app("recorder")).start()
        self._reused: dict[str, Worker] = {}
        self._started: list[Worker | Beat] = []
        self.worker_start_seconds = 0.0
        self._module: ModuleType | None = None

    @property
    def probe(self) -> dict[str, Any]:
        """The import probe's report: ``{"ok": True, "tasks": {...}}`` or what went wrong."""
        self._probing.join()
        assert self._probe_result is not None
        return self._probe_result

    def _run_probe(self) -> None:
        self._probe_result = self._probe()

    def _probe(self) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "celerylab.runtime", "probe", str(self.folder)]
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT, cwd=self.folder
            ).stdout
        except subprocess.TimeoutExpired:
            return {
                "ok": False,
                "kind": "timeout",
                "message": (
                    f"importing tasks.py did not finish within {PROBE_TIMEOUT:.0f} s. Is there an infinite "
                    "loop or a blocking call (a network request, input(), a result's .get()) at module level?"
                ),
            }
        except FileNotFoundError:
            return {"ok": False, "kind": "missing", "message": f"{self.folder} does not exist."}
        for line in reversed(out.splitlines()):
            if line.startswith(runtime.PROBE_MARK):
                return json.loads(line[len(runtime.PROBE_MARK) :])
        return {"ok": False, "kind": "crash", "message": f"importing tasks.py killed Python:\n{out[-1500:]}"}

    # -- the learner's code ---------------------------------------------------------------------
    def require_import(self) -> None:
        if not self.probe["ok"]:
            raise LabFailure(
                verdict(
                    f"{self.folder.name}/tasks.py cannot be loaded, so no task can run.",
                    observed=self.probe["message"],
                    hint="fix this first (`python tasks.py` in the lab folder shows it), then grade again.",
                )
            )

    def task_name(self, short: str) -> str:
        """The registered name of the learner's task ``short`` (e.g. ``tasks.fetch``)."""
        self.require_import()
        tasks = self.probe["tasks"]
        for name in tasks:
            if name == short or name.rsplit(".", 1)[-1] == short:
                return name
        found = ", ".join(sorted(n.rsplit(".", 1)[-1] for n in tasks)) or "none"
        raise LabFailure(
            verdict(
                f"MISSING TASK: tasks.py has no Celery task named `{short}`.",
                expected=f"a function `{short}` decorated with @app.task, as the lab's README says",
                observed=f"tasks found: {found}",
                hint="did you misname it, or forget the @app.task decorator?",
            )
        )

    def task_options(self, short: str) -> dict[str, Any]:
        return self.probe["tasks"][self.task_name(short)]

    def module(self) -> ModuleType:
        """The learner's module imported here, configured for this namespace (after the probe passed)."""
        self.require_import()
        if self._module is None:
            self._module, app = runtime.load_tasks(self.folder, self.ns.config())
            self.ns.adopt(app)  # closed, and its result subscriptions dropped, with the namespace
        return self._module

    # -- workers ----------------------------------------------------------------------------------
    def worker(self, key: str = "w1", **options: Any) -> Worker:
        """A ready worker, reused while alive and idle; replaced if a previous test left it busy."""
        return self.workers([key], **options)[0]

    def workers(self, keys: Sequence[str], **options: Any) -> list[Worker]:
        """Several reused workers with the same options; any that must (re)start start side by side."""
        fresh = []
        for key in keys:
            worker = self._reused.get(key)
            if worker is not None and (not worker.alive or not worker.ping(1.0) or worker.busy()):
                worker.stop()
                worker = None
            if worker is None:
                fresh.append(key)
        for worker in self._start_workers(fresh, options):
            self._reused[worker.name] = worker
        return [self._reused[key] for key in keys]

    def start_worker(self, name: str, **options: Any) -> Worker:
        """A new worker this caller owns (stop it, or let the session do it at the end)."""
        return self._start_workers([name], options)[0]

    def _start_workers(self, names: Sequence[str], options: dict[str, Any]) -> list[Worker]:
        """Spawn every worker first, then wait for each: n start-ups cost about one."""
        workers = [Worker(self.ns, self.folder, name=n, log_path=self._log_path(n), **options) for n in names]
        self._started.extend(workers)
        begun = time.monotonic()
        try:
            for worker in workers:
                worker.spawn()
            self.require_import()  # the probe ran meanwhile; a broken module gets its clear verdict here
            for worker in workers:
                worker.wait_ready()
        except LabFailure:
            for worker in workers:
                worker.stop()
            raise
        except WorkerError as exc:
            raise LabFailure(
                verdict(
                    "A worker could not start on your tasks.py.",
                    observed=str(exc),
                    hint="read the log above; the line that raised is near its end.",
                )
            ) from None
        finally:
            self.worker_start_seconds += time.monotonic() - begun
        return workers

    def start_beat(self, settings: dict[str, Any] | None = None) -> Beat:
        self.require_import()
        beat = Beat(self.ns, self.folder, settings, log_path=self._log_path("beat"))
        self._started.append(beat)
        try:
            beat.start()
        except WorkerError as exc:
            raise LabFailure(
                verdict("celery beat could not start on your tasks.py.", observed=str(exc))
            ) from None
        return beat

    def _log_path(self, name: str) -> Path:
        """A fresh log per process: ``w1.log``, then ``w1-2.log`` for its replacement, and so on."""
        path, n = self.logdir / f"{name}.log", 1
        while path.exists():
            n += 1
            path = self.logdir / f"{name}-{n}.log"
        return path

    def logs(self, since: float = 0.0) -> str:
        """The tails of the logs of processes that were alive after ``since`` (a time.time())."""
        parts = []
        for proc in self._started:
            if (
                proc.log_path.exists()
                and proc.log_path.stat().st_mtime >= since
                and (tail := proc.log_tail(30))
            ):
                parts.append(f"--- {proc.log_path} ---\n{tail}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self._started:
            proc.stop()
        self._started.clear()
        self._reused.clear()
        self.recorder.stop()
        self.ns.cleanup()


class LabRun:
    """One test's view: its own timeline and deadline over the shared :class:`LabSession`."""

    def __init__(self, session: LabSession, deadline_seconds: float) -> None:
        self.session = session
        self.timeline: Timeline = session.recorder.timeline()
        self.deadline = time.monotonic() + deadline_seconds
        self.deadline_seconds = deadline_seconds
        self.backoff_wait = 0.0

    def __getattr__(self, name: str) -> Any:  # worker(), task_name(), module(), ns, app, ...
        return getattr(self.session, name)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def signature(self, task: str, *args: Any, **options: Any):
        return self.session.app.signature(self.task_name(task), args=args, **options)

    def send(self, task: str, *args: Any, **options: Any) -> AsyncResult:
        return self.session.app.send_task(self.task_name(task), args=args, **options)

    def wait(self, results: AsyncResult | Iterable[AsyncResult], timeout: float | None = None) -> None:
        """Until every task is finished (per the workers' events), bounded by the test's deadline."""
        results = [results] if isinstance(results, AsyncResult) else list(results)
        limit = min(timeout if timeout is not None else self.remaining(), self.remaining())
        try:
            self.timeline.wait_final([r.id for r in results], limit)
        except DeadlineExceeded as exc:
            raise LabFailure(
                verdict(
                    f"Gave up waiting ({self.deadline_seconds:.0f} s deadline for this test).",
                    observed=str(exc),
                    hint="a task that never ends blocks without a timeout, loops, or was never picked up.",
                )
            ) from None
        self.backoff_wait += max((sum(self.timeline.gaps(r.id)) for r in results), default=0.0)

    def wait_until(self, predicate: Any, what: str, timeout: float | None = None) -> Any:
        limit = min(timeout if timeout is not None else self.remaining(), self.remaining())
        try:
            return self.timeline.wait_for(predicate, limit, what)
        except DeadlineExceeded as exc:
            raise LabFailure(verdict(f"Gave up waiting for {what}.", observed=str(exc))) from None
