"""Mutant: the first draft's way: one task fans out and waits for the pages with
.get(disable_sync_subtasks=False), then hands them on (failing with a ChordError like a chord would)."""

import httpx
from celery import Celery, group
from celery.canvas import Signature
from celery.exceptions import ChordError

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


@app.task
def collect(base_url: str, pages: int) -> list[dict]:
    results = [fetch_page.delay(page_url(base_url, n)) for n in range(1, pages + 1)]
    try:
        return [r.get(disable_sync_subtasks=False, timeout=30) for r in results]
    except Exception as exc:
        raise ChordError(f"a page failed: {exc!r}") from None


def build_report(base_url: str, pages: int) -> Signature:
    """Fetch pages 1..pages in parallel, merge them, publish the report, then announce it."""
    # Why: a chord runs merge once, after every page, with the results in header order; `|` IS the chain
    # (no chain(...) around it); announce.si() is immutable, so publish's result is not passed to it;
    # on_error on the whole workflow reaches the chord's body, which Celery fails when a page fails.
    fetch_all = group(fetch_page.s(page_url(base_url, n)) for n in range(1, pages + 1))
    del fetch_all
    workflow = collect.s(base_url, pages) | merge.s() | publish.s(base_url) | announce.si(base_url)
    return workflow.on_error(alert.s(base_url))
