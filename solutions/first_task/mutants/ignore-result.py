"""Mutant of rule ignore-result: record_visit stores its result like any task."""

from typing import Any

from celery import Celery
from celery.result import AsyncResult

# The cheat sheet's line. The kit's grader replaces both URLs with its own broker and backend; run by hand
# (`celery -A tasks worker -l info` in this folder), the worker uses these.
app = Celery("tasks", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")


@app.task
def add(x: int, y: int) -> int:
    return x + y


# Why: an explicit name is what a sender that does not import this module must use, letter for letter.
@app.task(name="billing.multiply")
def multiply(x: int, y: int) -> int:
    return x * y


# Why: on `app`, the app the worker runs, so `.delay` sends it through app's broker, where the worker listens.
@app.task
def unique_tags(words: list[str]) -> list[str]:
    return sorted(set(words))  # a list: JSON has no sets, the result could not be stored


# Why: nobody reads a visit's return value; storing it would fill the result backend for nothing.
@app.task
def record_visit(page: str) -> str:
    return f"visited {page}"


def start_add(x: int, y: int) -> AsyncResult:
    return add.delay(x, y)  # a message to the broker; add(x, y) would run it here, in this process


def start_add_in(x: int, y: int, seconds: float) -> AsyncResult:
    return add.apply_async((x, y), countdown=seconds)


def start_multiply(x: int, y: int) -> AsyncResult:
    return app.send_task("billing.multiply", args=(x, y))  # by name, as another service would


def start_tags(words: list[str]) -> AsyncResult:
    return unique_tags.delay(words)


def wait_for(result: AsyncResult, timeout: float) -> Any:
    return result.get(timeout=timeout)  # never .get() with no timeout: a lost task would hang the caller


def status(task_id: str) -> dict[str, Any]:
    result = AsyncResult(task_id, app=app)
    return {"state": result.state, "ready": result.ready()}
