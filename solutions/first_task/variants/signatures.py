"""Variant: signatures instead of .delay (add.s(...).delay(), add.signature(..., countdown=)), an eta
computed in UTC instead of a countdown, result.wait instead of result.get, and ignore_result set by a
task annotation in the app's config instead of the decorator.
"""

from datetime import UTC, datetime, timedelta

from celery import Celery
from celery.result import AsyncResult

app = Celery("tasks", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")
app.conf.task_annotations = {"tasks.record_visit": {"ignore_result": True}}


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="billing.multiply")
def multiply(x: int, y: int) -> int:
    return x * y


@app.task
def unique_tags(words: list[str]) -> list[str]:
    seen: list[str] = []
    for word in sorted(words):
        if word not in seen:
            seen.append(word)
    return seen


@app.task
def record_visit(page: str) -> str:
    return f"visited {page}"


def start_add(x: int, y: int) -> AsyncResult:
    return add.s(x, y).delay()


def start_add_in(x: int, y: int, seconds: float) -> AsyncResult:
    when = datetime.now(UTC) + timedelta(seconds=seconds)
    return add.signature((x, y), eta=when).apply_async()


def start_multiply(x: int, y: int) -> AsyncResult:
    return app.signature("billing.multiply", args=(x, y)).apply_async()


def start_tags(words: list[str]) -> AsyncResult:
    return unique_tags.apply_async(args=(words,))


def wait_for(result: AsyncResult, timeout: float):
    return result.wait(timeout=timeout, interval=0.1)


def status(task_id: str) -> dict:
    result = AsyncResult(task_id, app=app)
    state = result.state
    return {"state": state, "ready": state in ("SUCCESS", "FAILURE", "REVOKED")}
