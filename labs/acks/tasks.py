"""Lab: acks and time limits. Read README.md in this folder first.

Four tasks with Celery's defaults: every message is acked as soon as a worker takes it, and nothing has a
time limit. Give each task the delivery guarantee and the limits the README asks for;
`celerylab grade acks` kills real workers to check them.
"""

import time

import httpx  # noqa: F401  (for the cleanup call)
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded  # noqa: F401

app = Celery("acks")  # the kit supplies broker and backend; keep this line as it is


@app.task  # TODO: must never be lost: not when the worker dies, not when its pool process dies
def render_report(report_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"report {report_id}"


@app.task  # TODO: at most once: never run again after a crash
def send_sms(number: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"sent to {number}"


@app.task  # TODO: soft limit 1 s, hard limit 2 s
def export_csv(rows: int, cleanup_url: str) -> int:
    written = 0
    for _ in range(rows):
        time.sleep(0.1)
        written += 1
    # TODO: on SoftTimeLimitExceeded, POST {"written": written} to cleanup_url (timeout 1 s), then re-raise
    return written


@app.task  # TODO: hard limit 1 s (no soft limit: native code would never see it)
def crunch(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
