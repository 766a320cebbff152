"""Mutant of partner-rate-limit: rate_limit="2/s", the partner's limit, as if a rate limit were global;
each of the two workers runs it at 2/s, 4/s in all."""

import time

from celery import Celery

app = Celery("prefetch")  # the kit supplies broker and backend; keep this line as it is
app.conf.worker_prefetch_multiplier = 1  # one message per process: a busy worker reserves nothing extra
app.conf.worker_concurrency = 3  # three processes, whatever the CPU count of the machine it runs on


@app.task(acks_late=True)  # unacked while it runs, so it fills its process's prefetch slot
def transcode(clip_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"{clip_id}.mp4"


@app.task
def thumbnail(clip_id: str) -> str:
    time.sleep(0.05)
    return f"{clip_id}.jpg"


@app.task(rate_limit="2/s")  # the partner allows 2/s
def notify_partner(clip_id: str) -> str:
    return f"notified {clip_id}"
