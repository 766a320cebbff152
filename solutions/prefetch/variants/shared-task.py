"""Variant: tasks written with @shared_task (as in a Django project's tasks module), the worker settings
as app.conf attributes with the concurrency given as a string (as an environment variable would)."""

import time

from celery import Celery, shared_task

app = Celery("prefetch")
app.conf.worker_concurrency = "3"
app.conf.worker_prefetch_multiplier = 1


@shared_task(acks_late=True)
def transcode(clip_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"{clip_id}.mp4"


@shared_task
def thumbnail(clip_id: str) -> str:
    time.sleep(0.05)
    return f"{clip_id}.jpg"


@shared_task(rate_limit="1/s")
def notify_partner(clip_id: str) -> str:
    return f"notified {clip_id}"
