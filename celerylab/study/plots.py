"""Plots the notebooks share besides the timeline (``Timeline.plot``): one look, fixed in one place.

A whole-second quantity (Celery's retry backoff, ``countdown``) drawn with ``ax.hist(..., bins=range(n))``
puts the value 0 in the bin [0, 1): its bar sits between the ticks 0 and 1 and reads as "0.5 s". Here
each bin is centred on its value, with a tick under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def whole_seconds_histogram(
    ax: Any,
    samples: Sequence[float],
    *,
    top: int | None = None,
    what: str = "delay (s)",
    colour: str = "tab:blue",
) -> Any:
    """Bars for 0, 1, ... ``top`` seconds (default: the largest sample), each centred on its value, with
    the count of samples there; axis titles with units. Returns ``ax``."""
    top = int(max(samples, default=0)) if top is None else top
    ax.hist(samples, bins=[v - 0.5 for v in range(top + 2)], rwidth=0.8, color=colour)
    step = max(1, (top + 1) // 10)  # at most ~10 tick labels
    ax.set_xticks(range(0, top + 1, step))
    ax.set_xlim(-0.6, top + 0.6)
    ax.set_xlabel(what, fontsize=10)
    ax.set_ylabel("samples", fontsize=10)
    ax.tick_params(labelsize=10)
    return ax
