"""Mutant: the errback is attached to the chord's body, which `|` folds into the
following steps: Celery drops it and no alert is sent (FACTS.md)."""

import httpx
from celery import Celery, chord, group
from celery.canvas import Signature

app = Celery("canvas")  # the kit supplies broker and backend; keep this line as it is

# One client per worker process (made at import, used only after the fork): it reuses connections and
# skips a TLS context per request (httpx.get builds one each call: ~0.1 s).
http = httpx.Client(timeout=2.0)


def page_url(base_url: str, number: int) -> str:
    return f"{base_url}/pages/{number}"


@app.task
def fetch_page(url: str) -> dict:
    response = http.get(url)
    response.raise_for_status()
    return response.json()


@app.task
def merge(pages: list[dict]) -> dict:
    return {"titles": [page["title"] for page in pages], "words": sum(page["words"] for page in pages)}


@app.task
def publish(report: dict, base_url: str) -> dict:
    http.post(f"{base_url}/reports", json=report).raise_for_status()
    return {"published": len(report["titles"])}


@app.task
def announce(base_url: str) -> str:
    http.post(f"{base_url}/announce", json={"text": "the weekly report is out"}).raise_for_status()
    return "announced"


@app.task
def alert(request, exc, traceback, base_url: str) -> None:
    # Why: an errback that takes (request, exc, traceback) is called with the failed task and its error.
    http.post(f"{base_url}/alerts", json={"task": request.id, "error": repr(exc)})


def build_report(base_url: str, pages: int) -> Signature:
    """Fetch pages 1..pages in parallel, merge them, publish the report, then announce it."""
    # Why: a chord runs merge once, after every page, with the results in header order; `|` IS the chain
    # (no chain(...) around it); announce.si() is immutable, so publish's result is not passed to it;
    # on_error on the whole workflow reaches the chord's body, which Celery fails when a page fails.
    fetch_all = group(fetch_page.s(page_url(base_url, n)) for n in range(1, pages + 1))
    workflow = chord(fetch_all, merge.s().on_error(alert.s(base_url))) | publish.s(base_url)
    return workflow | announce.si(base_url)
