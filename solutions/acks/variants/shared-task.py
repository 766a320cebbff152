"""Variant: `@shared_task` (as a reusable Django app writes them) with the options as decorator keywords,
bound tasks, and the cleanup in a `finally:` guarded by a flag, so it runs only when the loop did not
finish (the SoftTimeLimitExceeded propagates untouched).
"""

import time

import httpx
from celery import Celery, shared_task

app = Celery("acks")  # the kit supplies broker and backend; keep this line as it is


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def render_report(self, report_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"report {report_id}"


@shared_task(bind=True, acks_late=False)
def send_sms(self, number: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"sent to {number}"


@shared_task(bind=True, soft_time_limit=1, time_limit=2)
def export_csv(self, rows: int, cleanup_url: str) -> int:
    written, finished = 0, False
    try:
        for _ in range(rows):
            time.sleep(0.1)
            written += 1
        finished = True
    finally:
        if not finished:
            httpx.post(cleanup_url, json={"written": written}, timeout=1.0)
    return written


@shared_task(bind=True, time_limit=1)
def crunch(self, seconds: float) -> float:
    time.sleep(seconds)
    return seconds
