"""Mutant of the routing solution: resize_now sends with `delay`, so the route wins and the urgent resize
joins the image backlog.
"""

import time

from celery import Celery
from kombu import Queue

app = Celery("routing")  # the kit supplies broker and backend; keep this line as it is

# Declared queues only: a typo in a route or a queue= raises QueueNotFound instead of filling a queue
# that no worker reads.
app.conf.task_queues = [Queue("celery"), Queue("images"), Queue("emails"), Queue("urgent")]
app.conf.task_create_missing_queues = False
# Patterns match task *names*: a new images.* task lands on the images queue with no config change.
app.conf.task_routes = {
    "images.*": {"queue": "images"},
    "emails.*": {"queue": "emails"},
}

# Which worker consumes which queue: what `celery -A tasks worker -n <name>@%h -Q <queues>` would say.
WORKERS = {
    "media": ["images"],  # dedicated: slow image work never holds up anything else
    "mail": ["emails"],
    "general": ["celery", "urgent"],  # urgent resizes skip the image backlog
}


@app.task(name="images.resize")
def resize(photo_id: str, seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return f"resized {photo_id}"


@app.task(name="images.thumbnail")
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
    """A paying customer's upload: the same task, sent past the image backlog."""
    return resize.delay(photo_id)
