"""A correct solution whose schedule is added in an on_after_configure handler (entries appear when the
conf is first read), with explicit crontab lists ("0,15,30,45", "1-5") and a hand-computed eta for
remind_later / countdown for remind_at, each meaning the same moment as the reference's option.
"""

import time
from datetime import UTC, datetime, timedelta

from celery import Celery
from celery.result import AsyncResult
from celery.schedules import crontab

app = Celery("scheduling")
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


def utc_in(seconds: float) -> datetime:
    return datetime.fromtimestamp(time.time() + seconds, tz=UTC)


def remind_later(user_id: str, delay: float) -> AsyncResult:
    return send_reminder.apply_async((user_id,), eta=utc_in(delay))


def remind_at(user_id: str, when: datetime) -> AsyncResult:
    return send_reminder.apply_async((user_id,), countdown=(when - datetime.now(UTC)).total_seconds())


def send_offer(user_id: str, valid_for: float) -> AsyncResult:
    return deliver_offer.s(user_id).apply_async(expires=valid_for)


@app.on_after_configure.connect
def schedule_jobs(sender: Celery, **_) -> None:
    sender.add_periodic_task(crontab("0", "1"), nightly_report.s())
    sender.add_periodic_task(
        crontab(minute="0,15,30,45", hour="*", day_of_week="1-5"), sync_inventory.s(), name="sync"
    )
    sender.add_periodic_task(timedelta(seconds=2), health_check.s(), name="health")
