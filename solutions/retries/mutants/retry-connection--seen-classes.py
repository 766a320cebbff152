"""Mutant: retries only the classes a reset and a hang raise (RemoteProtocolError, ReadTimeout): a refused
connection (ConnectError) is not retried."""

import httpx
from celery import Celery

app = Celery("retries")  # the kit supplies broker and backend; keep this line as it is


class ServerError(Exception):
    """A 5xx reply: the server may recover, so this one is retried."""


class ClientError(Exception):
    """A 4xx reply: asking again cannot help, so this one is not."""


# Why: httpx.TransportError is the parent of ConnectError, ReadError and every timeout; the builtins
# ConnectionError/TimeoutError the cheat sheet names are not, so they never matched anything.
@app.task(
    bind=True,
    autoretry_for=(httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout, ServerError),
    retry_backoff=1,  # 1, 2, 4, ... seconds before jitter
    retry_backoff_max=2,  # the cap
    retry_jitter=True,  # full jitter: a random 0..delay, so failing clients don't retry in lockstep
    max_retries=3,
)
def fetch(self, url: str) -> dict:
    response = httpx.get(url, timeout=1.0)  # never block without a deadline
    if response.status_code >= 500:
        raise ServerError(f"{response.status_code} from {url}")
    if response.status_code >= 400:
        raise ClientError(f"{response.status_code} from {url}")
    return response.json()
