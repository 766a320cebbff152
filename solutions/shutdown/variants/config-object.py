"""Variant: the worker settings in a config class loaded with app.config_from_object, the delivery
guarantee on a Task subclass (base=), the checkpoint merged into the request's own kwargs, and the probe
as a raw broadcast of the ping command with a reply limit of one.
"""

import os
import time

import httpx
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded


class Config:
    worker_soft_shutdown_timeout = 2
    worker_max_tasks_per_child = 3
    worker_max_memory_per_child = 100 * 1000  # KiB


app = Celery("shutdown")  # the kit supplies broker and backend; keep this line as it is
app.config_from_object(Config)


class Requeued(Task):
    """Idempotent work: ack after it ran, so a cancelled run comes back."""

    acks_late = True


class Checkpointed(Task):
    soft_time_limit = 1
    max_retries = 20


@app.task(base=Requeued)
def transcode(video_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"video {video_id}"


@app.task
def send_receipt(order_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"receipt {order_id}"


@app.task(bind=True, base=Checkpointed)
def import_rows(self, batch_id: str, rows: int, report_url: str, start: int = 0) -> int:
    imported = start
    client = httpx.Client(timeout=2.0)
    try:
        for row in range(start, rows):
            time.sleep(0.1)
            client.post(report_url, json={"batch": batch_id, "row": row})
            imported = row + 1
    except SoftTimeLimitExceeded:
        kwargs = {**(self.request.kwargs or {}), "start": imported}
        raise self.retry(kwargs=kwargs, countdown=0) from None
    finally:
        client.close()
    return rows


_cache: list[bytes] = []


@app.task
def render_thumbnail(image_id: str, kilobytes: int) -> int:
    _cache.append(b"x" * (kilobytes * 1024))
    return os.getpid()


def is_alive(hostname: str, timeout: float = 1.0) -> bool:
    replies = app.control.broadcast("ping", destination=[hostname], reply=True, timeout=timeout, limit=1)
    return any(reply.get(hostname) == {"ok": "pong"} for reply in replies or [])
