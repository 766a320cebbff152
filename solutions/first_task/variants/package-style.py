"""Variant: a class-based client around the app (as a web app's service layer would hold one), task
options through a base class, and the app named after the project with explicit task names throughout.
"""

from typing import Any

from celery import Celery, Task
from celery.exceptions import TimeoutError as ResultTimeout
from celery.result import AsyncResult

app = Celery("tasks", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")


class FireAndForget(Task):
    ignore_result = True


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="billing.multiply")
def multiply(x, y):
    return x * y


@app.task(name="tasks.unique_tags")
def unique_tags(words):
    return sorted(frozenset(words))


@app.task(base=FireAndForget, name="tasks.record_visit")
def record_visit(page):
    return f"visited {page}"


class Client:
    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def send(self, name: str, *args: Any, **options: Any) -> AsyncResult:
        return self.celery.send_task(name, args=args, **options)

    def get(self, result: AsyncResult, timeout: float) -> Any:
        try:
            return result.get(timeout=timeout)
        except ResultTimeout:
            raise  # the caller decides what a lost task means


client = Client(app)


def start_add(x, y):
    return add.delay(x, y)


def start_add_in(x, y, seconds):
    return client.send("tasks.add", x, y, countdown=seconds)


def start_multiply(x, y):
    return client.send("billing.multiply", x, y)


def start_tags(words):
    return unique_tags.delay(words)


def wait_for(result, timeout):
    return client.get(result, timeout)


def status(task_id):
    result = AsyncResult(task_id, app=app)
    return {"state": result.status, "ready": result.ready()}
