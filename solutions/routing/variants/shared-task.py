"""Variant: `shared_task` decorators, one `app.conf.update(...)` with queues bound to named exchanges, the
routes as a list of routers, a second image worker, and `resize_now` through a signature."""

import time

from celery import Celery, shared_task
from kombu import Exchange, Queue

app = Celery("routing")

media, mail = Exchange("media", type="direct"), Exchange("mail", type="direct")
app.conf.update(
    task_queues=(
        Queue("celery"),
        Queue("images", media, routing_key="images"),
        Queue("urgent", media, routing_key="urgent"),
        Queue("emails", mail, routing_key="emails"),
    ),
    task_create_missing_queues=False,
    task_routes=[{"images.*": {"queue": "images"}}, {"emails.*": "emails"}],
)

WORKERS = {
    "media1": ["images"],
    "media2": ["images"],
    "mail": ["emails"],
    "vip": ["urgent"],
    "general": ["celery"],
}


@shared_task(name="images.resize")
def resize(photo_id: str, seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return f"resized {photo_id}"


@shared_task(name="images.thumbnail")
def thumbnail(photo_id: str, seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return f"thumbnail {photo_id}"


@shared_task(name="emails.send_reset")
def send_reset(user: str) -> str:
    return f"reset link sent to {user}"


@shared_task(name="emails.send_digest")
def send_digest(user: str) -> str:
    return f"digest sent to {user}"


@shared_task(name="audit.record")
def record(event: str) -> str:
    return f"recorded {event}"


def resize_now(photo_id: str):
    return resize.s(photo_id).apply_async(queue="urgent")
