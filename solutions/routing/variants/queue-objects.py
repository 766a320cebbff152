"""Variant: kombu `Queue` objects everywhere: declared once as module constants, used as the routes'
targets and as `resize_now`'s `queue=`, with one worker for mail and the default queue and one for
urgent work."""

import time

from celery import Celery
from kombu import Queue

app = Celery("routing")

DEFAULT, IMAGES, EMAILS, URGENT = Queue("celery"), Queue("images"), Queue("emails"), Queue("urgent")
app.conf.task_queues = (DEFAULT, IMAGES, EMAILS, URGENT)
app.conf.task_create_missing_queues = False
app.conf.task_routes = {"images.*": {"queue": IMAGES}, "emails.*": {"queue": EMAILS}}

WORKERS = {"media": [IMAGES.name], "frontline": [EMAILS.name, DEFAULT.name], "express": [URGENT.name]}


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
    return resize.apply_async(args=[photo_id], queue=URGENT)
