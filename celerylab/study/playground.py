"""Real workers from a notebook: the same engine the grader uses, behind one small object.

    pg = Playground()                 # broker: Redis if it answers, else an embedded Valkey
    pg.write_tasks(CODE)              # or Playground(folder="../solutions/retries")
    pg.start(concurrency=2)           # a real prefork worker on that tasks.py
    result = pg.send("fetch", url)
    pg.wait(result)
    pg.timeline.plot()
    pg.close()                        # optional: it also happens when the kernel shuts down

``start()`` again (e.g. from a widget with new settings) replaces the worker; ``mark()`` starts a fresh
timeline so a plot shows only the latest run; ``status()`` says what it waits for right now (a worker's
first ping, which tasks, where each one stands), for a widget's progress line. A playground lives as
long as its kernel: after ``close()`` (a notebook's last cell, "Run All" included) a widget that uses it
again gets it back, with the tasks.py it last wrote and the worker options it last started, so no cell
order breaks a widget. At interpreter exit (a kernel shut down from JupyterLab) it stops its workers and
removes its scratch folder and every key, queue and binding of its namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from celery.result import AsyncResult

from celerylab.engine.brokers import open_broker
from celerylab.engine.timeline import FINAL, DeadlineExceeded, Timeline
from celerylab.engine.workers import Worker
from celerylab.grading.session import LabRun, LabSession
from celerylab.study import explorer

BEAT = 0.5  # seconds: how often a long wait lets a widget's progress line refresh


class _NotebookRun(LabRun):
    """A LabRun that tells its playground what it waits for (``Playground.status``), and waits in slices
    so a widget's progress line moves meanwhile (``explorer.tick``, on this thread)."""

    def __init__(self, session: LabSession, deadline: float, playground: Playground) -> None:
        super().__init__(session, deadline)
        self.playground = playground

    def wait(self, results: AsyncResult | Iterable[AsyncResult], timeout: float | None = None) -> None:
        results = [results] if isinstance(results, AsyncResult) else list(results)
        ids = [r.id for r in results]
        with self.playground._doing("waiting for", ids):
            left = self._beats(lambda tl: all(tl.state(u) in FINAL for u in ids), "final states", timeout)
            super().wait(results, left)  # the last attempts' ends, and the verdict if time ran out

    def wait_until(self, predicate: Any, what: str, timeout: float | None = None) -> Any:
        with self.playground._doing(f"waiting for {what}"):
            left = self._beats(predicate, what, timeout)
            return super().wait_until(predicate, what, left)

    def _beats(self, predicate: Any, what: str, timeout: float | None) -> float:
        """Wait for ``predicate`` a beat at a time, ticking between beats; returns the time left."""
        end = time.monotonic() + min(timeout if timeout is not None else self.remaining(), self.remaining())
        while end - time.monotonic() > BEAT:
            try:
                self.timeline.wait_for(predicate, BEAT, what)
                break
            except DeadlineExceeded:
                explorer.tick()
        return max(0.0, end - time.monotonic())


class Playground:
    def __init__(self, folder: str | Path | None = None, broker: str | None = None, label: str = "notebook"):
        self._broker_choice, self.label = broker, label
        self._given = Path(folder).resolve() if folder else None
        self._code: str | None = None  # the last tasks.py written, re-written when the playground reopens
        self._last_start: dict[str, Any] | None = None
        self.session: LabSession | None = None
        self.run: LabRun | None = None
        self._stack: contextlib.ExitStack | None = None
        self._now: tuple[str, list[str]] | None = None  # what it waits for (status()), and on which tasks
        self._open()
        atexit.register(self.close)  # a kernel shut down without the last cell leaves nothing either

    def _open(self) -> None:
        self._stack = contextlib.ExitStack()
        self.broker = self._stack.enter_context(open_broker(self._broker_choice))
        self._scratch = Path(tempfile.mkdtemp(prefix="celerylab-nb-"))  # logs, and tasks.py unless given
        self.folder = self._given or self._scratch
        if self._code is not None and self._given is None:
            (self.folder / "tasks.py").write_text(self._code)

    @property
    def closed(self) -> bool:
        return self._stack is None

    def _reopen(self) -> None:
        if self.closed:
            self._open()

    def __enter__(self) -> Playground:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_tasks(self, code: str) -> Path:
        """Write ``tasks.py`` for the next :meth:`start` (the notebook shows the code it runs)."""
        self._reopen()
        self._code = textwrap.dedent(code)
        path = self.folder / "tasks.py"
        path.write_text(self._code)
        return path

    def start(self, concurrency: int = 2, deadline: float = 120.0, **worker_options: Any) -> Worker:
        """(Re)load tasks.py in a fresh namespace and start one real worker on it."""
        self._reopen()
        self._close_session()
        self._last_start = {"concurrency": concurrency, "deadline": deadline, **worker_options}
        self.session = LabSession(self.label, self.folder, self.broker, self._scratch / "logs")
        self.run = _NotebookRun(self.session, deadline, self)
        with self._doing("starting a worker (ready when it answers a ping)"):
            return self.session.worker(concurrency=concurrency, **worker_options)

    def worker(self, name: str, **worker_options: Any) -> Worker:
        """Another worker in the same namespace (e.g. to show two workers sharing a queue)."""
        run = self._run()
        with self._doing(f"starting worker {name} (ready when it answers a ping)"):
            return run.session.start_worker(name, **worker_options)

    @contextlib.contextmanager
    def _doing(self, what: str, uuids: list[str] | None = None) -> Iterator[None]:
        before, self._now = self._now, (what, uuids or [])
        explorer.tick()  # e.g. "starting a worker": shown before the call that blocks
        try:
            yield
        finally:
            self._now = before

    def status(self) -> str:
        """What the playground waits for now, in a line ("" when idle): e.g. ``waiting for 2 of 4 tasks:
        fetch[3f2a1c] try 2 due in 1.4 s; fetch[9b0e11] running try 3``. Safe to call from another
        thread while a cell waits (it only reads)."""
        now, run = self._now, self.run
        if now is None:
            return ""
        what, uuids = now
        if not uuids or run is None:
            return what
        timeline = run.timeline
        left = [u for u in uuids if timeline.state(u) not in FINAL]
        if not left:
            return f"{what} the workers' last events"
        names = timeline.names()
        shown = []
        for uuid in left[:3]:
            name = names.get(uuid, "task").rsplit(".", 1)[-1]
            tries, eta = timeline.attempts(uuid), timeline.pending_eta(uuid)
            if eta is not None:
                where = f"try {len(tries) + 1} due in {max(0.0, eta - time.time()):.1f} s"
            elif tries and tries[-1].outcome == "running":
                where = f"running try {len(tries)}"
            else:
                where = (timeline.state(uuid) or "in the queue").lower()
            shown.append(f"{name}[{uuid[:6]}] {where}")
        more = f" (+{len(left) - len(shown)} more)" if len(left) > len(shown) else ""
        return f"{what} {len(left)} of {len(uuids)} task(s): " + "; ".join(shown) + more

    def _run(self) -> LabRun:
        if self.run is None and self._last_start is not None:  # closed by a later cell: start it again
            print("(the playground was closed: starting its worker again)")
            self.start(**self._last_start)
        if self.run is None:
            raise RuntimeError("call start() first: it loads tasks.py and starts a worker")
        return self.run

    @property
    def timeline(self) -> Timeline:
        return self._run().timeline

    @property
    def app(self):
        return self._run().session.app

    @property
    def tasks(self):
        """tasks.py imported here, configured for the current namespace: what a widget should use, since
        a module imported before a ``close()`` still points at the namespace that is gone."""
        return self._run().session.module()

    def mark(self, deadline: float = 120.0) -> Timeline:
        """Forget earlier events: the timeline starts now."""
        self.run = _NotebookRun(self._run().session, deadline, self)
        return self.run.timeline

    def send(self, task: str, *args: Any, **options: Any) -> AsyncResult:
        return self._run().send(task, *args, **options)

    def signature(self, task: str, *args: Any, **options: Any):
        return self._run().signature(task, *args, **options)

    def wait(self, results: AsyncResult | list[AsyncResult], timeout: float = 60.0) -> None:
        run = self._run()
        run.deadline, run.deadline_seconds = (
            time.monotonic() + timeout,
            timeout,
        )  # a notebook has no test budget
        run.wait(results, timeout)

    def _close_session(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = self.run = None

    def close(self) -> None:
        """Stop the workers, delete the namespace from the broker, remove the scratch folder (and stop an
        embedded broker). Safe to call twice; the playground reopens if it is used again."""
        if self.closed:
            return
        self._close_session()
        stack, self._stack = self._stack, None
        stack.close()
        shutil.rmtree(self._scratch, ignore_errors=True)
