"""Lab: retries with backoff. Read README.md in this folder first.

This is the cheat sheet's §15 "robust HTTP task", as printed. It looks right and it never retries.
Fix it so it meets the contract in the README; `celerylab grade retries` tells you how close you are.
"""

import httpx
from celery import Celery

app = Celery("retries")  # the kit supplies broker and backend; keep this line as it is


# TODO: make it retry connection errors, timeouts and 5xx replies (never a 4xx), with capped,
#       jittered exponential backoff, at most 3 retries, and a request timeout of at most 1 s.
@app.task(
    bind=True,
    autoretry_for=(TimeoutError, ConnectionError),
    retry_backoff=2,
    retry_jitter=True,
    max_retries=6,
)
def fetch(self, url: str) -> dict:
    resp = httpx.get(url, timeout=5)
    resp.raise_for_status()
    return resp.json()
