"""The grading farm: a class's grades as Celery tasks, graded by farm workers on any number of machines.

``celerylab batch LAB DIR --farm URL`` sends each submission as one task on the farm queue: its folder
zipped and base64-encoded in the message (at most :data:`MAX_ZIP_BYTES`; no shared filesystem is assumed),
the lab's hidden tests beside it, and the kit's fingerprint. ``celerylab farm worker --broker URL`` is an
ordinary Celery worker (prefork, ``--jobs`` processes) that takes one task per process at a time
(prefetch multiplier 1), grades it exactly as a local batch does (:func:`celerylab.grading.batch.grade_work`:
its own work folder, in its own sandbox, on its own embedded broker) and returns the grade as the task's
JSON result. The batch collects each through the result backend into the same :meth:`Batch.collect`, so
the gradebook and every file are what a local batch writes.

Never lost, never counted twice: ``task_acks_late`` + ``task_reject_on_worker_lost``: a farm worker killed
mid-grade never acked its message, so the broker gives it to another worker (RabbitMQ as soon as the dead
worker's connection closes; Redis after :data:`REDIS_VISIBILITY` seconds). The batch collects one result
per student; a second one (a grade that finished twice) is ignored and said so in a note.

Ordinary Celery, no new machinery: one app, one task, one inspect command (``farm_hello``: which workers are
there, on which kit and sandbox), ``task_track_started`` (the batch hears which worker started a grade),
``revoke`` when the batch stops early. Everything is named after the farm queue (``--farm-queue``, default
``celerylab.farm``): the queue and its exchange, the remote-control and event exchanges, and on Redis a key
prefix, so two farms on one broker never see each other's work.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import platform
import shutil
import socket
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import celery
import kombu
from celery import Celery
from celery.result import AsyncResult, ResultSet
from celery.utils.log import get_task_logger
from celery.worker.control import inspect_command

from celerylab.engine.brokers import is_amqp_url, is_redis_url, redact
from celerylab.grading import labs, sandbox
from celerylab.grading.batch import Batch, BatchError, Graded, Submission, grade_work
from celerylab.paths import kit_root

DEFAULT_QUEUE = "celerylab.farm"
GRADE_TASK = "celerylab.farm.grade"
MAX_ZIP_BYTES = 8 * 1024**2  # one submission, zipped: a tasks.py is kilobytes; this leaves room for a project
MAX_UNPACKED_BYTES = 64 * 1024**2  # what a farm worker unpacks at most (a zip bomb stops here)
DEFAULT_WAIT = 60.0  # seconds the batch waits for a farm worker to answer, at the start or when all go quiet
PING_EVERY = 10.0  # while grades run, how often the batch checks that some farm worker still answers
TIME_LIMIT_MARGIN = 120.0  # a task's hard time limit beyond the grade's own wall-clock timeout
# Redis gives a dead worker's unacked message back after this long: it must outlast the longest grade, or a
# slow grade would be handed to a second worker while the first still runs.
REDIS_VISIBILITY = 900.0
FARM_SETTING = "celerylab_farm"  # the farm worker's own settings, in its app's conf
PROTOCOL = 1  # the message's shape; part of the fingerprint
log = get_task_logger(__name__)  # the farm worker's log: which student each grade was for


class FarmError(BatchError):
    """The farm cannot grade this batch (broker unreachable, no worker, another kit); says what to do."""


class PackError(ValueError):
    """A submission that cannot travel (too big, unsafe names); the message is its verdict."""


# -- a submission in a message ---------------------------------------------------------------------------
def pack(folder: Path, limit: int = MAX_ZIP_BYTES) -> str:
    """``folder``'s regular files as a base64 zip. Symbolic links are left out: on another machine they
    would point at that machine's files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not path.is_file() or "__pycache__" in path.parts:
                continue
            archive.write(path, path.relative_to(folder).as_posix())
            if buffer.tell() > limit:
                break
    size = buffer.tell()
    if size > limit:
        raise PackError(
            f"the folder is over {limit / 1024**2:g} MB zipped, the farm's limit for one submission "
            f"({folder}); leave data files out, or grade it with a local batch"
        )
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def unpack(data: str, dest: Path, limit: int = MAX_UNPACKED_BYTES) -> None:
    """The inverse of :func:`pack`, refusing what a hostile or damaged message could hold."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(data, validate=True)))
    except (binascii.Error, zipfile.BadZipFile, ValueError) as exc:
        raise PackError(f"the submission in the message is not a base64 zip ({exc})") from None
    with archive:
        members = archive.infolist()
        if sum(m.file_size for m in members) > limit:
            raise PackError(f"the submission unpacks to over {limit / 1024**2:g} MB, the farm's limit")
        for member in members:
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                raise PackError(f"the submission holds an unsafe file name: {member.filename!r}")
        dest.mkdir(parents=True, exist_ok=True)
        archive.extractall(dest)


# -- which kit ------------------------------------------------------------------------------------------
def identity(lab: str | None = None) -> dict[str, Any]:
    """What must match between a batch and a farm worker for a grade to mean the same: the grading code
    (engine, grading, CLI), Celery's and kombu's versions, and each lab's lab.toml and autograder."""
    root = kit_root()
    code = [*(root / "celerylab" / "engine").rglob("*.py"), *(root / "celerylab" / "grading").rglob("*.py")]
    code += [root / "celerylab" / "cli.py", root / "celerylab" / "paths.py"]
    wanted = [lab] if lab else sorted(p.parent.name for p in (root / "labs").glob("*/lab.toml"))
    return {
        "protocol": PROTOCOL,
        "kit": _digest(root, code),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "python": ".".join(platform.python_version_tuple()[:2]),
        "labs": {name: _lab_digest(root, name) for name in wanted},
    }


def _lab_digest(root: Path, name: str) -> str | None:
    """The files that say how a lab is graded (read as files: a lab.toml being edited elsewhere in the
    checkout cannot stop the farm)."""
    toml = root / "labs" / name / "lab.toml"
    return _digest(root, [toml, root / "tests" / "labs" / f"test_{name}.py"]) if toml.is_file() else None


def _digest(root: Path, paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"(missing)")
        h.update(b"\0")
    return h.hexdigest()[:12]


def mismatch(theirs: dict[str, Any], ours: dict[str, Any], lab: str) -> str:
    """Why a worker with identity ``theirs`` must not grade ``lab`` for a batch with ``ours`` ('' if fine)."""
    if theirs.get("protocol") != ours.get("protocol"):
        return f"speaks farm protocol {theirs.get('protocol')}, this batch {ours.get('protocol')}"
    problems = [
        f"{key} {theirs.get(key)} (this batch: {ours.get(key)})"
        for key in ("kit", "celery", "kombu", "python")
        if theirs.get(key) != ours.get(key)
    ]
    their_lab = (theirs.get("labs") or {}).get(lab)
    if their_lab is None:
        problems.append(f"no lab {lab}")
    elif their_lab != ours["labs"].get(lab):
        problems.append(f"lab {lab} {their_lab} (this batch: {ours['labs'].get(lab)})")
    return "; ".join(problems)


# -- the app --------------------------------------------------------------------------------------------
def settings(url: str, queue: str = DEFAULT_QUEUE) -> dict[str, Any]:
    """The farm's Celery settings, the same on both sides. Results: the Redis server itself, or on
    RabbitMQ ``rpc://`` (replies straight to the batch that asked)."""
    if not is_redis_url(url) and not is_amqp_url(url):
        raise FarmError(f"a farm runs on Redis/Valkey or RabbitMQ (redis:// or amqp://), not {redact(url)}")
    conf: dict[str, Any] = {
        "broker_url": url,
        "result_backend": url if is_redis_url(url) else "rpc://",
        "task_default_queue": queue,
        "task_default_exchange": queue,
        "task_default_routing_key": queue,
        "control_exchange": queue,
        "event_exchange": f"{queue}.ev",
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        # a worker that loses the broker stops its grades: the broker hands the messages to another one
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "result_expires": 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
    }
    if is_redis_url(url):
        prefix = {"global_keyprefix": f"{queue}:"}
        conf["broker_transport_options"] = {**prefix, "visibility_timeout": REDIS_VISIBILITY}
        conf["result_backend_transport_options"] = dict(prefix)
    return conf


def make_app(url: str, queue: str = DEFAULT_QUEUE) -> Celery:
    app = Celery("celerylab.farm", set_as_current=False)
    app.conf.update(settings(url, queue))
    return app


def check_reachable(app: Celery) -> None:
    """Fail fast, in words, when the farm's broker does not answer."""
    url = app.conf.broker_url
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:  # kombu raises many kinds; any of them means "not reachable"
        raise FarmError(
            f"the farm broker at {redact(url)} cannot be reached ({type(exc).__name__}: {exc}); check the "
            "URL and that the broker runs and listens on an address this machine can reach"
        ) from None


@inspect_command(args=[("lab", str)], signature="[lab]")
def farm_hello(state, lab: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """A farm worker's answer to the batch: its queue, kit identity, sandbox and job slots."""
    farm = state.app.conf.get(FARM_SETTING)
    if not farm:
        return {"farm": None}
    return {
        "farm": farm["queue"],
        "identity": identity(lab),
        "sandbox": farm["statement"],
        "jobs": farm["jobs"],
    }


@dataclass(frozen=True)
class Hello:
    hostname: str
    identity: dict[str, Any]
    sandbox: str
    jobs: int


def hello(app: Celery, lab: str | None = None, timeout: float = 2.0) -> list[Hello]:
    """The farm workers on this farm's queue that answer within ``timeout``."""
    queue = app.conf.task_default_queue
    found = []
    replies = app.control.broadcast("farm_hello", arguments={"lab": lab}, reply=True, timeout=timeout) or []
    for reply in replies:
        for hostname, answer in reply.items():
            if isinstance(answer, dict) and answer.get("farm") == queue:
                found.append(Hello(hostname, answer["identity"], answer["sandbox"], int(answer["jobs"])))
    return sorted(found, key=lambda h: h.hostname)


def wait_for_workers(app: Celery, lab: str | None, wait: float, count: int = 1) -> list[Hello]:
    """At least ``count`` farm workers, asked again until ``wait`` seconds have passed; then a clear error."""
    deadline = time.monotonic() + wait
    while True:
        found = hello(app, lab, timeout=min(2.0, max(0.5, deadline - time.monotonic())))
        if len(found) >= count or time.monotonic() >= deadline:
            break
    if len(found) < count:
        url, queue = redact(app.conf.broker_url), app.conf.task_default_queue
        start = f"celerylab farm worker --broker {url}" + (
            f" --farm-queue {queue}" if queue != DEFAULT_QUEUE else ""
        )
        raise FarmError(
            f"{'no farm worker' if not found else f'only {len(found)} farm worker(s)'} answered on queue "
            f"{queue} at {url} within {wait:g} s: start one (or more) with `{start}`, or wait longer "
            "(--farm-wait)"
        )
    return found


# -- the farm worker ------------------------------------------------------------------------------------
def register(app: Celery) -> None:
    """The grade task, on the farm worker's app."""

    @app.task(name=GRADE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, resultrepr_maxsize=200)
    def grade(
        self, lab: str, student: str, files: str, hidden: dict[str, str], timeout: float, kit: dict[str, Any]
    ) -> dict:
        where = self.request.hostname or socket.gethostname()
        again = bool((self.request.delivery_info or {}).get("redelivered"))
        problem = mismatch(identity(lab), kit, lab)
        if problem:
            return {"refused": f"farm worker {where} runs another kit: {problem}", "where": where}
        farm = self.app.conf[FARM_SETTING]
        level, reason = farm["support"] or (None, "")
        support = sandbox.Support(level, reason) if level else None
        work = Path(farm["scratch"]) / f"{os.getpid()}-{self.request.id}"
        sources = work.parent / f"{work.name}.hidden"
        _sweep_stale_scratch(work.parent.parent)  # a farm worker killed on this machine left its folders
        try:
            sources.mkdir(parents=True, exist_ok=True)
            for name, text in hidden.items():
                (sources / PurePosixPath(name).name).write_text(text)
            try:
                unpack(files, work / "submission")
            except PackError as exc:
                graded = Graded(None, f"not graded: {exc}", "", 0.0)
            else:
                graded = grade_work(
                    labs.find(lab),
                    work,
                    uid=sandbox.UID_BASE + (os.getpid() % 20000) * 64,
                    support=support,
                    hidden=sorted(sources.iterdir()),
                    timeout=timeout,
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(sources, ignore_errors=True)
        log.info("graded %s%s: %s", student, " (redelivered)" if again else "", graded.verdict)
        return {**graded.to_dict(), "where": where, "redelivered": again}


SCRATCH_PREFIX = "celerylab-farm-"


def run_worker(
    url: str,
    queue: str = DEFAULT_QUEUE,
    jobs: int = 1,
    sandbox_mode: str = "auto",
    name: str | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """``celerylab farm worker``: a Celery worker on the farm queue until stopped (Ctrl-C: warm shutdown,
    the grades running finish; twice: cold, they go back to the queue)."""
    support = None if sandbox_mode == "off" else sandbox.detect()
    if sandbox_mode == "on" and support is not None and not support.full:
        raise FarmError(f"{support.statement}; --sandbox on refuses that")
    app = make_app(url, queue)
    register(app)
    check_reachable(app)
    parent = Path(sandbox.scratch_parent())
    _sweep_stale_scratch(parent)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent))
    os.chmod(scratch, 0o755)  # the sandboxed uids must reach their folders
    statement = support.statement if support else "sandbox: off (--sandbox off)"
    app.conf[FARM_SETTING] = {
        "queue": queue,
        "jobs": jobs,
        "support": [support.level, support.reason] if support else None,
        "scratch": str(scratch),
        "statement": statement,
    }
    say(statement)
    say(f"farm worker on queue {queue} at {redact(url)}, {jobs} grade(s) at a time; Ctrl-C to stop")
    argv = ["worker", "-P", "prefork", "-c", str(jobs), "-Q", queue, "-l", "info"]
    argv += ["-n", name or f"farm{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    try:
        app.worker_main(argv)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def remove(url: str, queue: str = DEFAULT_QUEUE) -> None:
    """Delete what a farm leaves on its broker once no worker or batch uses it (the tests' farms): on Redis
    every key under its prefix, on RabbitMQ its queue and exchanges. Never raises."""
    if is_redis_url(url):
        import redis

        with (
            contextlib.suppress(Exception),
            contextlib.closing(redis.Redis.from_url(url, socket_timeout=5)) as r,
        ):
            keys = list(r.scan_iter(match=f"{queue}:*", count=1000))
            for start in range(0, len(keys), 500):
                r.delete(*keys[start : start + 500])
        return
    exchanges = [queue, f"{queue}.pidbox", f"reply.{queue}.pidbox", f"{queue}.ev"]
    with contextlib.suppress(Exception), kombu.Connection(url, connect_timeout=5) as conn:
        for kind, name in [("queue", queue), *(("exchange", name) for name in exchanges)]:
            with contextlib.suppress(Exception):
                channel = conn.channel()  # a failed delete closes its channel
                (channel.queue_delete if kind == "queue" else channel.exchange_delete)(name)


def _sweep_stale_scratch(parent: Path) -> None:
    """Work folders of farm workers that were killed (their pid is gone): swept when a farm worker starts
    and before each grade, as nothing else would remove them."""
    for folder in parent.glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


# -- the batch's side -----------------------------------------------------------------------------------
class _FarmQuiet(Exception):
    """No farm worker answered for the batch's whole wait while grades were outstanding."""


@dataclass
class FarmBatch(Batch):
    """A batch whose grades run on a farm (see the module's docstring); collecting is the local batch's."""

    farm: str = ""
    queue: str = DEFAULT_QUEUE
    wait: float = DEFAULT_WAIT
    workers: list[Hello] = field(default_factory=list, init=False)
    _checked: float = field(default=float("-inf"), init=False, repr=False)  # when they last answered

    def __post_init__(self) -> None:
        settings(self.farm, self.queue)  # the URL's scheme
        if is_redis_url(self.farm) and self.timeout + TIME_LIMIT_MARGIN >= REDIS_VISIBILITY:
            raise FarmError(
                f"on a Redis farm a grade's --timeout must stay under "
                f"{REDIS_VISIBILITY - TIME_LIMIT_MARGIN:g} s (Redis hands an unacked grade to another worker "
                "after its visibility timeout); use a RabbitMQ farm for longer grades"
            )

    def connect(self) -> Celery:
        """The farm's app, once its broker and at least one farm worker on this kit have answered."""
        app = make_app(self.farm, self.queue)
        if time.monotonic() - self._checked < PING_EVERY:  # asked a moment ago (the CLI's fail-fast check)
            return app
        try:
            check_reachable(app)
            self.workers = wait_for_workers(app, self.lab.name, self.wait)
            ours = identity(self.lab.name)
            wrong = [
                f"{w.hostname}: {why}"
                for w in self.workers
                if (why := mismatch(w.identity, ours, self.lab.name))
            ]
            if wrong:
                raise FarmError(
                    "refusing to grade on a farm whose workers run another kit (update their checkout to "
                    "this one and restart them): " + " | ".join(wrong)
                )
        except BaseException:
            app.close()
            raise
        self._checked = time.monotonic()
        return app

    def grade_all(
        self,
        submissions: list[Submission],
        started: Callable[[str], None],
        finished: Callable[[Submission, Graded], None],
    ) -> None:
        app = self.connect()
        hidden = {path.name: path.read_text() for path in self.hidden}
        kit = identity(self.lab.name)
        pending: dict[str, tuple[Submission, AsyncResult]] = {}
        try:
            for sub in submissions:
                try:
                    files = pack(sub.folder)
                except PackError as exc:
                    finished(sub, Graded(None, f"not sent to the farm: {exc}", "", 0.0))
                    continue
                result = app.send_task(
                    GRADE_TASK,
                    kwargs={
                        "lab": self.lab.name,
                        "student": sub.student,
                        "files": files,
                        "hidden": hidden,
                        "timeout": self.timeout,
                        "kit": kit,
                    },
                    task_id=f"{self.queue}.{uuid.uuid4().hex}",
                    queue=self.queue,
                    time_limit=self.timeout + TIME_LIMIT_MARGIN,
                )
                pending[result.id] = (sub, result)
            self._collect(app, pending, started, finished)
        finally:
            left = [task_id for task_id, (sub, _) in pending.items() if not self.collected(sub.student)]
            with contextlib.suppress(Exception):
                if left:  # an interrupted batch: queued grades are dropped, running ones stopped
                    app.control.revoke(left, terminate=True, signal="SIGKILL")
            if is_redis_url(self.farm):  # the results are in: their keys go (rpc:// replies leave nothing)
                with contextlib.suppress(Exception):
                    for task_id in set(pending) - set(left):
                        app.backend.forget(task_id)
            app.close()

    def _collect(
        self,
        app: Celery,
        pending: dict[str, tuple[Submission, AsyncResult]],
        started: Callable[[str], None],
        finished: Callable[[Submission, Graded], None],
    ) -> None:
        if not pending:
            return
        where: dict[str, str] = {}
        heard = [time.monotonic(), time.monotonic()]  # last answer from a farm worker, last ping

        def on_message(meta: dict[str, Any]) -> None:
            task_id, status = meta.get("task_id"), meta.get("status")
            if task_id not in pending:
                return
            sub = pending[task_id][0]
            if status == "STARTED":
                host = (meta.get("result") or {}).get("hostname", "a farm worker")
                if task_id in where:
                    self.say(
                        f"{sub.student}: graded again on {host} (its farm worker {where[task_id]} was lost)"
                    )
                else:
                    started(sub.student)
                    self.say(f"{sub.student}: grading on {host}")
                where[task_id] = host
                heard[0] = time.monotonic()
            elif status == "SUCCESS" and self.collected(sub.student):  # a second result (rpc:// shows it)
                finished(sub, self._graded(meta))

        def on_interval() -> None:
            now = time.monotonic()
            if now - heard[1] < PING_EVERY:
                return
            heard[1] = now
            if hello(app, self.lab.name):
                heard[0] = now
            elif now - heard[0] > self.wait:
                raise _FarmQuiet

        results = ResultSet([result for _, result in pending.values()], app=app)
        try:
            for task_id, meta in results.iter_native(on_message=on_message, on_interval=on_interval):
                sub = pending[task_id][0]
                finished(sub, self._graded(meta))
        except _FarmQuiet:
            verdict = (
                f"no grade: no farm worker answered for {self.wait:g} s while this grade waited; start farm "
                "workers and run the batch again"
            )
            for sub, _ in pending.values():
                if not self.collected(sub.student):
                    finished(sub, Graded(None, verdict, "", 0.0))

    @staticmethod
    def _graded(meta: dict[str, Any]) -> Graded:
        """A task's final state as a grade: its result, or why there is none."""
        status, result = meta.get("status"), meta.get("result")
        if status == "SUCCESS" and isinstance(result, dict) and "refused" in result:
            return Graded(None, f"not graded: {result['refused']}", "", 0.0, result.get("where", ""))
        if status == "SUCCESS" and isinstance(result, dict):
            try:
                graded = Graded.from_dict(result, result.get("where", ""))
            except (KeyError, TypeError, ValueError) as exc:
                return Graded(None, f"no grade: the farm's result could not be read ({exc})", "", 0.0)
            if result.get("redelivered"):
                graded.where += " (redelivered)"
            return graded
        if status == "REVOKED":
            return Graded(None, "no grade: the grade was revoked on the farm", "", 0.0)
        detail = (
            result.get("exc_type", "") + ": " + str(result.get("exc_message", ""))
            if isinstance(result, dict)
            else ""
        )
        trace = (meta.get("traceback") or "").strip().splitlines()
        return Graded(
            None,
            f"no grade: the farm worker's task failed ({detail.strip(': ') or status})",
            "\n".join(trace[-20:]),
            0.0,
        )
