"""Variant: @shared_task with retry_kwargs for max_retries, the exception classes listed one by one
(every httpx transport failure: connect, read, write, protocol, timeouts), and 5xx raised as HTTPStatusError
only after checking the code."""

import httpx
from celery import Celery, shared_task

app = Celery("retries")


class Upstream5xx(httpx.HTTPError):
    pass


@shared_task(
    autoretry_for=(
        httpx.ConnectError,
        httpx.ReadError,
        httpx.WriteError,
        httpx.RemoteProtocolError,
        httpx.LocalProtocolError,
        httpx.TimeoutException,
        Upstream5xx,
    ),
    retry_kwargs={"max_retries": 3},
    retry_backoff=1,
    retry_backoff_max=2,
)
def fetch(url):
    r = httpx.get(url, timeout=0.8)
    if r.is_server_error:
        raise Upstream5xx(f"upstream answered {r.status_code}")
    if r.is_client_error:
        r.raise_for_status()
    return r.json()
