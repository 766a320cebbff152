"""A worker's Prometheus metrics, seen the way a Prometheus server sees them: scraped over HTTP.

A deployment gives each worker that exports metrics a port and, for ``prometheus_client``'s multiprocess
mode, an empty folder of its own (:func:`worker_env`); the learner's code serves ``/metrics`` from the
worker. :func:`scrape` reads the endpoint and parses the text format with ``prometheus_client``'s own
parser; a :class:`Scrape` answers what PromQL would (``sum by``, ``increase`` as the difference of two
scrapes, ``histogram_quantile`` with Prometheus' own interpolation), so a verdict reads like an alert rule.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

PORT_ENV = "METRICS_PORT"  # where the worker serves /metrics (on 127.0.0.1)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode: one .db file per process


class ScrapeError(RuntimeError):
    """The endpoint did not answer, or not with Prometheus' text format; the message says which."""


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(folder: Path | str) -> dict[str, str]:
    """What a deployment gives a worker that exports metrics: a free port and an empty folder of its own
    for the multiprocess files, made under ``folder`` (which the caller removes). Each worker needs its own
    folder: a ``MultiProcessCollector`` sums every file in it, so two workers sharing one report each
    other's counts; and it must start empty, or a restarted worker reports the last run's counts too."""
    port = free_port()
    own = Path(folder) / f"prometheus-{port}"
    own.mkdir(parents=True)
    return {PORT_ENV: str(port), MULTIPROC_ENV: str(own)}


def endpoint(env: Mapping[str, str]) -> str:
    """The URL a Prometheus server would scrape from a worker started with ``env`` (:func:`worker_env`)."""
    return f"http://127.0.0.1:{env[PORT_ENV]}/metrics"


@dataclass(frozen=True)
class Sample:
    name: str  # the sample's own name: celery_tasks_total, ..._bucket, ..._count
    labels: tuple[tuple[str, str], ...]
    value: float
    family: str  # the metric family it belongs to (celery_tasks for celery_tasks_total)
    kind: str  # counter, gauge, histogram, summary, untyped, ...

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


class Scrape:
    """One scrape's samples, queried like PromQL: ``value("celery_tasks_total", task="tasks.charge")`` is
    ``sum(celery_tasks_total{task="tasks.charge"})``; ``after - before`` is the increase between two."""

    def __init__(self, samples: Iterable[Sample], text: str = "", declared: Mapping[str, str] | None = None):
        self.samples = list(samples)
        self.text = text
        # family -> type, also for families declared (# TYPE) with no series yet: a labelled metric has
        # none until a value is first recorded for a set of labels
        self.declared = dict(declared or {}) | {s.family: s.kind for s in self.samples}

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.label(k) == v for k, v in labels.items())]

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)

    def kind(self, family: str) -> str | None:
        return self.declared.get(family)

    def value(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels match (0 if none)."""
        return sum(s.value for s in self.select(name, **labels))

    def by(self, name: str, *keys: str, **labels: str) -> dict[tuple[str | None, ...], float]:
        """``sum by (keys) (name{labels})``."""
        out: dict[tuple[str | None, ...], float] = {}
        for s in self.select(name, **labels):
            key = tuple(s.label(k) for k in keys)
            out[key] = out.get(key, 0.0) + s.value
        return out

    def buckets(self, histogram: str, **labels: str) -> list[tuple[float, float]]:
        """The histogram's cumulative buckets ``[(le, count), ...]``, sorted, summed over other labels
        (``sum by (le)``): every bound the exporter declared, empty buckets included."""
        return sorted(
            (float(key[0]), count) for key, count in self.by(f"{histogram}_bucket", "le", **labels).items()
        )

    def families(self, prefix: str = "") -> dict[str, str]:
        """Metric family -> type (declared ones too), for the families whose name starts with ``prefix``."""
        return {name: kind for name, kind in self.declared.items() if name.startswith(prefix)}

    def __sub__(self, before: Scrape) -> Scrape:
        """Each series' increase since ``before`` (a series that was absent counts from 0), as
        ``increase()`` over the window between two scrapes of the same process."""
        old = {(s.name, s.labels): s.value for s in before.samples}
        return Scrape(
            [
                Sample(s.name, s.labels, s.value - old.get((s.name, s.labels), 0.0), s.family, s.kind)
                for s in self.samples
            ],
            self.text,
            self.declared,
        )


def parse(text: str) -> Scrape:
    """Prometheus' text exposition format, read by prometheus_client's own parser."""
    samples, declared = [], {}
    for family in text_string_to_metric_families(text):
        declared[family.name] = family.type
        for s in family.samples:
            labels = tuple(sorted((k, str(v)) for k, v in s.labels.items()))
            samples.append(Sample(s.name, labels, float(s.value), family.name, family.type))
    return Scrape(samples, text, declared)


def scrape(url: str, timeout: float = 3.0) -> Scrape:
    """GET ``url`` and parse it; :class:`ScrapeError` says what went wrong, as a verdict can show it."""
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ScrapeError(f"GET {url}: {type(exc).__name__} ({exc or 'no reply'})") from None
    if response.status_code != 200:
        raise ScrapeError(f"GET {url}: HTTP {response.status_code}: {response.text[:200]!r}")
    try:
        return parse(response.text)
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on a malformed line
        raise ScrapeError(
            f"GET {url}: not Prometheus' text format ({type(exc).__name__}: {exc}); it starts "
            f"{response.text[:120]!r}"
        ) from None


def wait_scrape(url: str, timeout: float) -> Scrape:
    """The first scrape that succeeds within ``timeout``: a worker serves its endpoint once it is up
    (say, from its ``worker_ready`` signal), a moment after it answers a ping. Raises the last error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return scrape(url, timeout=max(0.5, min(3.0, deadline - time.monotonic())))
        except ScrapeError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.05)  # polling the endpoint, bounded by the deadline above


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile``: find the bucket holding rank ``q x count`` and interpolate
    linearly inside it (the first bucket starts at 0); a rank in the +Inf bucket gives the highest finite
    bound. NaN without observations. The estimate is only as good as the bounds around it."""
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]) or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    at = next(i for i, (_, count) in enumerate(buckets) if count >= rank)  # the +Inf bucket holds them all
    upper, count = buckets[at]
    if math.isinf(upper):
        return buckets[-2][0]
    if at == 0 and upper <= 0:
        return upper
    lower, below = (0.0, 0.0) if at == 0 else buckets[at - 1]
    return lower + (upper - lower) * (rank - below) / (count - below) if count > below else upper
