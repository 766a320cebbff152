"""Variant: global settings with per-task overrides. At-least-once and a 30 s backstop hard limit are the
app's defaults (task_acks_late, task_reject_on_worker_lost, task_time_limit); send_sms opts out of the late
ack, export_csv and crunch tighten their limits. The cleanup catches `Exception` (which
SoftTimeLimitExceeded is) and tells the two apart with isinstance.
"""

import time

import httpx
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("acks")  # the kit supplies broker and backend; keep this line as it is
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_time_limit=30,
)


@app.task
def render_report(report_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"report {report_id}"


@app.task(acks_late=False)
def send_sms(number: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"sent to {number}"


@app.task(soft_time_limit=1, time_limit=2)
def export_csv(rows: int, cleanup_url: str) -> int:
    written = 0
    try:
        for _ in range(rows):
            time.sleep(0.1)
            written += 1
    except Exception as exc:
        if isinstance(exc, SoftTimeLimitExceeded):
            httpx.post(cleanup_url, json={"written": written}, timeout=1.0)
        raise
    return written


@app.task(time_limit=1)
def crunch(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
