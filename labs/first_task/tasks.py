"""Lab 0: a first task. Read README.md in this folder first.

This is the cheat sheet's minimal example, with the client side a web app would have around it: the
functions at the bottom send tasks and read their results. Run a worker by hand in this folder with
`celery -A tasks worker -l info` (a Redis on localhost), or let `celerylab grade first_task` start it.
"""

from typing import Any

from celery import Celery
from celery.result import AsyncResult  # noqa: F401

# The kit's grader replaces both URLs with its own broker and backend; keep this line as it is.
app = Celery("tasks", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")
reports = Celery("reports")  # TODO: a second app? (see unique_tags)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task  # TODO: register it as billing.multiply
def multiply(x: int, y: int) -> int:
    return x * y


@reports.task  # TODO: why does start_tags's message never reach the worker?
def unique_tags(words: list[str]) -> list[str]:
    return set(words)  # TODO: the result cannot be stored


@app.task  # TODO: nobody ever reads this task's result: don't store it
def record_visit(page: str) -> str:
    return f"visited {page}"


def start_add(x: int, y: int) -> AsyncResult:
    return add(x, y)  # TODO: this runs add here, in the caller: send it to a worker


def start_add_in(x: int, y: int, seconds: float) -> AsyncResult:
    raise NotImplementedError  # TODO: add, starting `seconds` from now


def start_multiply(x: int, y: int) -> AsyncResult:
    raise NotImplementedError  # TODO: send it by name, billing.multiply, as another service would


def start_tags(words: list[str]) -> AsyncResult:
    return unique_tags.delay(words)


def wait_for(result: AsyncResult, timeout: float) -> Any:
    return result.get()  # TODO: and if the task never finishes?


def status(task_id: str) -> dict[str, Any]:
    raise NotImplementedError  # TODO: {"state": ..., "ready": ...} from the id alone
