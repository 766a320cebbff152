"""What workers hold right now, asked by remote control: prefetch windows, reserved and running tasks.

Events say what happened; they cannot say what a worker is *holding*. A message a worker has fetched but not
started (reserved, waiting for a free process or for its rate limit's token) sends ``task-received`` once and
then nothing, and the broker no longer counts it as waiting. These helpers ask the workers themselves
(``inspect().stats()`` / ``reserved()`` / ``active()``), the same on Redis and RabbitMQ, and pair that with
the broker's own count (:meth:`celerylab.engine.namespaces.Namespace.queue_depth`), so a test or a
notebook can say
"worker a holds 3 messages while b idles, 0 left on the broker".
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celerylab.engine.workers import Worker


@dataclass(frozen=True)
class Holding:
    """One worker at one moment: its prefetch window and what it holds."""

    hostname: str
    prefetch_count: int | None  # the window the worker asked the broker for (concurrency x multiplier)
    processes: int  # pool size
    reserved: tuple[str, ...]  # task ids fetched, not started (a free process or a token will start them)
    active: tuple[str, ...]  # task ids running in a pool process

    @property
    def short(self) -> str:
        return self.hostname.split("@")[0]

    def describe(self) -> str:
        return (
            f"{self.short}: prefetch_count {self.prefetch_count}, {self.processes} process(es), "
            f"{len(self.active)} running, {len(self.reserved)} reserved"
        )


def stats(worker: Worker, timeout: float = 2.0) -> dict[str, Any]:
    """The worker's ``inspect().stats()`` reply ({} if it did not answer in time)."""
    return (worker.inspect(timeout).stats() or {}).get(worker.hostname) or {}


def prefetch_count(worker: Worker, timeout: float = 2.0) -> int | None:
    """The prefetch window the worker's consumer set on its channel: concurrency x
    ``worker_prefetch_multiplier`` (0 means unlimited). Read off the worker, so it counts however the
    setting was made (app.conf, config_from_object, environment) and whatever overrode it."""
    return _prefetch_count(stats(worker, timeout))


def pool_size(worker: Worker, timeout: float = 2.0) -> int:
    """How many pool processes the worker runs (its effective concurrency)."""
    return _pool_size(stats(worker, timeout))


def _prefetch_count(info: dict[str, Any]) -> int | None:
    value = info.get("prefetch_count")
    return value if isinstance(value, int) else None


def _pool_size(info: dict[str, Any]) -> int:
    pool = info.get("pool") or {}
    return int(pool.get("max-concurrency") or len(pool.get("processes") or []))


def reserved_ids(worker: Worker, timeout: float = 2.0) -> list[str]:
    """Ids of the tasks the worker has fetched but not started (``inspect().reserved()``)."""
    return _ids(worker, worker.inspect(timeout).reserved())


def active_ids(worker: Worker, timeout: float = 2.0) -> list[str]:
    """Ids of the tasks running in the worker's pool processes (``inspect().active()``)."""
    return _ids(worker, worker.inspect(timeout).active())


def _ids(worker: Worker, replies: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    return [r.get("id") for r in (replies or {}).get(worker.hostname) or [] if r.get("id")]


def holding(worker: Worker, timeout: float = 2.0) -> Holding:
    """A snapshot of what the worker holds. The replies are three round trips, not one instant: a count
    may be a few milliseconds older than the next."""
    info = stats(worker, timeout)
    return Holding(
        worker.hostname,
        _prefetch_count(info),
        _pool_size(info),
        tuple(reserved_ids(worker, timeout)),
        tuple(active_ids(worker, timeout)),
    )


def holdings(workers: Iterable[Worker], timeout: float = 2.0) -> dict[str, Holding]:
    """:func:`holding` for each worker, by short name (``a``, ``b``)."""
    snaps = [holding(worker, timeout) for worker in workers]
    return {snap.short: snap for snap in snaps}


def wait_reserved(worker: Worker, count: int, timeout: float) -> list[str]:
    """Until the worker has reserved at least ``count`` tasks (polling remote control, bounded); returns
    the last reserved ids seen, which may be fewer if the deadline came first. A worker fills its prefetch
    window within milliseconds of a slot freeing up: this waits for that to have happened, so a test can
    judge the window full rather than hope it is."""
    deadline = time.monotonic() + timeout
    while True:
        ids = reserved_ids(worker, max(0.5, min(2.0, deadline - time.monotonic())))
        if len(ids) >= count or time.monotonic() >= deadline:
            return ids
        time.sleep(0.02)  # between remote-control round trips, bounded by the deadline above
