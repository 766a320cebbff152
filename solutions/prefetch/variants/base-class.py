"""Variant: the long job's ack comes from a `base=` Task class, the worker settings from one
app.conf.update(...) call, and the rate limit is written per minute ("60/m" is 1/s)."""

import time

from celery import Celery, Task

app = Celery("prefetch")
app.conf.update(worker_prefetch_multiplier=1, worker_concurrency=3)


class LongJob(Task):
    """Long jobs hold their prefetch slot while they run: ack after the run."""

    acks_late = True


@app.task(base=LongJob)
def transcode(clip_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"{clip_id}.mp4"


@app.task
def thumbnail(clip_id: str) -> str:
    time.sleep(0.05)
    return f"{clip_id}.jpg"


@app.task(rate_limit="60/m")
def notify_partner(clip_id: str) -> str:
    return f"notified {clip_id}"
