"""What an autograder test uses to run a learner's tasks for real and judge them.

``LabSession`` (one per lab module in a pytest run): the learner's folder, a namespace on the broker,
the import probe's verdict, an event recorder, and workers reused across tests while they stay healthy.
``LabRun`` (one per test): the timeline since the test began, its deadline, and helpers that turn every
way a learner's code can go wrong into a :class:`LabFailure` that says what to do next.

Broker faults (``LabRun.broker_down``, ``restart_broker``, ``cut_connection``, ``connection_down``,
``stall_connection``), each marked on the timeline (``celerylab-broker`` events, drawn by its plot):
- On the embedded Valkey (the one broker the kit owns) ``broker_down`` really stops the server and starts it
  again on the same port and data folder: with ``keep_data`` every key survives (append-only file), without
  it every queued message, unacked message and result is gone. The event recorder listens again after it.
- On a broker the kit must not restart (a shared Redis, RabbitMQ) the down broker is played by the kit's
  TCP proxy (celerylab.engine.proxy): every worker started with ``start_worker(name, through_proxy=True)``
  has its connections cut and new ones refused until the block ends. Only those workers lose the broker
  (the grader, its recorder and other workers keep theirs), and the broker keeps its messages whatever
  ``keep_data`` says: nothing was restarted. A test that must judge the same on every broker starts the
  workers it faults through the proxy and passes ``keep_data=True``.
- ``cut_connection`` / ``connection_down`` / ``stall_connection`` fault one proxied worker's link only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from celery.result import AsyncResult

from celerylab.engine import databases, processes, runtime
from celerylab.engine.brokers import Broker
from celerylab.engine.namespaces import Namespace
from celerylab.engine.proxy import Proxy
from celerylab.engine.timeline import BROKER, FINAL, SCHEDULE, DeadlineExceeded, Recorder, Timeline
from celerylab.engine.workers import Beat, Worker, WorkerError
from celerylab.grading import labs

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
    def __init__(
        self,
        name: str,
        folder: Path,
        broker: Broker,
        logdir: Path,
        database: str | None = None,
        probe: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.name, self.folder, self.broker = name, folder, broker
        lab = _catalogued(name)
        self.app_module = lab.app if lab else "tasks"  # lab.toml `app`: what probe, workers and grader import
        self.source = "tasks.py" if self.app_module == "tasks" else f"the project ({lab.app_file})"
        self._kit = {runtime.OWN_SETTINGS: list(lab.own_settings)} if lab and lab.own_settings else {}
        self._env_before = {key: os.environ.get(key) for key, _ in (lab.env if lab else ())}
        os.environ.update(dict(lab.env) if lab else {})  # the grader, the probe and every worker see it
        self.database: databases.Database | None = None
        self.database_seconds = 0.0  # making the grade's database and its tables: a floor, like the broker's
        if lab and lab.database:  # made first, dropped by close() (the fixture's finally) whatever happens
            begun = time.monotonic()
            self.database = databases.create(database)
            self.database_seconds = time.monotonic() - begun
            self._env_before.setdefault(databases.PROJECT_ENV, os.environ.get(databases.PROJECT_ENV))
            os.environ[databases.PROJECT_ENV] = self.database.url
        self.command = _worker_command(
            name
        )  # the learner's own `celery -A ... worker` line, if the lab has one
        self.ns = Namespace(broker, name)
        if "accept_content" in (lab.own_settings if lab else ()):  # the learner's worker may answer in pickle
            self.ns.accept = ["json", "pickle"]  # the kit's own apps only: their workers keep the learner's
        self.logdir = logdir  # not emptied here: a grade empties its logs once, as it begins (the plugin)
        logdir.mkdir(parents=True, exist_ok=True)
        processes.become_subreaper()  # what the learner's code starts and orphans still comes to us
        self._probe_result: dict[str, Any] | None = None
        self._given_probe = probe  # run elsewhere (by the parent of the shards): its result, when ready
        self._probing = threading.Thread(target=self._run_probe, name="celerylab-probe", daemon=True)
        self._probing.start()  # overlaps the recorder's start and the first worker's
        self.app = self.ns.app("grader")
        self.recorder = Recorder(self.ns.app("recorder")).start()
        self._reused: dict[str, Worker] = {}
        self._owned: list[Worker] = []  # started for a test or a fixture (start_worker, a fleet): theirs
        self._started: list[Worker | Beat] = []
        self.proxies: dict[str, Proxy] = {}  # worker name -> the proxy between it and the broker
        self.worker_start_seconds = 0.0
        self._module: ModuleType | None = None

    @property
    def probe(self) -> dict[str, Any]:
        """The import probe's report: ``{"ok": True, "tasks": {...}}`` or what went wrong."""
        self._probing.join()
        assert self._probe_result is not None
        return self._probe_result

    def _run_probe(self) -> None:
        result = self._given_probe() if self._given_probe else probe_lab(self.name, self.folder)
        if result["ok"] and self.database is not None:  # tables before any worker or test touches them
            begun = time.monotonic()
            error = databases.migrate(self.folder)
            self.database_seconds += time.monotonic() - begun
            if error:
                result = {"ok": False, "kind": "migrate", "message": f"making the database failed: {error}"}
        self._probe_result = result

    # -- the learner's code ---------------------------------------------------------------------
    def require_import(self) -> None:
        if not self.probe["ok"]:
            raise LabFailure(
                verdict(
                    f"{self.folder.name}/{self.source} cannot be loaded, so no task can run."
                    if self.app_module == "tasks"
                    else f"The {self.source.removeprefix('the ')} cannot be loaded, so no task can run.",
                    observed=self.probe["message"],
                    hint="fix this first (`python tasks.py` in the lab folder shows it), then grade again."
                    if self.app_module == "tasks"
                    else "fix this first (`python manage.py check` in the lab folder shows it), then grade.",
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
                f"MISSING TASK: {self.source} has no Celery task named `{short}`.",
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
            self._module, app = runtime.load_tasks(
                self.folder, {**self.ns.config(), **self._kit}, self.app_module, on_queue=self.ns.owns_queue
            )
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

    def start_worker(self, name: str, *, through_proxy: bool = False, **options: Any) -> Worker:
        """A new worker this caller owns (stop it, or let the session do it at the end). ``through_proxy``:
        its broker connections (and its result backend's, when that is the same server) go through a
        TCP proxy the grader owns, so a test can cut, refuse or stall them (``LabRun.cut_connection``)."""
        if through_proxy:
            proxy = self.proxies[name] = Proxy.to(self.broker.url)
            routed = {"broker_url": proxy.url_for(self.broker.url)}
            if self.broker.backend_url == self.broker.url:
                routed["result_backend"] = routed["broker_url"]
            options = {**options, "settings": {**options.get("settings", {}), **routed}}
        return self._start_workers([name], options)[0]

    def proxy_of(self, worker: Worker | str) -> Proxy:
        """The proxy of a worker started with ``through_proxy=True``."""
        name = worker if isinstance(worker, str) else worker.name
        if name not in self.proxies:
            raise RuntimeError(
                f"worker {name} does not reach the broker through a proxy: start it with "
                f"lab.start_worker({name!r}, through_proxy=True)"
            )
        return self.proxies[name]

    def start_workers_on(self, queues: Mapping[str, Sequence[str]], **options: Any) -> list[Worker]:
        """New workers this caller owns, one per name, each consuming its own queues (its ``-Q``), started
        side by side. Queue names are the learner's (``images``): the worker renames them into the
        namespace (see celerylab.engine.namespaces.NamespacedQueues)."""
        fleet = self.start_fleet({n: {**options, "queues": list(q)} for n, q in queues.items()})
        return list(fleet.values())

    def start_fleet(self, specs: dict[str, dict[str, Any]], reuse: Iterable[str] = ()) -> dict[str, Worker]:
        """Workers with options of their own (name -> options), started side by side: a lab that needs a
        few differently configured workers pays about one start-up. Those named in ``reuse`` become the
        workers :meth:`worker` hands out under that name (replaced as usual if they die)."""
        workers = self._launch(
            [
                Worker(
                    self.ns,
                    self.folder,
                    name=n,
                    log_path=self._log_path(n),
                    command=self.command,
                    **{"module": self.app_module, **o, "settings": {**self._kit, **o.get("settings", {})}},
                )
                for n, o in specs.items()
            ]
        )
        kept = set(reuse)
        self._reused.update({worker.name: worker for worker in workers if worker.name in kept})
        self._owned.extend(worker for worker in workers if worker.name not in kept)
        return {worker.name: worker for worker in workers}

    def _start_workers(self, names: Sequence[str], options: dict[str, Any]) -> list[Worker]:
        return list(self.start_fleet({n: options for n in names}, reuse=names).values())

    def _launch(self, workers: list[Worker]) -> list[Worker]:
        """Spawn every worker first, then wait for each: n start-ups cost about one."""
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
                    f"A worker could not start on {self.source.removeprefix('the ')}.",
                    observed=str(exc),
                    hint="read the log above; the line that raised is near its end.",
                )
            ) from None
        finally:
            self.worker_start_seconds += time.monotonic() - begun
        return workers

    def start_beat(self, settings: dict[str, Any] | None = None, ready_timeout: float | None = None) -> Beat:
        """A started ``celery beat``; ``ready_timeout`` bounds its start (say, by a test's deadline)."""
        self.require_import()
        beat = Beat(
            self.ns,
            self.folder,
            {**self._kit, **(settings or {})},
            self.app_module,
            log_path=self._log_path("beat"),
        )
        self._started.append(beat)
        try:
            beat.start() if ready_timeout is None else beat.start(max(1.0, ready_timeout))
        except WorkerError as exc:
            raise LabFailure(
                verdict("celery beat could not start on your tasks.py.", observed=str(exc))
            ) from None
        self.recorder.note(SCHEDULE, what="beat-up")  # its intervals count as the scenario's waiting
        return beat

    def _log_path(self, name: str) -> Path:
        """A fresh log per process: ``w1.log``, then ``w1-2.log`` for its replacement, and so on. The folder
        is made again if it went: another grade of the same lab in the same home empties the lab's logs as
        it begins, and a worker of this one must still start."""
        self.logdir.mkdir(parents=True, exist_ok=True)
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

    def leftovers(self) -> list[str]:
        """What the tests so far left that a later test could see, in words; ``[]`` when, once its
        workers are retired (:meth:`retire_workers`), the session is as a fresh one would be: every task
        seen has ended, no message waits on the broker or sits unacknowledged, the reused workers
        (:meth:`worker`) answer and hold no task, and no test or fixture started workers, a beat or a proxy
        of its own (a module fixture may hold them). A shard keeps a clean session for its next group of
        tests and closes a dirty one (celerylab.grading.shards); a serial grade does the same."""
        left = []
        timeline = self.recorder.timeline(since_now=False)
        unfinished = [u for u in timeline.task_ids() if timeline.state(u) not in FINAL]
        if unfinished:
            left.append(f"{len(unfinished)} task(s) not finished")
        if self.proxies:
            left.append("workers behind a proxy")
        if self._owned:
            left.append("workers a test or fixture started: " + ", ".join(w.name for w in self._owned))
        for proc in self._started:
            if not proc.alive:
                continue
            if not isinstance(proc, Worker):
                left.append(f"a live {proc.kind}")
            elif not _answers(proc) or proc.busy():
                left.append(f"worker {proc.name} busy or not answering")
        try:
            waiting = self.ns.waiting()
        except Exception as exc:  # a broker that cannot say: assume the worst
            waiting = {f"(could not tell: {exc!r})": 1}
        if waiting:
            left.append("messages on the broker: " + ", ".join(f"{q}: {n}" for q, n in waiting.items()))
        return left

    def retire_workers(self) -> None:
        """Stop the reused workers: the next group of tests starts its own, so no pool process's history
        (tasks run, a rate limit's tokens, memory) depends on which tests ran before."""
        for worker in self._reused.values():
            worker.stop()
        self._started = [proc for proc in self._started if proc not in self._reused.values()]
        self._reused.clear()

    def close(self) -> None:
        for proc in self._started:
            proc.stop()
        self._started.clear()
        self._reused.clear()
        self._owned.clear()
        for proxy in self.proxies.values():
            proxy.close()
        self.proxies.clear()
        self.recorder.stop(wait=0)  # nothing listens after this
        processes.sweep_strays()  # daemons and new-session children the learner's code started
        self.ns.cleanup()
        if self.database is not None:  # after the workers: nothing holds it any more
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()  # the grader's own (SQLite: the file is removed next)
            self.database.drop()
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class LabRun:
    """One test's view: its own timeline and deadline over the shared :class:`LabSession`."""

    def __init__(self, session: LabSession, deadline_seconds: float) -> None:
        self.session = session
        self.timeline: Timeline = session.recorder.timeline()
        self.deadline = time.monotonic() + deadline_seconds
        self.deadline_seconds = deadline_seconds
        self.backoff_wait = 0.0
        self._evidence: Timeline | None = None

    @property
    def evidence(self) -> Timeline:
        """The timeline the verdict is taken from: this test's, unless it judged a run made elsewhere
        (a fixture's scenario) and said so with ``lab.judge_from(timeline)``; ``-v`` shows this one."""
        return self._evidence or self.timeline

    def judge_from(self, timeline: Timeline) -> None:
        self._evidence = timeline

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
            raise LabFailure(self._gave_up(results, exc)) from None
        self.backoff_wait += max((sum(self.timeline.gaps(r.id)) for r in results), default=0.0)

    def _gave_up(self, results: list[AsyncResult], exc: DeadlineExceeded) -> str:
        """Why the tasks did not finish, from what the workers reported: parked on a far eta, still
        running, or never picked up at all."""
        parked, running, unseen = [], [], []
        now = time.time()
        for r in results:
            if self.timeline.state(r.id) in FINAL:
                continue
            tries = self.timeline.attempts(r.id)
            eta = self.timeline.pending_eta(r.id)
            if eta is not None and eta > now:
                parked.append(f"{self.timeline.describe(r.id)}; next attempt due in {eta - now:.0f} s")
            elif tries and tries[-1].outcome == "running":
                running.append(f"{self.timeline.describe(r.id)}, running for {now - tries[-1].start:.0f} s")
            elif not [
                e for e in self.timeline.events(uuid=r.id) if e.type != "task-sent"
            ]:  # only the sender's
                unseen.append(f"{r.id[:8]}: no worker ever received it")
            else:
                running.append(self.timeline.describe(r.id))
        what = f"Gave up waiting ({self.deadline_seconds:.0f} s deadline for this test)."
        if parked:
            return verdict(
                what,
                observed="; ".join(parked),
                hint="a retry or countdown is scheduled far later than this lab's contract allows "
                "(a default_retry_delay, countdown or eta too large, or a naive local datetime read as UTC).",
            )
        if running:
            return verdict(
                what,
                observed="; ".join(running),
                hint="the task itself does not return: it blocks without a timeout or loops.",
            )
        if unseen:
            return verdict(
                what,
                observed="; ".join(unseen),
                hint="the message never reached a worker: is it routed to another queue, or does it expire?",
            )
        return verdict(what, observed=str(exc))

    def result(self, result: AsyncResult, timeout: float | None = None) -> Any:
        """A finished task's return value, bounded by the deadline. A task that stores no result
        (``ignore_result=True``) or whose result never arrives gets a verdict, not a traceback."""
        limit = min(timeout if timeout is not None else self.remaining(), self.remaining())
        self.wait(result, limit)
        try:
            return result.get(timeout=max(0.5, min(limit, self.remaining(), 5.0)), propagate=False)
        except Exception as exc:  # TimeoutError from the backend, or a result that cannot be decoded
            name = self.timeline.names().get(result.id, "the task").rsplit(".", 1)[-1]
            ignored = self.probe.get("tasks", {}).get(self.task_name(name), {}).get("ignore_result")
            raise LabFailure(
                verdict(
                    f"{name} finished ({self.timeline.state(result.id)}) but its return value never reached "
                    "the result backend.",
                    observed=f"{type(exc).__name__} reading the result"
                    + ("; the task has ignore_result=True" if ignored else ""),
                    hint="the contract needs the return value: drop ignore_result=True "
                    "(and task_ignore_result in the app's config).",
                )
            ) from None

    # -- broker faults (see the module's docstring) ------------------------------------------------
    @contextlib.contextmanager
    def broker_down(self, *, keep_data: bool = False) -> Iterator[None]:
        """The broker is down inside the block and up again (same port) on exit: marks ``broker-down``
        and ``broker-up``. The embedded Valkey really stops; elsewhere the proxied workers lose it."""
        server = self.session.broker.server
        proxies = list(self.session.proxies.values())
        if server is None and not proxies:
            raise RuntimeError(
                f"the kit may not restart the {self.session.broker.kind} broker, and no worker goes through "
                "a proxy: start the workers to fault with lab.start_worker(name, through_proxy=True)"
            )
        recorder = self.session.recorder
        how = "restart" if server is not None else "proxy"
        recorder.note(BROKER, what="broker-down", how=how, keep_data=keep_data)
        if server is not None:
            server.down(keep_data=keep_data)
        try:
            with contextlib.ExitStack() as links:
                for proxy in proxies:
                    links.enter_context(proxy.down())
                yield
        finally:
            if server is not None:
                server.up()
                self._drop_stale_connections()
                recorder.stop()  # its connection died with the server: listen again
                recorder.start(timeout=max(10.0, min(30.0, self.remaining())))
            recorder.note(BROKER, what="broker-up", how=how)

    def _drop_stale_connections(self) -> None:
        """After a real restart the grader's pooled broker connections are dead sockets, and a remote-control
        call on one fails instead of reconnecting. The pools are shared by every app on the same URL (kombu
        keys them by connection parameters), so emptying the grader app's empties the workers' control
        apps' too; the next use connects afresh."""
        app = self.session.app
        for pool in (app.amqp.producer_pool, app.pool):
            pool.force_close_all(close_pool=False)
            pool.setup()  # refilled with connections made on first use

    def restart_broker(self, *, keep_data: bool = False) -> None:
        """:meth:`broker_down` and straight back up."""
        with self.broker_down(keep_data=keep_data):
            pass

    def cut_connection(self, worker: Worker) -> int:
        """Drop every connection ``worker`` (started ``through_proxy=True``) has to the broker now; it
        reconnects at once if it may (``broker_connection_retry``). Returns how many were dropped."""
        cut = self.session.proxy_of(worker).cut()
        self.session.recorder.note(BROKER, what="connection-cut", worker=worker.hostname, connections=cut)
        return cut

    @contextlib.contextmanager
    def connection_down(self, worker: Worker) -> Iterator[Proxy]:
        """Inside the block ``worker``'s connections are cut and new ones refused: to it, the broker is
        down; everyone else still reaches it."""
        proxy = self.session.proxy_of(worker)
        self.session.recorder.note(BROKER, what="connection-down", worker=worker.hostname)
        try:
            with proxy.down():
                yield proxy
        finally:
            self.session.recorder.note(BROKER, what="connection-up", worker=worker.hostname)

    @contextlib.contextmanager
    def stall_connection(self, worker: Worker) -> Iterator[Proxy]:
        """Inside the block not a byte moves between ``worker`` and the broker, yet nothing is closed: a
        hung link, which only a heartbeat or a timeout can notice. Everything held flows on exit."""
        proxy = self.session.proxy_of(worker)
        self.session.recorder.note(BROKER, what="connection-stalled", worker=worker.hostname)
        proxy.stall()
        try:
            yield proxy
        finally:
            proxy.resume()
            self.session.recorder.note(BROKER, what="connection-resumed", worker=worker.hostname)

    def wait_reconnected(self, worker: Worker, timeout: float | None = None) -> float:
        """Until ``worker`` answers a ping again (it reconnected after a fault); returns the seconds taken.
        Bounded by the test's deadline."""
        limit = min(timeout if timeout is not None else self.remaining(), self.remaining())
        begun = time.monotonic()
        while not _answers(worker):
            if not worker.alive:
                raise LabFailure(
                    verdict(
                        f"The worker {worker.name} exited instead of reconnecting to the broker.",
                        observed=worker.log_tail(8),
                        hint="broker_connection_retry must stay on (the default) for a worker to survive "
                        "a lost connection.",
                    )
                )
            if time.monotonic() - begun > limit:
                raise LabFailure(
                    verdict(
                        f"The worker {worker.name} did not reconnect within {limit:.0f} s.",
                        observed=worker.log_tail(8),
                    )
                )
        return time.monotonic() - begun

    def wait_until(self, predicate: Any, what: str, timeout: float | None = None) -> Any:
        limit = min(timeout if timeout is not None else self.remaining(), self.remaining())
        try:
            return self.timeline.wait_for(predicate, limit, what)
        except DeadlineExceeded as exc:
            raise LabFailure(verdict(f"Gave up waiting for {what}.", observed=str(exc))) from None


def probe_lab(name: str, folder: Path) -> dict[str, Any]:
    """Import the lab's tasks.py (lab.toml ``app``) in a throwaway process, with the lab's environment."""
    return start_probe(name, folder)()


def start_probe(name: str, folder: Path) -> Callable[[], dict[str, Any]]:
    """Start :func:`probe_lab`'s process now; the function returned waits for its verdict, so the caller
    can do other work meanwhile. The verdict is taken the moment the probe prints it; then the probe's whole
    group goes (a child the import started must not hold the grade up), and a process that ends without one
    crashed, while one that never prints hangs."""
    lab = _catalogued(name)
    app_module = lab.app if lab else "tasks"
    source = "tasks.py" if app_module == "tasks" else f"the project ({lab.app_file})"
    env = {**os.environ, **(dict(lab.env) if lab else {})}
    if not folder.is_dir():
        return lambda: {"ok": False, "kind": "missing", "message": f"{folder} does not exist."}
    scratch = Path(tempfile.mkdtemp(prefix="celerylab-probe-"))  # not the log folder: a grade of the
    log = scratch / "probe.log"  # same lab starting meanwhile empties that one
    cmd = [sys.executable, "-m", "celerylab.engine.runtime", "probe", str(folder), app_module]
    proc = processes.spawn(cmd, log_path=log, cwd=folder, env=env)
    deadline = time.monotonic() + PROBE_TIMEOUT
    return lambda: _probe_verdict(proc, log, scratch, source, deadline)


def _probe_verdict(proc: Any, log: Path, scratch: Path, source: str, deadline: float) -> dict[str, Any]:
    try:
        while True:
            exited = proc.poll() is not None
            for line in reversed(log.read_text(errors="replace").splitlines()):
                if line.startswith(runtime.PROBE_MARK):
                    return json.loads(line[len(runtime.PROBE_MARK) :])
            if exited:
                out = log.read_text(errors="replace")
                return {
                    "ok": False,
                    "kind": "crash",
                    "message": f"importing {source} ended Python (exit code {proc.returncode}) "
                    f"before it finished:\n{out[-1500:]}".rstrip(),
                }
            if time.monotonic() > deadline:
                return {
                    "ok": False,
                    "kind": "timeout",
                    "message": (
                        f"importing {source} did not finish within {PROBE_TIMEOUT:.0f} s. Is there "
                        "an infinite loop or a blocking call (a network request, input(), a result's "
                        ".get()) at module level?"
                    ),
                }
            time.sleep(0.01)  # polling the probe's own output, bounded by the deadline above
    finally:
        processes.kill_group(proc)
        shutil.rmtree(scratch, ignore_errors=True)


def _answers(worker: Worker) -> bool:
    """A ping that may meet a broker still coming back: an error counts as no answer."""
    try:
        return worker.ping(0.5)
    except Exception:  # kombu/redis/amqp connection errors of many kinds
        return False


def _catalogued(lab: str) -> labs.Lab | None:
    """The lab's catalogue entry; None for a module outside the catalogue (the kit's own tests)."""
    try:
        return labs.find(lab)
    except labs.CatalogueError:
        return None


def _worker_command(lab: str) -> str | None:
    """lab.toml's ``command``; None for a module outside the catalogue (the kit's own tests)."""
    try:
        return labs.find(lab).command
    except labs.CatalogueError:
        return None
