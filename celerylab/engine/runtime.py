"""Load a learner's ``tasks.py`` with the kit's settings laid over its Celery app.

Workers run ``celery -A celerylab.engine.runtime worker``: this module reads ``$CELERYLAB_TASKS`` (JSON: the
folder, the module name, the namespace's settings), imports the learner's module and exposes its app as
``app``. The learner writes plain ``app = Celery("retries")``; broker, backend and isolation come from the
kit. ``python -m celerylab.engine.runtime probe DIR`` imports a module in a throwaway process and reports, as
JSON, either its tasks (with their options) or what went wrong, so a syntax error or an import that hangs
becomes one clear verdict instead of a hung grader.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from celery import Celery, signals
from celery.loaders.app import AppLoader

from celerylab.engine import namespaces, processes

ENV = "CELERYLAB_TASKS"
HOSTNAME_ENV = "CELERYLAB_HOSTNAME"  # the worker's node name, for its pool processes' life-cycle events
PROBE_MARK = "celerylab-probe: "
ATTEMPT_START = "celerylab-start"  # sent from the pool process; see celerylab.engine.timeline
ATTEMPT_END = "celerylab-end"
PROCESS_UP = "celerylab-process-up"  # sent by each new pool process; see celerylab.engine.timeline
ONLINE = "celerylab-online"  # sent by the worker's main process once it is ready
LEARNER_LOADER = (
    "celerylab.engine.runtime:LearnerLoader"  # $CELERY_LOADER of a worker on the learner's command
)
OWN_SETTINGS = "celerylab_own_settings"  # a setting: kit settings left to the learner's app (lab.toml)
MERGED = ("broker_transport_options", "result_backend_transport_options")
TASK_OPTIONS = (
    "autoretry_for",
    "dont_autoretry_for",
    "max_retries",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "default_retry_delay",
    "acks_late",
    "reject_on_worker_lost",
    "time_limit",
    "soft_time_limit",
    "rate_limit",
    "ignore_result",
    "queue",
    "typing",
)


class LabAppError(Exception):
    """The learner's module has no usable Celery app."""


def find_app(module: ModuleType) -> Celery:
    app = getattr(module, "app", None)
    if isinstance(app, Celery):
        return app
    apps = [v for v in vars(module).values() if isinstance(v, Celery)]
    if len(apps) == 1:
        return apps[0]
    raise LabAppError(
        f"{Path(module.__file__ or '?').name} defines no Celery app named `app`. "
        'Keep the line `app = Celery("...")` from the skeleton.'
    )


def merge_settings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: transport options merge key by key (a prefix survives), the rest replace."""
    merged = {**base, **extra}
    for key in MERGED:
        if key in base and key in extra:
            merged[key] = {**(base[key] or {}), **(extra[key] or {})}
    return merged


def apply_config(app: Celery, config: dict[str, Any], on_queue: Callable[[str], None] | None = None) -> None:
    """Lay the kit's settings over the learner's: transport options merge, the rest replace. Under a
    namespace, the queue names the learner's code uses are renamed into it (see
    celerylab.engine.namespaces.NamespacedQueues); ``on_queue`` hears each broker queue name the app
    learns."""
    own_default = app.conf.task_default_queue  # the learner's, before the kit's replaces it
    keep = set(config.get(OWN_SETTINGS) or ())  # what the lab judges stays the learner's
    config = {key: value for key, value in config.items() if key not in keep}
    app.conf.update(merge_settings({key: app.conf.get(key) for key in MERGED}, config))
    if config.get(namespaces.NAMESPACE):
        namespaces.rename_queues(app, config[namespaces.NAMESPACE], own_default, on_queue)


def load_tasks(
    folder: Path | str,
    config: dict[str, Any],
    module: str = "tasks",
    on_queue: Callable[[str], None] | None = None,
) -> tuple[ModuleType, Celery]:
    """Import ``folder/module.py`` fresh (a previous lab's ``tasks`` is forgotten) and configure its app."""
    folder = str(Path(folder).resolve())
    sys.modules.pop(module, None)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    mod = importlib.import_module(module)
    app = find_app(mod)
    apply_config(app, config, on_queue)
    return mod, app


def user_tasks(app: Celery) -> dict[str, Any]:
    app.loader.import_default_modules()
    return {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}


def describe_options(task: Any) -> dict[str, Any]:
    """A task's retry/ack/limit options as JSON-able values (exception classes by qualified name)."""
    out: dict[str, Any] = {}
    for name in TASK_OPTIONS:
        value = getattr(task, name, None)
        if isinstance(value, tuple | list):
            value = [f"{v.__module__}.{v.__qualname__}" if isinstance(v, type) else repr(v) for v in value]
        elif not isinstance(value, str | int | float | bool | type(None)):
            value = repr(value)
        out[name] = value
    return out


def module_path(folder: Path | str, module: str) -> Path:
    """Where ``module`` lives in ``folder``: ``tasks.py``, or a package's ``proj/__init__.py``."""
    base = Path(folder) / module.replace(".", "/")
    plain = base.with_name(base.name + ".py")
    return plain if plain.exists() or not (base / "__init__.py").exists() else base / "__init__.py"


def probe(folder: str, module: str = "tasks") -> dict[str, Any]:
    path = module_path(folder, module)
    if not path.exists():
        return {"ok": False, "kind": "missing", "message": f"{path} does not exist."}
    try:
        _, app = load_tasks(folder, {}, module)
        tasks = {name: describe_options(task) for name, task in user_tasks(app).items()}
    except SyntaxError as exc:
        where = _shown(Path(exc.filename), folder) if exc.filename else path.name  # a project: which file
        return {
            "ok": False,
            "kind": "syntax",
            "line": exc.lineno,
            "message": f"{where} line {exc.lineno}: {exc.msg}" + _caret(exc),
        }
    except LabAppError as exc:
        return {"ok": False, "kind": "no-app", "message": str(exc)}
    except BaseException as exc:  # the learner's import-time code may raise anything, even SystemExit
        return {"ok": False, "kind": "import", "message": _short_traceback(exc, path)}
    return {"ok": True, "tasks": tasks}


def _shown(file: Path, folder: Path | str) -> str:
    """A learner's file as they know it: relative to the lab folder (``orders/tasks.py``)."""
    try:
        return str(file.resolve().relative_to(Path(folder).resolve()))
    except ValueError:
        return file.name


def _caret(exc: SyntaxError) -> str:
    if not exc.text:
        return ""
    return f"\n    {exc.text.rstrip()}\n    {' ' * max(0, (exc.offset or 1) - 1)}^"


def _short_traceback(exc: BaseException, path: Path) -> str:
    """The learner's frames only: the line in their file that raised, and the error. For a project (the
    app is a package's ``__init__.py``) any file in the lab folder is theirs."""
    project = path.name == "__init__.py"
    root = path.resolve().parent.parent if project else path.resolve().parent
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if (f.filename.startswith(f"{root}/") if project else f.filename == str(path.resolve()))
    ]
    last = frames[-1] if frames else None
    where = f"{_shown(Path(last.filename), root)} line {last.lineno}: {last.line}\n" if last else ""
    shown = path.parent.name if project else path.name  # a project: its package (`proj`)
    return f"importing {shown} raised {type(exc).__name__}: {exc}\n{where}".rstrip()


_errors: dict[str, str] = {}  # task id -> the exception of the attempt running in this pool process


def _attempt_started(task_id: str, task: Any, **_: Any) -> None:
    """From inside the pool process: which process runs this attempt, and was it redelivered."""
    delivery = task.request.delivery_info or {}
    task.send_event(  # the event carries its pid; routing_key: the queue it came from (direct routing)
        ATTEMPT_START,
        redelivered=bool(delivery.get("redelivered")),
        routing_key=delivery.get("routing_key"),
        exchange=delivery.get("exchange"),
    )


def _attempt_failed(
    sender: Any = None,
    request: Any = None,
    reason: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    if exception is not None:
        # Celery hands the signal a picklable stand-in (httpx.HTTPStatusError becomes its base HTTPError);
        # the handler runs inside Celery's except block, where the original is still at hand.
        error = sys.exc_info()[1] or exception
    else:
        error = getattr(reason, "exc", None) or reason
    task_id = task_id or getattr(request, "id", None)
    if task_id and error is not None:
        _errors[task_id] = f"{type(error).__name__}({str(error)[:200]!r})"


def _attempt_ended(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    task.send_event(ATTEMPT_END, state=state, exception=_errors.pop(task_id, None))


def _announcer(worker_app: Celery, kind: str) -> Any:
    """A signal handler that sends a life-cycle event ``kind``. ``worker_process_init``: each pool process,
    at boot or when it replaces one that exited (max tasks or memory per child, a time limit, a kill), says
    so, as the pool itself reports nothing. ``worker_ready``: the main process is up (Celery's own
    worker-online comes from the heartbeat, which the kit turns off)."""

    def announce(**_: Any) -> None:
        hostname = os.environ.get(HOSTNAME_ENV)
        if not hostname:
            return
        try:
            with worker_app.events.default_dispatcher(hostname=hostname) as dispatcher:
                dispatcher.send(kind)  # the event carries the sending process's pid
        except Exception:  # a life-cycle marker must never stop a worker from starting or ending
            pass

    return announce


RANDOM = "celerylab_random"  # a worker setting: "max" pins the random module's draws to their top


def _pin_random_to_max() -> None:
    """Every draw of the ``random`` module at the top of its range, in this worker only: a test about a
    bound (the backoff cap) then sees the longest wait a solution can produce, every run, instead of a
    random one that passes a wrong cap by luck. Done before the learner's module imports ``random``."""
    import random

    random.random = lambda: 1.0 - 2**-53
    random.randrange = lambda start, stop=None, step=1: start - 1 if stop is None else stop - 1
    random.randint = lambda a, b: b
    random.uniform = lambda a, b: max(a, b)
    random.choice = lambda seq: seq[-1]


POOL_MAINTENANCE = "celerylab_pool_maintenance"  # a worker setting: seconds between pool upkeeps


def _maintain_pool_every(seconds: float) -> None:
    """Run the prefork pool's upkeep (``maintain_pool``: replace processes that exited) every ``seconds``
    instead of every 5 s. Celery 5.7 notices a process that exited after ``worker_max_tasks_per_child``
    at once only for the pool's first processes; for their replacements it waits for this timer (seen:
    the second recycle of a one-process pool took 5.0 s, the first 0.3 s). Only how soon a replacement
    starts changes, not when or why a process exits, so a grade about recycling takes seconds."""
    from celery.concurrency import asynpool

    asynpool.AsynPool.timers = property(lambda pool: {pool.maintain_pool: seconds})


def _worker_spec() -> dict[str, Any] | None:
    spec = os.environ.get(ENV)
    return json.loads(spec) if spec else None


def _worker_app() -> Celery | None:
    """The app of ``celery -A celerylab.engine.runtime worker``: the learner's, with the kit's settings."""
    spec = _worker_spec()
    if not spec or spec.get("command"):  # the learner's own command line: LearnerLoader does this
        return None
    if spec["config"].get(RANDOM) == "max":
        _pin_random_to_max()
    if spec["config"].get(POOL_MAINTENANCE):
        _maintain_pool_every(float(spec["config"][POOL_MAINTENANCE]))
    _, worker_app = load_tasks(spec["folder"], spec["config"], spec.get("module", "tasks"))
    _instrument(worker_app)
    return worker_app


class LearnerLoader(AppLoader):
    """The loader of a worker started with the learner's own command line (lab.toml's ``command``, say
    ``celery -A tasks worker -l info``): the kit names it in ``$CELERY_LOADER``, which Celery reads
    for every app it creates. When the worker initialises, before it connects to anything, this lays
    the kit's settings over the learner's app and wires the attempt events, as ``celery -A
    celerylab.engine.runtime`` does for the other labs. The learner's module is loaded by Celery itself."""

    def on_worker_init(self) -> None:
        super().on_worker_init()
        spec = _worker_spec()
        if spec and spec.get("command"):
            apply_config(self.app, spec["config"])
            _instrument(self.app)


def _instrument(worker_app: Celery) -> None:
    """Connect the attempt and life-cycle events (inherited by the pool processes it forks)."""
    signals.task_prerun.connect(_attempt_started, weak=False)
    signals.task_retry.connect(_attempt_failed, weak=False)
    signals.task_failure.connect(_attempt_failed, weak=False)
    signals.task_postrun.connect(_attempt_ended, weak=False)
    signals.worker_process_init.connect(_announcer(worker_app, PROCESS_UP), weak=False)
    signals.worker_ready.connect(_announcer(worker_app, ONLINE), weak=False)
    _register_settings_command()


SETTINGS_COMMAND = "celerylab_settings"  # remote control: the worker's effective settings, by Celery name


def _register_settings_command() -> None:
    """``inspect._request("celerylab_settings", names=[...])``: each setting as the worker's app really
    has it, read through Celery's own lookup (old setting names, a ``namespace``, the Django TIME_ZONE
    fallback), which the ``conf`` command's raw dump does not apply (its keys follow the config's style)."""
    from celery.worker.control import inspect_command

    @inspect_command(name=SETTINGS_COMMAND, args=[("names", list)], signature="<names>")
    def celerylab_settings(state: Any, names: list[str] | None = None, **_: Any) -> dict[str, Any]:
        conf = state.consumer.app.conf
        out = {}
        for name in names or ():
            try:
                value = getattr(conf, name)
            except (AttributeError, KeyError):
                value = None
            out[name] = list(value) if isinstance(value, tuple | set | frozenset) else value
        return json.loads(json.dumps(out, default=repr))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "probe":
        report = probe(sys.argv[2], *sys.argv[3:4])
        print(PROBE_MARK + json.dumps(report), flush=True)  # the learner's module may print too
        sys.exit(0)
    sys.exit("usage: python -m celerylab.engine.runtime probe FOLDER [MODULE]")

if _worker_spec() is not None and (_name := processes.process_name(sys.argv)):
    processes.set_name(_name)  # a worker's or beat's processes, as forked ones are named (orphan checks)
app = _worker_app()
