"""Variant: a hand-rolled retry with Celery's own backoff helper (celery.utils.time's
get_exponential_backoff_interval), a try/except around the status check, and the request in a Client."""

import httpx
from celery import Celery
from celery.utils.time import get_exponential_backoff_interval

app = Celery("retries")


class TransientHTTPError(Exception):
    pass


@app.task(bind=True, max_retries=3, name="tasks.fetch")
def fetch(self, url: str) -> dict:
    try:
        with httpx.Client(timeout=1) as http:
            response = http.get(url)
        if response.status_code >= 500:
            raise TransientHTTPError(response.status_code)
    except (httpx.TransportError, TransientHTTPError) as exc:
        delay = get_exponential_backoff_interval(1, self.request.retries, 2, full_jitter=True)
        raise self.retry(exc=exc, countdown=delay) from exc
    if response.status_code >= 400:
        raise LookupError(f"{response.status_code}: {url}")
    return response.json()
