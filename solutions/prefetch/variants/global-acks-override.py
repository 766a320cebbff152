"""Variant: acks_late for everything through the global task_acks_late, with the quick thumbnail
switched back to an early ack per task, and a bound method for transcode (bind=True)."""

import time

from celery import Celery

app = Celery("prefetch")
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=3,
)


@app.task(bind=True)
def transcode(self, clip_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"{clip_id}.mp4"


@app.task(acks_late=False)
def thumbnail(clip_id: str) -> str:
    time.sleep(0.05)
    return f"{clip_id}.jpg"


@app.task(rate_limit="1/s")
def notify_partner(clip_id: str) -> str:
    return f"notified {clip_id}"
