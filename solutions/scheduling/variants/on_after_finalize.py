"""A correct solution whose schedule is added with app.add_periodic_task in an on_after_finalize handler
(the Celery docs' pattern): the entries exist only once the app is finalized, as celery beat does it.
The offer's expiry is an aware datetime from the lab's own utc_in helper.
"""

from datetime import datetime, timedelta, timezone

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


def remind_later(user_id: str, delay: float) -> AsyncResult:
    return send_reminder.apply_async(args=[user_id], countdown=delay)


def remind_at(user_id: str, when: datetime) -> AsyncResult:
    return send_reminder.apply_async(args=[user_id], eta=when)


def utc_in(seconds: float) -> datetime:
    return datetime.now(tz=timezone.utc) + timedelta(seconds=seconds)  # noqa: UP017


def send_offer(user_id: str, valid_for: float) -> AsyncResult:
    return deliver_offer.apply_async(args=[user_id], expires=utc_in(valid_for))


@app.on_after_finalize.connect
def setup_periodic_tasks(sender: Celery, **kwargs) -> None:
    sender.add_periodic_task(crontab(hour=1, minute=0), nightly_report.s(), name="nightly report")
    sender.add_periodic_task(
        crontab(minute="*/15", day_of_week="mon-fri"), sync_inventory.s(), name="inventory sync"
    )
    sender.add_periodic_task(2.0, health_check.s(), name="health check every 2 s")
