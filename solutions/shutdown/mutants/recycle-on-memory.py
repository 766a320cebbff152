"""Mutant of rule recycle-on-memory: no worker_max_memory_per_child: a process that leaked 80 MB runs
on until its third task.
"""

import os
import time

import httpx
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("shutdown")  # the kit supplies broker and backend; keep this line as it is
# Why: on a cold shutdown (SIGQUIT) give running tasks 2 s to finish before they are cancelled; recycle a
# leaking pool process after 3 tasks, or after the task that took it past ~100 MB (KiB).
app.conf.worker_soft_shutdown_timeout = 2
app.conf.worker_max_tasks_per_child = 3


# Why: a cancelled task whose message was never acked is put back on the queue and runs again elsewhere.
@app.task(acks_late=True)
def transcode(video_id: str, seconds: float) -> str:
    time.sleep(seconds)  # idempotent: transcoding twice gives the same file
    return f"video {video_id}"


@app.task
def send_receipt(order_id: str, seconds: float) -> str:
    time.sleep(seconds)  # emails the customer: at most once
    return f"receipt {order_id}"


# Why: the soft limit interrupts each attempt after 1 s; the checkpoint (the first row not done) travels
# in the retry, sent at once, so the next attempt carries on instead of starting over.
@app.task(bind=True, soft_time_limit=1, max_retries=10)
def import_rows(self, batch_id: str, rows: int, report_url: str, start: int = 0) -> int:
    done = start
    try:
        with httpx.Client(timeout=2.0) as client:
            for row in range(start, rows):
                time.sleep(0.1)  # importing one row
                client.post(report_url, json={"batch": batch_id, "row": row})
                done = row + 1
    except SoftTimeLimitExceeded:
        raise self.retry(kwargs={"start": done}, countdown=0) from None
    return rows


_cache: list[bytes] = []  # the leak: nothing ever empties it


@app.task
def render_thumbnail(image_id: str, kilobytes: int) -> int:
    _cache.append(b"x" * (kilobytes * 1024))  # a thumbnail "cached" for good
    return os.getpid()


def is_alive(hostname: str, timeout: float = 1.0) -> bool:
    """The liveness probe of the worker named ``hostname``: True only if that worker answers."""
    # Why: a ping to this node only; any other worker's pong says nothing about this one.
    replies = app.control.ping(destination=[hostname], timeout=timeout)
    return any(hostname in reply for reply in replies)
