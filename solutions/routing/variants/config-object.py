"""Variant: settings from a config class (`config_from_object`), a compiled regex as the image route's
key and a glob for mail, `Queue` objects with their own exchanges, and the urgent queue read by the
mail worker (which never touches images)."""

import re
import time

from celery import Celery
from kombu import Queue

app = Celery("routing")


class Config:
    task_queues = (
        Queue("celery"),
        Queue("images"),
        Queue("emails"),
        Queue("urgent"),
    )
    task_create_missing_queues = False
    task_routes = {
        re.compile(r"^images\."): {"queue": "images"},
        "emails.*": {"queue": "emails"},
    }


app.config_from_object(Config)

WORKERS = {"images": ["images"], "mail": ["urgent", "emails"], "default": ["celery"]}


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
    return resize.apply_async((photo_id,), queue="urgent")
