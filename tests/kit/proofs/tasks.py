"""The code of the bank's "predict what happens" questions, as printed in them (they call this `tasks.py`).

tests/kit/test_quiz_proofs.py runs it on real prefork workers; broker, backend and queue names come from
the kit's namespace (celerylab.engine.runtime lays them over this app), so nothing here names a server.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import httpx
import requests
from celery import Celery, current_task

app = Celery("tasks")
app.conf.task_routes = {"images.*": {"queue": "images"}}


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def sub(x, y):
    return x - y


@app.task
def total(numbers):
    return sum(numbers)


@app.task
def fail():
    raise ValueError("boom")


@app.task
def nap(seconds, label):
    time.sleep(seconds)
    return label


@app.task
def describe(value):
    return {1: type(value).__name__}


@app.task(ignore_result=True)
def send_email(to):
    return f"sent to {to}"


@app.task
def resize(path):
    return current_task.request.delivery_info["routing_key"]


# retries-003: the cheat sheet's §5 task (with @app.task instead of @shared_task)
@app.task(autoretry_for=(requests.RequestException,), retry_backoff=True, retry_kwargs={"max_retries": 5})
def fetch_url(url):
    return requests.get(url, timeout=5).text


@app.task(bind=True, max_retries=2, default_retry_delay=0)
def flaky(self):
    try:
        raise ValueError("still down")
    except ValueError as exc:
        raise self.retry(exc=exc)  # noqa: B904 - the idiom the question shows


# retries-011: the cheat sheet's §15 task, verbatim
@app.task(
    bind=True,
    autoretry_for=(TimeoutError, ConnectionError),
    retry_backoff=2,
    retry_jitter=True,
    max_retries=6,
)
def call_api(self, url):
    resp = httpx.get(url, timeout=5)
    resp.raise_for_status()
    return resp.json()


@app.task(bind=True, max_retries=1, default_retry_delay=0)
def charge(self, amount):
    key = str(uuid.uuid4())  # the "idempotency key"
    if self.request.retries == 0:  # charged, but the reply timed out
        raise self.retry(exc=TimeoutError(f"charged {amount} with key {key}; reply lost"))
    return f"charged {amount} with key {key}"


@app.task  # default: acknowledged just before it runs
def early_ack(n):
    time.sleep(30)


@app.task(acks_late=True)  # acknowledged after it finishes
def late_ack(n):
    time.sleep(30)


@app.task(soft_time_limit=1, time_limit=10)
def slow():
    try:
        time.sleep(3)
    except TimeoutError:
        return "caught TimeoutError"
    return "finished"


@app.task(time_limit=1)
def stuck():
    try:
        time.sleep(5)
    except Exception:
        return "recovered"


@app.task(soft_time_limit=1)
def report():
    status = "complete"
    try:
        time.sleep(3)  # the slow part
    except Exception as exc:  # "never let the report crash"
        status = f"partial ({type(exc).__name__})"
    return status


# pitfalls-012: a call with no timeout (requests has no default) on a worker with two pool processes
@app.task
def fetch_report(url):
    return requests.get(url).status_code


@app.task
def quick(n):
    return n


# pitfalls-013: a large argument, parked in a queue no worker consumes
@app.task
def digest(blob):
    return hashlib.sha256(blob.encode()).hexdigest()
