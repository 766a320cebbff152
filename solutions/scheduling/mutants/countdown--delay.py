"""Breaks `countdown`: remind_later uses .delay(), the skeleton's, so the reminder runs at once.

A mutant of the reference solution: everything else is as in solutions/scheduling/tasks.py.
"""

from datetime import datetime, timedelta, timezone

from celery import Celery
from celery.result import AsyncResult
from celery.schedules import crontab

app = Celery("scheduling")  # the kit supplies broker and backend; keep this line as it is
app.conf.timezone = "UTC"  # Why: crontab fields are read in app.conf.timezone; say UTC, don't inherit it


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
    # Why: countdown is relative to now; the worker holds the message until then, it never runs early.
    return send_reminder.delay(user_id)


def remind_at(user_id: str, when: datetime) -> AsyncResult:
    # Why: eta is an absolute moment; pass an aware datetime so no one has to guess its timezone.
    return send_reminder.apply_async((user_id,), eta=when)


def utc_in(seconds: float) -> datetime:
    # Why: datetime.utcnow() is naive (and deprecated since Python 3.12); this one carries +00:00.
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)  # noqa: UP017 (the spelling people search for)


def send_offer(user_id: str, valid_for: float) -> AsyncResult:
    # Why: expires drops a message that waited too long in the queue; the worker revokes it unrun.
    return deliver_offer.apply_async((user_id,), expires=valid_for)


# Why: "task" must be the registered name; crontab fields left out mean "every", so set minute too.
app.conf.beat_schedule = {
    "nightly-report": {"task": nightly_report.name, "schedule": crontab(minute=0, hour=1)},
    "inventory-sync": {
        "task": sync_inventory.name,
        "schedule": crontab(minute="*/15", day_of_week="mon-fri"),  # */15 = at :00, :15, :30, :45
    },
    "health-check": {"task": health_check.name, "schedule": timedelta(seconds=2)},
}
