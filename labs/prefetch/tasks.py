"""Lab: prefetch, acks and rate limits. Read README.md in this folder first.

A video service: long `transcode` jobs and quick `thumbnail` jobs share one queue, and `notify_partner`
calls a partner API that allows 2 calls a second in all. Everything runs with Celery's defaults, so a busy
worker hoards messages it cannot start while another worker idles. Fix the settings;
`celerylab grade prefetch` runs real workers and watches who fetched and started what, and when.
"""

import time

from celery import Celery

app = Celery("prefetch")  # the kit supplies broker and backend; keep this line as it is
# TODO: worker settings. How many messages may a worker reserve per process (Celery's default: 4)?
# TODO: how many pool processes does a worker run (the default is this machine's CPU count)? It must be 3.


@app.task  # TODO: long: acknowledge it after it ran, so that while it runs it keeps its prefetch slot
def transcode(clip_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"{clip_id}.mp4"


@app.task
def thumbnail(clip_id: str) -> str:
    time.sleep(0.05)
    return f"{clip_id}.jpg"


@app.task  # TODO: the partner allows 2 calls a second in all, and two workers run this task
def notify_partner(clip_id: str) -> str:
    return f"notified {clip_id}"
