"""Load a learner's ``tasks.py`` with the kit's settings laid over its Celery app.

Workers run ``celery -A celerylab.runtime worker``: this module reads ``$CELERYLAB_TASKS`` (JSON: the
folder, the module name, the namespace's settings), imports the learner's module and exposes its app as
``app``. The learner writes plain ``app = Celery("retries")``; broker, backend and isolation come from the
kit. ``python -m celerylab.runtime probe DIR`` imports a module in a throwaway process and reports, as
JSON, either its tasks (with their options) or what went wrong, so a syntax error or an import that hangs
becomes one clear verdict instead of a hung grader.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from celery import Celery, signals

ENV = "CELERYLAB_TASKS"
PROBE_MARK = "celerylab-probe: "
ATTEMPT_START = "celerylab-start"  # sent from the pool process; see celerylab.timeline
ATTEMPT_END = "celerylab-end"
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


def apply_config(app: Celery, config: dict[str, Any]) -> None:
    """Lay the kit's settings over the learner's: transport options merge, the rest replace."""
    app.conf.update(merge_settings({key: app.conf.get(key) for key in MERGED}, config))


def load_tasks(
    folder: Path | str, config: dict[str, Any], module: str = "tasks"
) -> tuple[ModuleType, Celery]:
    """Import ``folder/module.py`` fresh (a previous lab's ``tasks`` is forgotten) and configure its app."""
    folder = str(Path(folder).resolve())
    sys.modules.pop(module, None)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    mod = importlib.import_module(module)
    app = find_app(mod)
    apply_config(app, config)
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


def probe(folder: str, module: str = "tasks") -> dict[str, Any]:
    path = Path(folder) / f"{module}.py"
    if not path.exists():
        return {"ok": False, "kind": "missing", "message": f"{path} does not exist."}
    try:
        _, app = load_tasks(folder, {}, module)
        tasks = {name: describe_options(task) for name, task in user_tasks(app).items()}
    except SyntaxError as exc:
        return {
            "ok": False,
            "kind": "syntax",
            "line": exc.lineno,
            "message": f"{path.name} line {exc.lineno}: {exc.msg}" + _caret(exc),
        }
    except LabAppError as exc:
        return {"ok": False, "kind": "no-app", "message": str(exc)}
    except BaseException as exc:  # the learner's import-time code may raise anything, even SystemExit
        return {"ok": False, "kind": "import", "message": _short_traceback(exc, path)}
    return {"ok": True, "tasks": tasks}


def _caret(exc: SyntaxError) -> str:
    if not exc.text:
        return ""
    return f"\n    {exc.text.rstrip()}\n    {' ' * max(0, (exc.offset or 1) - 1)}^"


def _short_traceback(exc: BaseException, path: Path) -> str:
    """The learner's frames only: the line in their file that raised, and the error."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path.resolve())]
    where = f"{path.name} line {frames[-1].lineno}: {frames[-1].line}\n" if frames else ""
    return f"importing {path.name} raised {type(exc).__name__}: {exc}\n{where}".rstrip()


_errors: dict[str, str] = {}  # task id -> the exception of the attempt running in this pool process


def _attempt_started(task_id: str, task: Any, **_: Any) -> None:
    """From inside the pool process: which process runs this attempt, and was it redelivered."""
    delivery = task.request.delivery_info or {}
    task.send_event(ATTEMPT_START, redelivered=bool(delivery.get("redelivered")))  # the event carries its pid


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


def _worker_app() -> Celery | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    spec = json.loads(spec)
    _, worker_app = load_tasks(spec["folder"], spec["config"], spec.get("module", "tasks"))
    signals.task_prerun.connect(_attempt_started, weak=False)
    signals.task_retry.connect(_attempt_failed, weak=False)
    signals.task_failure.connect(_attempt_failed, weak=False)
    signals.task_postrun.connect(_attempt_ended, weak=False)
    return worker_app


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "probe":
        report = probe(sys.argv[2], *sys.argv[3:4])
        print(PROBE_MARK + json.dumps(report), flush=True)  # the learner's module may print too
        sys.exit(0)
    sys.exit("usage: python -m celerylab.runtime probe FOLDER [MODULE]")

app = _worker_app()
