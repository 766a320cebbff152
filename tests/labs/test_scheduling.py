"""Autograder: scheduling (labs/scheduling/README.md has the contract).

The learner's publishing helpers run here, in-process, on the learner's own app configured for the
namespace; the tasks they send run on a real prefork worker, and verdicts come from its events (when each
attempt started, REVOKED with expired=True). The crontab entries are judged deterministically: each
schedule is asked `is_due` minute by minute over a fixed week with an injected clock, as beat would. The
interval entry is judged on a real `celery beat` process feeding the real worker.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.result import AsyncResult
from celery.schedules import maybe_schedule

from celerylab.cron import fire_times
from celerylab.session import LabFailure, expect, verdict

DELAY = 1.0  # the countdown/eta used here, in seconds
EARLY = 0.05  # a start this much before its time is still on time (timer and event jitter)
LATE = 1.5  # ... and this much after it
INTERVAL = 2.0  # the contract's health_check period
WEEK_START = datetime(2026, 5, 31, 12, 0, tzinfo=UTC)  # a Sunday noon; June has DST in Europe
DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()


@pytest.fixture
def worker(lab):
    return lab.worker(concurrency=2)


def helper(lab, name: str):
    """The learner's publishing function ``name`` from tasks.py (a failure that says so if missing)."""
    fn = getattr(lab.module(), name, None)
    expect(
        callable(fn),
        f"MISSING FUNCTION: tasks.py has no function `{name}`.",
        expected=f"def {name}(...) as the README's contract says",
        hint="did you rename or delete it?",
    )
    return fn


def call(lab, name: str, *args: Any) -> Any:
    """``name(*args)`` from tasks.py, in this process; what it raises becomes a verdict, not a traceback."""
    shown = f"{name}({', '.join(map(repr, args))})"
    try:
        return helper(lab, name)(*args)
    except LabFailure:
        raise
    except Exception as exc:
        what = f"Calling {shown} raised {type(exc).__name__}: {exc}"
        raise LabFailure(verdict(what, hint="run it yourself in a Python shell in the lab folder.")) from None


def publish(lab, name: str, *args: Any) -> AsyncResult:
    """Call a helper that must send a task, and check it handed back the AsyncResult."""
    result = call(lab, name, *args)
    expect(
        isinstance(result, AsyncResult),
        f"{name}(...) should return the AsyncResult of the task it sent.",
        observed=f"it returned {result!r:.100}",
        hint="return send_reminder.apply_async(...)",
    )
    return result


def first_start(lab, result) -> float | None:
    tries = lab.timeline.attempts(result.id)
    return tries[0].start if tries else None


def sent_field(lab, result, key: str) -> Any:
    """A field of the ``task-sent`` event: what really went on the wire for this message."""
    sent = lab.timeline.events("task-sent", uuid=result.id)
    return sent[0].get(key) if sent else None


def check_on_time(lab, result, due: float, what: str, hint: str) -> None:
    lab.wait(result)
    start = first_start(lab, result)
    expect(
        start is not None and lab.timeline.state(result.id) == "SUCCESS",
        f"{what} should run.",
        expected="SUCCESS",
        observed=lab.timeline.describe(result.id),
    )
    offset = start - due
    expect(
        -EARLY <= offset <= LATE,
        f"{what} must not start before its time (nor long after it).",
        expected=f"the task starts {DELAY:g} s after it was sent (0..{LATE:g} s late at most)",
        observed=f"it started {start - (due - DELAY):.2f} s after it was sent",
        hint=hint,
    )


@pytest.mark.points(2)
@pytest.mark.deadline(15)
def test_countdown_never_runs_early(lab, worker):
    """remind_later(user, 1): the reminder starts 1 s after it was sent, not before"""
    sent = time.time()
    result = publish(lab, "remind_later", "ada", DELAY)
    check_on_time(
        lab,
        result,
        sent + DELAY,
        "remind_later(user, delay)'s reminder",
        hint="apply_async((user_id,), countdown=delay); .delay() runs it at once.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
def test_eta_runs_at_the_given_moment(lab, worker):
    """remind_at(user, when): the reminder starts at `when` (an aware UTC datetime), not before"""
    when = datetime.now(UTC) + timedelta(seconds=DELAY)
    result = publish(lab, "remind_at", "grace", when)
    check_on_time(
        lab,
        result,
        when.timestamp(),
        "remind_at(user, when)'s reminder",
        hint="apply_async((user_id,), eta=when).",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
def test_utc_in_is_timezone_aware(lab, worker):
    """utc_in(1) is an aware UTC datetime 1 s ahead; as an eta it goes on the wire with its +00:00"""
    now = datetime.now(UTC)
    when = call(lab, "utc_in", DELAY)
    expect(isinstance(when, datetime), "utc_in(seconds) should return a datetime.", observed=repr(when))
    expect(
        when.tzinfo is not None and when.utcoffset() == timedelta(0),
        "utc_in(seconds) must be timezone-aware UTC. A naive one (datetime.utcnow() makes one) cannot "
        "be compared with an aware datetime (TypeError), and .timestamp() reads it as local time.",
        expected="tzinfo UTC (utcoffset 0)",
        observed=f"{when!r} (tzinfo {when.tzinfo})",
        hint="datetime.now(timezone.utc) + timedelta(seconds=seconds); utcnow() is deprecated since "
        "Python 3.12.",
    )
    ahead = (when - now).total_seconds()
    expect(
        abs(ahead - DELAY) < 0.5,
        "utc_in(seconds) should be `seconds` from now.",
        expected=f"about {DELAY:g} s ahead of now",
        observed=f"{ahead:.2f} s ahead",
    )
    result = publish(lab, "remind_at", "linus", call(lab, "utc_in", 0))  # due at once: the wire counts
    lab.wait(result)
    eta = sent_field(lab, result, "eta") or ""
    expect(
        eta.endswith("+00:00"),
        "The message's eta should say which timezone it is in.",
        expected="an ISO eta ending in +00:00",
        observed=f"eta on the wire: {eta!r}",
        hint="remind_at must pass `when` as eta=when.",
    )


@pytest.mark.points(2)
@pytest.mark.deadline(20)
def test_expired_offer_never_runs(lab, worker):
    """send_offer(user, 1): runs while fresh; left 1 s in the queue, it is dropped unrun (REVOKED, expired)"""
    fresh = publish(lab, "send_offer", "ada", 5.0)
    lab.wait(fresh)
    expect(
        lab.timeline.state(fresh.id) == "SUCCESS",
        "A fresh offer (valid for 5 s, picked up at once) should run.",
        expected="SUCCESS",
        observed=lab.timeline.describe(fresh.id),
        hint="expires=valid_for counts from now; a past or zero expiry drops every offer.",
    )
    worker.pause_queue()  # the offer waits on the broker with no one reading the queue ...
    try:
        sent = time.time()
        stale = publish(lab, "send_offer", "grace", 1.0)
        lab.wait_until(lambda tl: tl.events("task-sent", uuid=stale.id), "the offer's task-sent event", 5)
        expires = sent_field(lab, stale, "expires")
        ends = datetime.fromisoformat(expires).timestamp() if expires else sent + 1.0
        time.sleep(max(0.0, ends - time.time()) + 0.1)  # ... until its expiry: a clock wait, not a sync
        dropped = broker_dropped(lab)
    finally:
        worker.resume_queue()
    if dropped:  # RabbitMQ: Celery also set the message's TTL from expires, so the broker discarded it
        expect(
            expires,
            "The offer left the queue without a worker, yet it had no expiry?",
            observed="no expires on the message",
        )
        return
    lab.wait(stale)
    revoked = lab.timeline.events("task-revoked", uuid=stale.id)
    ran = lab.timeline.attempts(stale.id)
    expect(
        not ran and revoked and revoked[0].get("expired"),
        "An offer that waited past its validity must never run: the worker should revoke it as expired.",
        expected="state REVOKED (task-revoked with expired=True), no attempt",
        observed=f"{lab.timeline.describe(stale.id)}; expires on the message: {expires}",
        hint="deliver_offer.apply_async((user_id,), expires=valid_for).",
    )


def broker_dropped(lab, within: float = 1.0) -> bool:
    """Whether the paused queue emptied with no consumer: RabbitMQ enforces the per-message TTL that Celery
    sets from `expires` (Redis does not; there the worker revokes the message when it reads it)."""
    if not lab.broker.is_amqp:
        return False
    deadline = time.monotonic() + within
    while lab.ns.queue_depth() > 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # polling the broker's own count, with a deadline
    return True


# -- beat_schedule: crontab entries, judged without waiting ----------------------------------------


def entries_for(lab, task: str) -> list[tuple[str, Any]]:
    """(key, schedule) of every beat_schedule entry that sends the learner's task ``task``."""
    app = lab.module().app
    name = lab.task_name(task)
    entries = (app.conf.beat_schedule or {}).items()
    return [
        (key, maybe_schedule(e.get("schedule"), app=app))
        for key, e in entries
        if isinstance(e, dict) and e.get("task") == name
    ]


def one_entry(lab, task: str, wanted: str) -> Any:
    found = entries_for(lab, task)
    schedule = lab.module().app.conf.beat_schedule or {}
    listed = ", ".join(f"{k!r} -> task {e.get('task')!r}" for k, e in schedule.items() if isinstance(e, dict))
    expect(
        len(found) == 1,
        f"app.conf.beat_schedule should have one entry that sends {task}.",
        expected=f"{{'task': {lab.task_name(task)!r}, 'schedule': {wanted}}}",
        observed=f"entries: {listed or 'none'}",
        hint=f"'task' is the name the worker registered ({task}.name), not a label.",
    )
    return found[0][1]


def shown(times: list[datetime], skip: int, limit: int = 5) -> str:
    """``N runs: ... Mon 01:00, Tue 01:00, ...`` from index ``skip`` (around the first difference)."""
    text = ", ".join(f"{DAYS[t.weekday()]} {t:%H:%M}" for t in times[skip : skip + limit])
    more = ", ..." if len(times) > skip + limit else ""
    return f"{len(times)} runs: " + ("... " if skip else "") + text + more


def check_fires(lab, task: str, wanted: str, expected: list[datetime], what: str, hint: str) -> None:
    week = WEEK_START + timedelta(days=7)
    fired = fire_times(one_entry(lab, task, wanted), WEEK_START, week, lab.module().app)
    wrong = next(
        (i for i, (a, b) in enumerate(zip(fired, expected, strict=False)) if a != b),
        None if len(fired) == len(expected) else min(len(fired), len(expected)),
    )
    skip = max(0, (wrong or 0) - 1)
    zone = lab.module().app.conf.timezone
    if len(fired) == len(expected) and str(zone) != "UTC":
        hint = f"right count, wrong hours: crontab is read in app.conf.timezone ({zone!r}); set it to 'UTC'."
    expect(
        wrong is None,
        what,
        expected=shown(expected, skip),
        observed=f"{shown(fired, skip)} (UTC, beat replayed from Sun 31 May 2026 12:00 for a week)",
        hint=hint,
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
def test_nightly_report_at_0100_utc(lab):
    """The nightly_report entry fires once a day at 01:00 UTC, every day (checked over a week, no waiting)"""
    days = [WEEK_START.replace(hour=1) + timedelta(days=d) for d in range(1, 8)]
    check_fires(
        lab,
        "nightly_report",
        "crontab(...)",
        days,
        "nightly_report should run every day at 01:00 UTC, once.",
        hint="crontab(minute=0, hour=1) with app.conf.timezone = 'UTC'; crontab(hour=1) alone "
        "fires every minute from 01:00 to 01:59.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
def test_inventory_sync_every_15_min_on_weekdays(lab):
    """The sync_inventory entry fires at :00/:15/:30/:45, Monday to Friday only (checked over a week)"""
    monday = WEEK_START.replace(hour=0) + timedelta(days=1)
    quarters = [monday + timedelta(minutes=15 * q) for q in range(5 * 24 * 4)]
    check_fires(
        lab,
        "sync_inventory",
        "crontab(...)",
        quarters,
        "sync_inventory should run every 15 minutes on weekdays, never at the weekend.",
        hint="crontab(minute='*/15', day_of_week='mon-fri'); minute=15 is hourly at :15.",
    )


# -- beat_schedule: the interval entry, on a real celery beat ---------------------------------------


@pytest.mark.points(2)
@pytest.mark.deadline(20)
def test_beat_sends_health_check_every_2s(lab, worker):
    """A real celery beat sends health_check to the worker at least twice, 2 s apart"""
    one_entry(lab, "health_check", f"timedelta(seconds={INTERVAL:g})")
    name = lab.task_name("health_check")
    beat = lab.start_beat()

    def starts(tl) -> list[float]:
        return sorted(a.start for u in tl.task_ids(name) for a in tl.attempts(u))

    try:
        runs = lab.wait_until(
            lambda tl: s if len(s := starts(tl)) >= 2 else None,
            f"two runs of health_check sent by beat (every {INTERVAL:g} s)",
        )
    finally:
        beat.stop()
    gap = runs[1] - runs[0]
    expect(
        abs(gap - INTERVAL) <= 0.5,
        "Beat should send health_check about every 2 s.",
        expected=f"runs {INTERVAL:g} s apart",
        observed=f"two runs {gap:.2f} s apart",
        hint="'schedule': timedelta(seconds=2) (or 2.0).",
    )
