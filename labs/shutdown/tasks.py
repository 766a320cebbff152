"""Lab: graceful shutdown and the worker's life cycle. Read README.md in this folder first.

Everything here runs with Celery's defaults: a cold shutdown cancels every running task at once, a
cancelled task is gone, a long import starts over from row 0, and a leaking pool process grows until the
OOM killer takes it. Add the worker settings, task options and the liveness check the README asks for;
`celerylab grade shutdown` sends real workers SIGTERM and SIGQUIT to check them.
"""

import os
import time

import httpx
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded  # noqa: F401

app = Celery("shutdown")  # the kit supplies broker and backend; keep this line as it is
# TODO: worker settings in app.conf: a 2 s soft shutdown, a new pool process every 3 tasks or past ~100 MB


@app.task  # TODO: a cold shutdown cancels it mid-run; it must come back and run again
def transcode(video_id: str, seconds: float) -> str:
    time.sleep(seconds)  # idempotent: transcoding twice gives the same file
    return f"video {video_id}"


@app.task
def send_receipt(order_id: str, seconds: float) -> str:
    time.sleep(seconds)  # emails the customer: at most once
    return f"receipt {order_id}"


@app.task  # TODO: soft limit 1 s; on SoftTimeLimitExceeded, retry at once from the first row not done
def import_rows(batch_id: str, rows: int, report_url: str, start: int = 0) -> int:
    with httpx.Client(timeout=2.0) as client:
        for row in range(start, rows):
            time.sleep(0.1)  # importing one row
            client.post(report_url, json={"batch": batch_id, "row": row})
    return rows


_cache: list[bytes] = []  # the leak: nothing ever empties it


@app.task
def render_thumbnail(image_id: str, kilobytes: int) -> int:
    _cache.append(b"x" * (kilobytes * 1024))  # a thumbnail "cached" for good
    return os.getpid()


def is_alive(hostname: str, timeout: float = 1.0) -> bool:
    """The liveness probe of the worker named ``hostname``: True only if that worker answers."""
    raise NotImplementedError  # TODO: ping this node only (app.control.ping), within `timeout` seconds
