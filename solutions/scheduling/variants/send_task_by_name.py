"""A correct solution that publishes with app.send_task by registered name, builds the schedule item by
item (crontab.from_string, a schedule() object) with the inventory split into two entries (Monday to
Thursday, and Friday) that together fire exactly as one, and adds health_check with add_periodic_task at
import time (kept pending until the app is configured). Its timezone is spelled "Etc/UTC".
"""

from datetime import datetime, timedelta, timezone

from celery import Celery
from celery.result import AsyncResult
from celery.schedules import crontab, schedule

app = Celery("scheduling")
app.conf.timezone = "Etc/UTC"


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
    return app.send_task(send_reminder.name, args=[user_id], countdown=delay)


def remind_at(user_id: str, when: datetime) -> AsyncResult:
    return app.send_task(send_reminder.name, args=[user_id], eta=when.astimezone(timezone.utc))  # noqa: UP017


def utc_in(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)  # noqa: UP017


def send_offer(user_id: str, valid_for: float) -> AsyncResult:
    return app.send_task(deliver_offer.name, args=[user_id], expires=valid_for)


app.conf.beat_schedule = {}
app.conf.beat_schedule["nightly"] = {
    "task": nightly_report.name,
    "schedule": crontab.from_string("0 1 * * *"),
}
app.conf.beat_schedule["inventory-mon-thu"] = {
    "task": sync_inventory.name,
    "schedule": crontab.from_string("*/15 * * * 1-4"),
}
app.conf.beat_schedule["inventory-fri"] = {
    "task": sync_inventory.name,
    "schedule": crontab(minute="*/15", day_of_week="fri"),
}
app.add_periodic_task(schedule(run_every=timedelta(seconds=2)), health_check.s(), name="health-check")
