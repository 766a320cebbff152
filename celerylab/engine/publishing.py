"""What the grader's own process publishes, and a hold after each message to widen a race on purpose.

Publisher-side code of the learner (a Django service, a canvas builder, imported with ``lab.module()``)
runs in the grader's process, so every task message it sends passes Celery's ``before_task_publish`` and
``after_task_publish`` signals here. :class:`PublishLog` records each one as it happens: the task, its id,
its arguments as the learner passed them (a model instance is still an instance), the time, whether the
broker took it, and whatever ``context()`` says about that moment (say, whether a database transaction was
open). With ``hold``, the publishing thread is held in ``after_task_publish`` until ``hold(publish)``
returns: holding until a worker has *run* the task makes "the worker was faster than the commit" happen on
every run, not by luck, so a task sent before its transaction commits is caught 10 times out of 10.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import signals


@dataclass
class Publish:
    task: str
    id: str
    args: tuple
    kwargs: dict
    at: float  # time.time() when Celery began to publish it
    context: Any = None  # what PublishLog's ``context()`` returned then
    sent: bool = False  # the broker took it (it could be serialized and sent)
    thread: str = field(default_factory=lambda: threading.current_thread().name)


class PublishLog:
    """Records what this process publishes while the ``with`` block runs (see the module's docstring)."""

    def __init__(
        self,
        context: Callable[[], Any] | None = None,
        hold: Callable[[Publish], None] | None = None,
    ) -> None:
        self.context, self.hold = context, hold
        self.published: list[Publish] = []
        self._lock = threading.Lock()

    def __enter__(self) -> PublishLog:
        signals.before_task_publish.connect(self._before, weak=False, dispatch_uid=f"celerylab-b{id(self)}")
        signals.after_task_publish.connect(self._after, weak=False, dispatch_uid=f"celerylab-a{id(self)}")
        return self

    def __exit__(self, *exc: object) -> None:
        signals.before_task_publish.disconnect(dispatch_uid=f"celerylab-b{id(self)}")
        signals.after_task_publish.disconnect(dispatch_uid=f"celerylab-a{id(self)}")

    def of(self, task: str) -> list[Publish]:
        """The publishes of ``task`` (its registered name, or the last part of it)."""
        with self._lock:
            return [p for p in self.published if p.task == task or p.task.rsplit(".", 1)[-1] == task]

    def _before(
        self, sender: str | None = None, body: Any = None, headers: dict | None = None, **_: Any
    ) -> None:
        args, kwargs = (), {}
        if isinstance(body, tuple | list) and len(body) == 3:  # protocol 2: (args, kwargs, embed)
            args, kwargs = tuple(body[0] or ()), dict(body[1] or {})
        context = self.context() if self.context else None
        task_id = (headers or {}).get("id") or ""
        with self._lock:
            self.published.append(Publish(str(sender), task_id, args, kwargs, time.time(), context))

    def _after(self, sender: str | None = None, headers: dict | None = None, **_: Any) -> None:
        task_id = (headers or {}).get("id") or ""
        with self._lock:
            hit = next((p for p in reversed(self.published) if p.id == task_id), None)
            if hit is not None:
                hit.sent = True
        if hit is not None and self.hold is not None:
            self.hold(hit)
