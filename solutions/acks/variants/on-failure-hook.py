"""Variant: the cleanup lives in the task class's `on_failure` hook (which runs in the same pool process,
before the soft limit's exception is reported), fed by the progress the task body records; the options
come through `app.task(**OPTIONS)` dictionaries, and render_report uses retry_on_worker_lost with no delay
instead of reject_on_worker_lost.
"""

import time

import httpx
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("acks")  # the kit supplies broker and backend; keep this line as it is

AT_LEAST_ONCE = {"acks_late": True, "retry_on_worker_lost": True, "default_retry_delay": 0}
AT_MOST_ONCE = {"acks_late": False}
_progress: dict[str, int] = {}  # task id -> rows written so far, in this pool process


class CleansUpExport(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        written = _progress.pop(task_id, 0)
        if isinstance(exc, SoftTimeLimitExceeded):
            url = kwargs.get("cleanup_url") or args[1]
            httpx.post(url, json={"written": written}, timeout=1.0)

    def on_success(self, retval, task_id, args, kwargs):
        _progress.pop(task_id, None)


@app.task(**AT_LEAST_ONCE)
def render_report(report_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"report {report_id}"


@app.task(**AT_MOST_ONCE)
def send_sms(number: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"sent to {number}"


@app.task(bind=True, base=CleansUpExport, soft_time_limit=1, time_limit=2)
def export_csv(self, rows: int, cleanup_url: str) -> int:
    _progress[self.request.id] = 0
    for _ in range(rows):
        time.sleep(0.1)
        _progress[self.request.id] += 1
    return _progress[self.request.id]


@app.task(time_limit=1)
def crunch(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
