"""Mutant of rule crunch-hard-limit: crunch has a 1 s soft limit instead of a hard one:
SoftTimeLimitExceeded, the process is not replaced (native code would never see it).
"""

import time

import httpx
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("acks")  # the kit supplies broker and backend; keep this line as it is


# Why: idempotent and must never be lost, so ack only after it ran (a dead worker's message comes back)
# and requeue it when its pool process dies (without reject_on_worker_lost Celery acks it and FAILS it).
@app.task(acks_late=True, reject_on_worker_lost=True)
def render_report(report_id: str, seconds: float) -> str:
    time.sleep(seconds)  # the slow, idempotent work: rendering twice gives the same report
    return f"report {report_id}"


# Why: not idempotent (a customer must never get two texts), so ack on receipt: at most once.
@app.task(acks_late=False)
def send_sms(number: str, seconds: float) -> str:
    time.sleep(seconds)  # talking to the SMS gateway
    return f"sent to {number}"


# Why: the soft limit raises SoftTimeLimitExceeded inside the task so it can clean up; the hard limit is the
# backstop that kills the process if the cleanup itself hangs.
@app.task(soft_time_limit=1, time_limit=2)
def export_csv(rows: int, cleanup_url: str) -> int:
    written = 0
    try:
        for _ in range(rows):
            time.sleep(0.1)  # write one row to the partial file
            written += 1
    except SoftTimeLimitExceeded:
        httpx.post(cleanup_url, json={"written": written}, timeout=1.0)  # delete the partial file
        raise  # and still fail: the export did not happen
    return written


# Why: native code never sees a soft limit, so only a hard limit stops it (the pool kills the process).
@app.task(soft_time_limit=1)
def crunch(seconds: float) -> float:
    time.sleep(seconds)  # stands for a C extension that ignores signals
    return seconds
