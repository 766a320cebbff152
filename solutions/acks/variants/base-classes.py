"""Variant: the guarantees live on Task subclasses (`base=`), the way a codebase shares them between many
tasks: an AtLeastOnce and an AtMostOnce class for acks, a Limited class for export_csv's limits, and the
cleanup in `except SoftTimeLimitExceeded as exc: ... raise exc`.
"""

import time

import httpx
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("acks")  # the kit supplies broker and backend; keep this line as it is


class AtLeastOnce(Task):
    """Idempotent work: ack after it ran, requeue if the process running it dies."""

    acks_late = True
    reject_on_worker_lost = True


class AtMostOnce(Task):
    """Side effects that must not repeat: ack on receipt."""

    acks_late = False


class ExportLimits(Task):
    soft_time_limit = 1
    time_limit = 2


class NativeCode(Task):
    time_limit = 1


@app.task(base=AtLeastOnce)
def render_report(report_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"report {report_id}"


@app.task(base=AtMostOnce)
def send_sms(number: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"sent to {number}"


@app.task(base=ExportLimits)
def export_csv(rows: int, cleanup_url: str) -> int:
    written = 0
    try:
        for _ in range(rows):
            time.sleep(0.1)
            written += 1
    except SoftTimeLimitExceeded as exc:
        httpx.post(cleanup_url, json={"written": written}, timeout=1.0)
        raise exc
    return written


@app.task(base=NativeCode)
def crunch(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
