"""Lab: scheduling (countdown, eta, expires, celery beat). Read README.md in this folder first.

The tasks are done; what is missing is WHEN they run. The publishing helpers below send everything at
once and the beat schedule is the cheat sheet's §7, as printed. `celerylab grade scheduling` tells you
how close you are.
"""

from datetime import datetime, timedelta

from celery import Celery
from celery.result import AsyncResult
from celery.schedules import crontab

app = Celery("scheduling")  # the kit supplies broker and backend; keep this line as it is
app.conf.timezone = "UTC"


@app.task
def send_reminder(user_id: str) -> str:
    return f"reminder sent to {user_id}"


@app.task
def deliver_offer(user_id: str) -> str:
    return f"offer delivered to {user_id}"


@app.task
def nightly_report() -> str:
    return "report built"


@app.task
def sync_inventory() -> str:
    return "inventory synced"


@app.task
def health_check() -> str:
    return "ok"


def remind_later(user_id: str, delay: float) -> AsyncResult:
    return send_reminder.delay(user_id)  # TODO: run `delay` seconds from now, not at once


def remind_at(user_id: str, when: datetime) -> AsyncResult:
    return send_reminder.delay(user_id)  # TODO: run at `when`, not at once


def utc_in(seconds: float) -> datetime:
    return datetime.utcnow() + timedelta(seconds=seconds)  # TODO: a timezone-aware UTC datetime


def send_offer(user_id: str, valid_for: float) -> AsyncResult:
    return deliver_offer.delay(user_id)  # TODO: never deliver an offer that waited more than `valid_for` s


app.conf.beat_schedule = {
    "nightly-report": {
        "task": "report_task",  # TODO: the name the worker knows the task by
        "schedule": crontab(minute=0, hour=1),  # 01:00 UTC
    },
    # TODO: sync_inventory every 15 minutes, Monday to Friday (UTC)
    # TODO: health_check every 2 seconds
}
