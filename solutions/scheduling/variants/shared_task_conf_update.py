"""A correct solution with @shared_task tasks, the schedule set through app.conf.update with task names
as strings and a float interval, app.conf.timezone left unset (Celery's default is UTC), the cheat sheet's
naive datetime.utcnow() eta in remind_later (Celery reads a naive eta as UTC, so it is the right moment),
and utc_in from zoneinfo.
"""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from celery import Celery, shared_task
from celery.result import AsyncResult
from celery.schedules import crontab

app = Celery("scheduling")


@shared_task
def send_reminder(user_id: str) -> str:
    return f"reminder sent to {user_id}"


@shared_task
def deliver_offer(user_id: str) -> str:
    return f"offer delivered to {user_id}"


@shared_task
def nightly_report() -> str:
    return "report built"


@shared_task
def sync_inventory() -> str:
    return "inventory synced"


@shared_task
def health_check() -> str:
    return "ok"


def remind_later(user_id: str, delay: float) -> AsyncResult:
    return send_reminder.apply_async((user_id,), eta=datetime.utcnow() + timedelta(seconds=delay))


def remind_at(user_id: str, when: datetime) -> AsyncResult:
    return send_reminder.apply_async(kwargs={"user_id": user_id}, eta=when)


def utc_in(seconds: float) -> datetime:
    return datetime.now(ZoneInfo("UTC")) + timedelta(seconds=seconds)


def send_offer(user_id: str, valid_for: float) -> AsyncResult:
    expires = datetime.now(ZoneInfo("UTC")) + timedelta(seconds=valid_for)
    return deliver_offer.apply_async((user_id,), expires=expires)


app.conf.update(
    beat_schedule={
        "report-0100": {"task": "tasks.nightly_report", "schedule": crontab(minute="0", hour="1")},
        "inventory-quarter-hourly": {
            "task": "tasks.sync_inventory",
            "schedule": crontab(minute="*/15", hour="*", day_of_week="mon,tue,wed,thu,fri"),
        },
        "health": {"task": "tasks.health_check", "schedule": 2.0},
    }
)
