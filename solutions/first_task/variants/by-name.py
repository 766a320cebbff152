"""Variant: a client that never imports the task functions' objects: everything is sent by name with
app.send_task and read back through app.AsyncResult, options passed as keywords (args=[...], countdown=).
"""

from typing import Any

from celery import Celery

app = Celery("tasks", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")


@app.task
def add(x, y):
    return x + y


@app.task(name="billing.multiply")
def multiply(x, y):
    return x * y


@app.task
def unique_tags(words):
    return list(sorted({*words}))


@app.task(ignore_result=True)
def record_visit(page):
    return "visited " + page


def start_add(x, y):
    return app.send_task("tasks.add", args=[x, y])


def start_add_in(x, y, seconds):
    return app.send_task("tasks.add", args=[x, y], countdown=seconds)


def start_multiply(x, y):
    return app.send_task("billing.multiply", (x, y))


def start_tags(words):
    return app.send_task("tasks.unique_tags", args=[words])


def wait_for(result, timeout) -> Any:
    return app.AsyncResult(result.id).get(timeout=timeout)


def status(task_id):
    result = app.AsyncResult(task_id)
    return dict(state=result.state, ready=result.ready())
