"""Variant: every setting in a config object (app.config_from_object): late acks for every task
(task_acks_late), and the rate limit as a task annotation instead of a decorator option."""

import time

from celery import Celery


class Config:
    worker_prefetch_multiplier = 1
    worker_concurrency = 3
    task_acks_late = True  # thumbnails acked late too: harmless, they are quick and idempotent
    task_annotations = {"tasks.notify_partner": {"rate_limit": "1/s"}}


app = Celery("prefetch")
app.config_from_object(Config)


@app.task
def transcode(clip_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"{clip_id}.mp4"


@app.task
def thumbnail(clip_id: str) -> str:
    time.sleep(0.05)
    return f"{clip_id}.jpg"


@app.task
def notify_partner(clip_id: str) -> str:
    return f"notified {clip_id}"
