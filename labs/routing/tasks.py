"""Lab: routing, named queues and dedicated workers. Read README.md in this folder first.

Every task goes to the one default queue and one worker takes everything, so a burst of photo uploads
makes password resets wait behind minutes of resizing. Route the tasks to their queues, declare the
queues, say which worker consumes which queue, and let resize_now skip the image backlog;
`celerylab grade routing` starts your WORKERS as real workers and watches who runs what.
"""

import time

from celery import Celery
from kombu import Queue  # noqa: F401  (for task_queues)

app = Celery("routing")  # the kit supplies broker and backend; keep this line as it is

# TODO: declare the queues celery, images, emails and urgent (task_queues), and refuse any other queue
# TODO: task_routes: every images.* task to "images", every emails.* task to "emails" (glob patterns)

# Which worker consumes which queue: what `celery -A tasks worker -n <name>@%h -Q <queues>` would say.
WORKERS = {
    "general": ["celery"],  # TODO: a dedicated images worker; nothing may wait behind image work
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
    return resize.delay(photo_id)  # TODO: to the urgent queue, whatever task_routes says
