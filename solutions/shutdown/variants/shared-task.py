"""Variant: `@shared_task` with options as decorator keywords, settings assigned one by one with a
float timeout, the checkpoint re-sent as a retry with `kwargs` built from named arguments, rows counted
in the loop, and a probe that treats a broker error as "not alive" instead of raising.
"""

import os
import time

import httpx
from celery import Celery, shared_task
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("shutdown")  # the kit supplies broker and backend; keep this line as it is
app.conf.worker_soft_shutdown_timeout = 2.0
app.conf.worker_max_tasks_per_child = 3
app.conf.worker_max_memory_per_child = 100_000


@shared_task(acks_late=True)
def transcode(video_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"video {video_id}"


@shared_task(acks_late=False)
def send_receipt(order_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"receipt {order_id}"


@shared_task(bind=True, soft_time_limit=1, default_retry_delay=0, max_retries=10)
def import_rows(self, batch_id: str, rows: int, report_url: str, start: int = 0) -> int:
    next_row = start
    with httpx.Client(timeout=2.0) as client:
        try:
            for row in range(start, rows):
                time.sleep(0.1)
                client.post(report_url, json={"batch": batch_id, "row": row})
                next_row += 1
        except SoftTimeLimitExceeded:
            raise self.retry(kwargs={"start": next_row}) from None
    return rows


_cache: list[bytes] = []


@shared_task
def render_thumbnail(image_id: str, kilobytes: int) -> int:
    _cache.append(b"x" * (kilobytes * 1024))
    return os.getpid()


def is_alive(hostname: str, timeout: float = 1.0) -> bool:
    try:
        replies = app.control.ping([hostname], timeout=timeout)
    except Exception:  # a broker that does not answer is a failed probe, not a crash of the probe
        return False
    return any(hostname in reply for reply in replies)
