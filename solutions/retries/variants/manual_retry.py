"""Variant: no autoretry_for; the task catches errors and calls self.retry(countdown=...) itself, drawing
full jitter with random.uniform over min(2, 2**retries)."""

import random

import httpx
from celery import Celery

app = Celery("retries")


@app.task(bind=True, max_retries=3)
def fetch(self, url: str) -> dict:
    try:
        response = httpx.get(url, timeout=1.0)
    except httpx.TransportError as exc:
        raise self.retry(exc=exc, countdown=random.uniform(0, min(2, 2**self.request.retries))) from exc
    if response.status_code >= 500:
        error = RuntimeError(f"{response.status_code} from {url}")
        raise self.retry(exc=error, countdown=random.uniform(0, min(2, 2**self.request.retries)))
    if response.status_code >= 400:
        raise ValueError(f"{response.status_code} from {url}")
    return response.json()
