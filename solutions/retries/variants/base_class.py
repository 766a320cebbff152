"""Variant: the retry policy lives on a base Task class, the 5xx/4xx split uses raise_for_status() and
re-raises a 5xx as a retryable error, and one httpx.Client is shared per process."""

import httpx
from celery import Celery, Task

app = Celery("retries")
client = httpx.Client(timeout=httpx.Timeout(1.0))


class Retryable(Exception):
    pass


class PoliteHTTPTask(Task):
    autoretry_for = (httpx.TransportError, Retryable)
    retry_backoff = True  # factor 1
    retry_backoff_max = 2
    retry_jitter = True
    max_retries = 3


@app.task(base=PoliteHTTPTask)
def fetch(url: str) -> dict:
    response = client.get(url)
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        if exc.response.is_server_error:
            raise Retryable(str(exc)) from exc
        raise
    return response.json()
