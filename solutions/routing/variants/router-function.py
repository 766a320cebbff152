"""Variant: a router function instead of a dict (prefix match on the task name), queues declared as
a dict of options, the decorator's `queue=` on the image tasks as well, mail and the default queue on
one worker, and `resize_now` by name through `app.send_task`."""

import time

from celery import Celery

app = Celery("routing")


def route_task(name, args, kwargs, options, task=None, **kw):
    for prefix in ("images", "emails"):
        if name.startswith(prefix + "."):
            return {"queue": prefix}
    return None  # everything else: the default queue


app.conf.task_queues = {
    "celery": {"routing_key": "celery"},
    "images": {"routing_key": "images"},
    "emails": {"routing_key": "emails"},
    "urgent": {"routing_key": "urgent"},
}
app.conf.task_create_missing_queues = False
app.conf.task_routes = (route_task,)

WORKERS = {"media": ["images"], "front": ["emails", "celery"], "vip": ["urgent"]}


@app.task(name="images.resize", queue="images")
def resize(photo_id: str, seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return f"resized {photo_id}"


@app.task(name="images.thumbnail", queue="images")
def thumbnail(photo_id: str, seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return f"thumbnail {photo_id}"


@app.task(name="emails.send_reset")
def send_reset(user: str) -> str:
    return f"reset link sent to {user}"


@app.task(name="emails.send_digest")
def send_digest(user: str) -> str:
    return f"digest sent to {user}"


@app.task(name="audit.record")
def record(event: str) -> str:
    return f"recorded {event}"


def resize_now(photo_id: str):
    return app.send_task("images.resize", args=[photo_id], queue="urgent")
