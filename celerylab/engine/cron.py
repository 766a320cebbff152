"""When would beat send a periodic task? Asked of the schedule itself, with an injected clock.

Beat decides by calling ``schedule.is_due(last_run_at)`` on every tick; the schedule reads the time from
its ``nowfun``. Giving a copy of the schedule a clock we move by hand replays days of beat in well under a
second, deterministically, in the app's timezone: how graders check crontab entries and notebooks show
them, without waiting for 01:00.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.schedules import maybe_schedule


def fire_times(
    schedule: Any, start: datetime, end: datetime, app: Celery, step: timedelta = timedelta(minutes=1)
) -> list[datetime]:
    """The instants in [start, end) at which beat, ticking every ``step`` from ``start`` (its first
    ``last_run_at``), would find ``schedule`` due. ``schedule`` is a beat_schedule value: a crontab, a
    number of seconds or a timedelta; it is read in ``app``'s timezone and left untouched."""
    clock = copy.copy(maybe_schedule(schedule, app=app))
    now = [start]
    clock.nowfun, clock.app = (lambda: now[0]), app
    last, fired = start, []
    while now[0] < end:
        if clock.is_due(last)[0]:
            fired.append(now[0])
            last = now[0]
        now[0] += step
    return fired
