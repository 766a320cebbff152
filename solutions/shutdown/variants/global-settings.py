"""Variant: every setting in one app.conf.update(...), at-least-once as the app's default
(task_acks_late=True) with send_receipt opting out, the checkpoint passed as positional args, and the
probe through inspect(destination=...).ping(), which answers a dict (or None when nobody replied).
"""

import os
import time

import httpx
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("shutdown")  # the kit supplies broker and backend; keep this line as it is
app.conf.update(
    worker_soft_shutdown_timeout=2.0,
    worker_max_tasks_per_child=3,
    worker_max_memory_per_child=100_000,
    task_acks_late=True,
)


@app.task
def transcode(video_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"video {video_id}"


@app.task(acks_late=False)
def send_receipt(order_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"receipt {order_id}"


@app.task(bind=True, soft_time_limit=1.0, max_retries=None)
def import_rows(self, batch_id: str, rows: int, report_url: str, start: int = 0) -> int:
    row = start
    try:
        with httpx.Client(timeout=2.0) as client:
            while row < rows:
                time.sleep(0.1)
                client.post(report_url, json={"batch": batch_id, "row": row})
                row += 1
    except SoftTimeLimitExceeded as exc:
        raise self.retry(args=(batch_id, rows, report_url, row), kwargs={}, countdown=0, exc=exc) from exc
    return rows


_cache: list[bytes] = []


@app.task
def render_thumbnail(image_id: str, kilobytes: int) -> int:
    _cache.append(b"x" * (kilobytes * 1024))
    return os.getpid()


def is_alive(hostname: str, timeout: float = 1.0) -> bool:
    replies = app.control.inspect(destination=[hostname], timeout=timeout).ping()
    return bool(replies and hostname in replies)
