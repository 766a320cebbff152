"""Mutant of prefetch-one: worker_disable_prefetch = True instead of the multiplier. Celery 5.7 applies
it on Redis only (ignored on RabbitMQ); the prefetch count stays 4 per process."""

import time

from celery import Celery

app = Celery("prefetch")  # the kit supplies broker and backend; keep this line as it is
app.conf.worker_disable_prefetch = True  # fetch only when a process is free (Redis only)
app.conf.worker_concurrency = 3  # three processes, whatever the CPU count of the machine it runs on


@app.task(acks_late=True)  # unacked while it runs, so it fills its process's prefetch slot
def transcode(clip_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"{clip_id}.mp4"


@app.task
def thumbnail(clip_id: str) -> str:
    time.sleep(0.05)
    return f"{clip_id}.jpg"


@app.task(rate_limit="1/s")  # per worker, not global: two workers x 1/s = the partner's 2/s
def notify_partner(clip_id: str) -> str:
    return f"notified {clip_id}"
