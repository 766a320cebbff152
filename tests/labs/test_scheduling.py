"""Autograder: scheduling (labs/scheduling/README.md has the contract).

The learner's publishing helpers run here, in-process, on the learner's own app configured for the
namespace; the tasks they send run on a real prefork worker, and verdicts come from its events: the eta
and expires a message carried as the worker read them, when each attempt started, REVOKED with
expired=True. Every verdict is judged from the message's own times first, so a far-off eta or expiry (a
naive local datetime read as UTC: this grader runs at UTC+05:45) fails at once instead of being waited
for. The schedule is read as `celery beat` reads it: from the learner's app once it is FINALIZED (entries
added with add_periodic_task in an on_after_finalize or on_after_configure handler exist only then).
Crontab and interval entries are replayed with an injected clock (`is_due` tick by tick, as beat would),
and a real `celery beat` process must feed health_check to the real worker. Nothing here is random.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.result import AsyncResult
from celery.schedules import crontab, maybe_schedule, schedule

from celerylab.engine.cron import fire_times
from celerylab.grading.session import LabFailure, expect, verdict

DELAY = 1.0  # the countdown/eta used here, in seconds
SLACK = 0.05  # a message's eta may differ this much from the moment the helper was called + DELAY
EARLY = 0.05  # a start this much before its eta is still on time (timer and event jitter)
LATE = 1.5  # ... and this much after it (a busy 2-core machine)
STALE, VALID = 1.0, 3.0  # send_offer validities: one outlived in the paused queue, one that is not
HOLD = 0.25  # the paused queue is held this long past the stale offer's validity
INTERVAL = 2.0  # the contract's health_check period
WEEK_START = datetime(2026, 5, 31, 12, 0, tzinfo=UTC)  # a Sunday noon; June has DST in Europe
WINTER_DAY = datetime(2026, 1, 11, 12, 0, tzinfo=UTC)  # a January day: no DST anywhere in Europe
DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()


@pytest.fixture
def worker(lab):
    return lab.worker(concurrency=2)


# -- the learner's helpers, called here ---------------------------------------------------------


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
    shown_call = f"{name}({', '.join(map(repr, args))})"
    try:
        return helper(lab, name)(*args)
    except LabFailure:
        raise
    except Exception as exc:
        what = f"Calling {shown_call} raised {type(exc).__name__}: {str(exc)[:200]}"
        raise LabFailure(verdict(what, hint="run it yourself in a Python shell in the lab folder.")) from None


def publish(lab, name: str, *args: Any) -> tuple[AsyncResult, float, float]:
    """Call a helper that must send a task: its AsyncResult, and the clock just before and after the call
    (the message's eta/expires was computed in between)."""
    before = time.time()
    result = call(lab, name, *args)
    after = time.time()
    expect(
        isinstance(result, AsyncResult),
        f"{name}(...) should return the AsyncResult of the task it sent.",
        observed=f"it returned {result!r:.100}",
        hint="return the value of apply_async(...): `return send_reminder.apply_async(...)`.",
    )
    return result, before, after


# -- a message's times, as the worker reads them --------------------------------------------------


def wire_time(value: str | None) -> float | None:
    """An eta/expires from a message or event as a time.time(); a naive one is UTC, as Celery reads it
    (``maybe_make_aware`` treats naive as UTC, whatever the host's zone)."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def span(seconds: float) -> str:
    """``1.02 s``, or ``5 h 45 min`` for the long ones (a time zone's offset shows as one)."""
    if abs(seconds) < 120:
        return f"{seconds:.2f} s"
    minutes = round(abs(seconds) / 60)
    text = f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
    return ("-" if seconds < 0 else "") + text


def local_zone() -> str:
    """This process's UTC offset as ``UTC+05:45`` (the grader's TZ; see grading.DEFAULT_TZ)."""
    offset = datetime.now().astimezone().strftime("%z")
    return f"UTC{offset[:3]}:{offset[3:]}"


def sent_field(lab, result, key: str) -> str | None:
    """A field of the ``task-sent`` event: what really went on the wire for this message."""
    sent = lab.timeline.events("task-sent", uuid=result.id)
    return sent[0].get(key) if sent else None


def naive_note(lab, result, key: str, error: float) -> str:
    """Why a message's time is off, when the wire shows it: naive, and off by this host's UTC offset."""
    raw = sent_field(lab, result, key)
    if not raw or datetime.fromisoformat(raw).tzinfo is not None:
        return ""
    offset = datetime.now().astimezone().utcoffset() or timedelta(0)
    if offset and abs(error - offset.total_seconds()) < 5:
        return f"; on the wire it is naive ({raw}): local time (grader at {local_zone()}) read as UTC"
    return f"; on the wire it is naive ({raw}, no timezone)"


def received(lab, result, what: str):
    """The worker's ``task-received`` event for ``result`` (bounded by the test's deadline)."""
    try:
        return lab.wait_until(
            lambda tl: (tl.events("task-received", uuid=result.id) or [None])[0],
            f"the worker to receive {what}",
            timeout=min(5.0, lab.remaining()),
        )
    except LabFailure:
        raise LabFailure(
            verdict(
                f"No worker received {what} within 5 s of sending it.",
                observed=lab.timeline.describe(result.id),
                hint="send it to the default queue (no queue= or routing of your own).",
            )
        ) from None


def first_start(lab, result) -> float | None:
    tries = lab.timeline.attempts(result.id)
    return tries[0].start if tries else None


def check_on_time(lab, result, due: tuple[float, float], what: str, hint: str) -> None:
    """The message asks to run in ``due`` (the earliest and latest moment the contract allows, from when
    the helper was called), and the worker starts it then: never before its eta, at most LATE after."""
    event = received(lab, result, what)
    asked = wire_time(event.get("eta"))
    sent_at = due[0] - DELAY
    if asked is not None:
        error = asked - due[0]
        expect(
            due[0] - SLACK <= asked <= due[1] + SLACK,
            f"{what} must be due {DELAY:g} s after it was sent.",
            expected=f"the message's eta {DELAY:g} s after sending (±{SLACK:g} s)",
            observed=f"its eta is {span(asked - sent_at)} after sending"
            + naive_note(lab, result, "eta", error),
            hint=hint,
        )
    lab.wait(result)
    start = first_start(lab, result)
    expect(
        start is not None and lab.timeline.state(result.id) == "SUCCESS",
        f"{what} should run.",
        expected="SUCCESS",
        observed=lab.timeline.describe(result.id),
    )
    expect(
        (asked is None or start >= asked - EARLY) and due[0] - EARLY <= start <= due[1] + LATE,
        f"{what} must not start before its time (nor long after it).",
        expected=f"it starts {DELAY:g} s after it was sent (0..{LATE:g} s late at most)",
        observed=f"it started {start - sent_at:.2f} s after it was sent"
        + ("; the message carried no eta, so it was due at once" if asked is None else ""),
        hint=hint,
    )


@pytest.mark.points(2)
@pytest.mark.deadline(15)
@pytest.mark.rules("countdown")
def test_countdown_never_runs_early(lab, worker):
    """remind_later(user, 1): the message is due 1 s after sending; the reminder starts then, not before"""
    result, before, after = publish(lab, "remind_later", "ada", DELAY)
    check_on_time(
        lab,
        result,
        (before + DELAY, after + DELAY),
        "remind_later(user, delay)'s reminder",
        hint="send_reminder.apply_async((user_id,), countdown=delay): seconds from now, no datetime needed.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("eta")
def test_eta_runs_at_the_given_moment(lab, worker):
    """remind_at(user, when): the message is due at `when` (an aware UTC datetime); it starts then"""
    when = datetime.now(UTC) + timedelta(seconds=DELAY)
    due = when.timestamp()
    result, before, after = publish(lab, "remind_at", "grace", when)
    check_on_time(
        lab,
        result,
        (due, due + (after - before)),
        "remind_at(user, when)'s reminder",
        hint="pass `when` on as it is: send_reminder.apply_async((user_id,), eta=when).",
    )


def check_utc_in(lab, seconds: float) -> None:
    before = time.time()
    when = call(lab, "utc_in", seconds)
    after = time.time()
    expect(
        isinstance(when, datetime),
        "utc_in(seconds) should return a datetime.",
        observed=f"utc_in({seconds:g}) returned {when!r:.100}",
    )
    if when.tzinfo is None or when.utcoffset() is None:
        as_utc = when.replace(tzinfo=UTC).timestamp() - before - seconds
        looks = (
            "datetime.utcnow()'s naive UTC"
            if abs(as_utc) < 5
            else "a naive local time (datetime.now())"
            if abs(when.timestamp() - before - seconds) < 5
            else "no timezone"
        )
        raise LabFailure(
            verdict(
                "utc_in(seconds) must be timezone-aware UTC. A naive one cannot be compared with an aware "
                "datetime (TypeError), and .timestamp() reads it as local time.",
                expected="tzinfo UTC (utcoffset 0)",
                observed=f"utc_in({seconds:g}) returned {when.isoformat()}: naive, {looks}",
                hint="datetime.now(timezone.utc) + timedelta(seconds=seconds); utcnow() is deprecated "
                "since Python 3.12.",
            )
        )
    expect(
        when.utcoffset() == timedelta(0),
        "utc_in(seconds) must be in UTC (offset 0), not in the machine's local zone.",
        expected="utcoffset 0 (+00:00)",
        observed=f"utc_in({seconds:g}) returned {when.isoformat()}: aware, at the offset of {local_zone()}"
        if when.utcoffset() == datetime.now().astimezone().utcoffset()
        else f"utc_in({seconds:g}) returned {when.isoformat()}: aware, not at offset 0",
        hint="datetime.now(timezone.utc), not datetime.now().astimezone().",
    )
    moment = when.timestamp()
    expect(
        before + seconds - SLACK <= moment <= after + seconds + SLACK,
        "utc_in(seconds) should be `seconds` from now.",
        expected=f"utc_in({seconds:g}) about {seconds:g} s ahead of now",
        observed=f"it is {span(moment - before)} ahead",
        hint="+ timedelta(seconds=seconds), with the float as it is.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(10)
@pytest.mark.rules("utc-aware")
def test_utc_in_is_timezone_aware(lab):
    """utc_in(1) and utc_in(2.5) are aware UTC datetimes (offset 0), that many seconds from now"""
    check_utc_in(lab, DELAY)
    check_utc_in(lab, 2.5)


def expires_text(lab, result, sent_at: float) -> str:
    raw = sent_field(lab, result, "expires")
    if not raw:
        return "the message carried no expires"
    error = wire_time(raw) - sent_at
    return f"the message expires {span(error)} after sending" + naive_note(lab, result, "expires", error)


@pytest.mark.points(2)
@pytest.mark.deadline(20)
@pytest.mark.rules("expires")
def test_expired_offer_never_runs(lab, worker):
    """Held 1.25 s in a paused queue, send_offer(user, 3) still runs; send_offer(user, 1) never does"""
    worker.pause_queue(timeout=min(10.0, lab.remaining()))  # the offers wait on the broker, unread
    try:
        stale, sent, _ = publish(lab, "send_offer", "grace", STALE)
        valid, valid_sent, last = publish(lab, "send_offer", "ada", VALID)  # queued behind the stale one
        marker = lab.send("deliver_offer", "marker")  # no expiry, queued last: once it is done, the worker
        # has received every offer the broker still held (one queue, FIFO), so a missing one was dropped
        # A wait for a moment on the clock (the stale offer's validity ending), not for an event; bounded.
        time.sleep(max(0.0, min(last + STALE + HOLD - time.time(), lab.remaining())))
    finally:
        worker.resume_queue(timeout=min(10.0, max(1.0, lab.remaining())))
    held = time.time() - sent
    lab.wait(marker)
    if lab.timeline.events("task-received", uuid=valid.id):
        lab.wait(valid)
    expect(
        lab.timeline.state(valid.id) == "SUCCESS" and lab.timeline.attempts(valid.id),
        f"An offer valid for {VALID:g} s, taken after {held:.2f} s in the queue, should still run.",
        expected="SUCCESS",
        observed=f"{lab.timeline.describe(valid.id)}"
        + (
            ""
            if lab.timeline.events("task-received", uuid=valid.id)
            else " (the broker discarded it)"
            if lab.broker.is_amqp
            else " (no worker received it)"
        )
        + f"; {expires_text(lab, valid, valid_sent)}",
        hint="expires=valid_for counts seconds from sending.",
    )
    # By now the worker has received the stale offer, or the broker dropped it (RabbitMQ enforces the
    # TTL Celery sets from expires; then it stays PENDING, never delivered).
    if lab.timeline.events("task-received", uuid=stale.id):
        lab.wait(stale)
    ran = lab.timeline.attempts(stale.id)
    revoked = lab.timeline.events("task-revoked", uuid=stale.id)
    dropped = not lab.timeline.events("task-received", uuid=stale.id)
    expect(
        not ran and (dropped or (revoked and revoked[0].get("expired"))),
        f"An offer valid for {STALE:g} s that waited {held:.2f} s in the queue must never run.",
        expected="the worker drops it unrun (REVOKED, expired=True), or the broker discards it",
        observed=f"{lab.timeline.describe(stale.id)}; {expires_text(lab, stale, sent)}",
        hint="deliver_offer.apply_async((user_id,), expires=valid_for); a check inside the task is too "
        "late: it has already run.",
    )


# -- beat_schedule: read from the finalized app, as celery beat reads it -----------------------------


def beat_app(lab):
    """The learner's app as celery beat sees it: beat runs ``loader.init_worker()`` and ``finalize()``
    before it reads the schedule, and add_periodic_task calls in on_after_finalize handlers only happen
    then (on_after_configure ones when the conf is first read)."""
    app = lab.module().app
    try:
        app.loader.import_default_modules()
        app.finalize()
        app.conf.beat_schedule  # noqa: B018 (reading the conf runs pending on_after_configure work)
    except Exception as exc:
        raise LabFailure(
            verdict(
                f"Finalizing your app (what celery beat does before it reads the schedule) raised "
                f"{type(exc).__name__}: {str(exc)[:200]}",
                hint="run `celery -A tasks beat` in the lab folder to see it.",
            )
        ) from None
    return app


def describe_schedule(value: Any) -> str:
    """A schedule as someone would write it: ``crontab(minute='*/15', day_of_week='mon-fri')``."""
    if isinstance(value, crontab):
        fields = {
            "minute": value._orig_minute,
            "hour": value._orig_hour,
            "day_of_week": value._orig_day_of_week,
            "day_of_month": value._orig_day_of_month,
            "month_of_year": value._orig_month_of_year,
        }
        return "crontab(" + ", ".join(f"{k}={v!r}" for k, v in fields.items() if str(v) != "*") + ")"
    if isinstance(value, schedule):
        return f"every {value.run_every.total_seconds():g} s"
    return repr(value)[:60]


def listing(app) -> str:
    entries = (app.conf.beat_schedule or {}).items()
    shown = [
        f"{k!r} -> {e.get('task')!r} {describe_schedule(maybe_schedule(e.get('schedule'), app=app))}"
        for k, e in entries
        if isinstance(e, dict)
    ]
    return "; ".join(shown) or "none"


def entries_for(lab, task: str, wanted: str) -> list[tuple[str, Any]]:
    """(key, schedule) of every beat entry that sends the learner's ``task``; a verdict if there is none."""
    app = beat_app(lab)
    name = lab.task_name(task)
    found = [
        (key, maybe_schedule(e.get("schedule"), app=app))
        for key, e in (app.conf.beat_schedule or {}).items()
        if isinstance(e, dict) and e.get("task") == name
    ]
    known = set(lab.probe["tasks"])
    unknown = [e.get("task") for e in (app.conf.beat_schedule or {}).values() if e.get("task") not in known]
    expect(
        found,
        f"The beat schedule has no entry that sends {task}.",
        expected=f"{{'task': {name!r}, 'schedule': {wanted}}}",
        observed=f"entries: {listing(app)}",
        hint=f"an entry with 'task': {task}.name ({name!r}); 'task' is a registered name, not a label "
        f"(no task is called {unknown[0]!r})."
        if unknown
        else f"add an entry for {task} to app.conf.beat_schedule (or app.add_periodic_task(...)).",
    )
    return found


def shown(times: list[datetime], skip: int, limit: int = 4) -> str:
    """``N runs: ... Mon 01:00, Tue 01:00, ...`` from index ``skip`` (around the first difference)."""
    text = ", ".join(f"{DAYS[t.weekday()]} {t:%H:%M}" for t in times[skip : skip + limit])
    more = ", ..." if len(times) > skip + limit else ""
    return f"{len(times)} runs: " + ("... " if skip else "") + text + more


def first_difference(fired: list, expected: list) -> int | None:
    wrong = next((i for i, (a, b) in enumerate(zip(fired, expected, strict=False)) if a != b), None)
    if wrong is None and len(fired) != len(expected):
        wrong = min(len(fired), len(expected))
    return wrong


def replay(lab, found: list[tuple[str, Any]], start: datetime, end: datetime, step: timedelta) -> list:
    """When beat would send the task, over [start, end): every entry replayed, their runs merged."""
    app = beat_app(lab)
    return sorted(t for _, s in found for t in fire_times(s, start, end, app, step))


def zone_problem(app) -> str | None:
    """What is wrong with the app's timezone for this lab's crontabs (None: it is UTC all year)."""
    zone = app.timezone
    if all(zone.utcoffset(day.replace(tzinfo=None)) == timedelta(0) for day in (WINTER_DAY, WEEK_START)):
        return None
    return f"the entry is read in app.conf.timezone = {app.conf.timezone!r}, not UTC: set it to 'UTC'."


def check_fires(lab, task: str, wanted: str, expected: list[datetime], what: str, hint: str) -> None:
    found = entries_for(lab, task, wanted)
    hint = zone_problem(beat_app(lab)) or hint
    fired = replay(lab, found, WEEK_START, WEEK_START + timedelta(days=7), timedelta(minutes=1))
    wrong = first_difference(fired, expected)
    skip = max(0, (wrong or 0) - 1)
    entries = ", ".join(f"{k!r}: {describe_schedule(s)}" for k, s in found)
    expect(
        wrong is None,
        what,
        expected=shown(expected, skip),
        observed=f"{entries} -> {shown(fired, skip)} (UTC, replayed from Sun 31 May 2026 12:00 for a week)",
        hint=hint,
    )


@pytest.mark.points(1)
@pytest.mark.deadline(10)
@pytest.mark.rules("timezone-utc")
def test_crontab_hours_are_utc(lab):
    """A crontab(minute=0, hour=1) read in your app fires at 01:00 UTC, in January and in June"""
    app = beat_app(lab)
    fired, expected = [], []
    for day in (WINTER_DAY, WEEK_START):
        fired += fire_times(crontab(minute=0, hour=1), day, day + timedelta(days=1), app)
        expected.append(day.replace(hour=1) + timedelta(days=1))
    expect(
        fired == expected,
        "Crontab fields are read in app.conf.timezone, which must be UTC here.",
        expected="crontab(minute=0, hour=1) fires at 01:00 UTC on 12 Jan and on 1 Jun",
        observed=f"app.conf.timezone = {app.conf.timezone!r} (enable_utc={app.conf.enable_utc}): it fires at "
        + (", ".join(f"{t:%d %b %H:%M} UTC" for t in fired) or "no time"),
        hint="app.conf.timezone = 'UTC' (the skeleton's line); your local zone moves every crontab.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(10)
@pytest.mark.rules("nightly-report", needs=["timezone-utc"])
def test_nightly_report_at_0100_utc(lab):
    """The nightly_report entry fires once a day at 01:00 UTC, every day (checked over a week, no waiting)"""
    days = [WEEK_START.replace(hour=1) + timedelta(days=d) for d in range(1, 8)]
    check_fires(
        lab,
        "nightly_report",
        "crontab(minute=0, hour=1)",
        days,
        "nightly_report should run every day at 01:00 UTC, once.",
        hint="crontab(minute=0, hour=1); crontab(hour=1) alone fires every minute from 01:00 to 01:59.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(10)
@pytest.mark.rules("inventory-sync", needs=["timezone-utc"])
def test_inventory_sync_every_15_min_on_weekdays(lab):
    """The sync_inventory entry fires at :00/:15/:30/:45, Monday to Friday only (checked over a week)"""
    monday = WEEK_START.replace(hour=0) + timedelta(days=1)
    quarters = [monday + timedelta(minutes=15 * q) for q in range(5 * 24 * 4)]
    check_fires(
        lab,
        "sync_inventory",
        "crontab(minute='*/15', day_of_week='mon-fri')",
        quarters,
        "sync_inventory should run every 15 minutes on weekdays, never at the weekend.",
        hint="crontab(minute='*/15', day_of_week='mon-fri'); minute=15 is hourly at :15, and in "
        "day_of_week 0 is Sunday.",
    )


# -- beat_schedule: the interval entry ---------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.deadline(10)
@pytest.mark.rules("health-check")
def test_health_check_interval_is_2s(lab):
    """The health_check entry fires every 2 s (replayed tick by tick over 20 s, no waiting)"""
    found = entries_for(lab, "health_check", f"timedelta(seconds={INTERVAL:g})")
    start, tick = WEEK_START, timedelta(milliseconds=100)
    fired = replay(lab, found, start, start + timedelta(seconds=20), tick)
    expected = [start + timedelta(seconds=INTERVAL * k) for k in range(1, 10)]
    entries = ", ".join(f"{k!r}: {describe_schedule(s)}" for k, s in found)
    expect(
        fired == expected,
        f"Beat should send health_check every {INTERVAL:g} s.",
        expected=f"9 runs in 20 s, at +{INTERVAL:g}, +{2 * INTERVAL:g}, ... s",
        observed=f"{entries} -> {len(fired)} runs in 20 s"
        + (": at " + ", ".join(f"+{(t - start).total_seconds():g}" for t in fired[:5]) if fired else ""),
        hint=f"'schedule': timedelta(seconds={INTERVAL:g}) (or {INTERVAL:g}): an interval, not a crontab.",
    )


@pytest.mark.points(1)
@pytest.mark.deadline(20)
@pytest.mark.rules("health-check")
def test_beat_sends_health_check_every_2s(lab, worker):
    """A real celery beat sends health_check to the worker at least twice, 2 s apart"""
    found = entries_for(lab, "health_check", f"timedelta(seconds={INTERVAL:g})")
    entries = ", ".join(f"{k!r}: {describe_schedule(s)}" for k, s in found)
    name = lab.task_name("health_check")
    wait = min(lab.remaining(), 3 * INTERVAL + 2)  # two runs are due by 2 intervals after beat starts
    due = replay(lab, found, WEEK_START, WEEK_START + timedelta(seconds=wait), timedelta(milliseconds=100))
    expect(  # no beat can send it twice in time: say so now instead of waiting the window out
        len(due) >= 2,
        f"celery beat should send health_check every {INTERVAL:g} s to the worker.",
        expected=f"two runs within {wait:.0f} s of beat starting",
        observed=f"the entry ({entries}) is due {len(due)} time(s) in {wait:.0f} s, so beat was not started",
        hint=f"'schedule': timedelta(seconds={INTERVAL:g}) (or {INTERVAL:g}): an interval, not a crontab.",
    )
    beat = lab.start_beat(ready_timeout=lab.remaining())
    begun = time.time()

    def starts(tl) -> list[float]:
        return sorted(a.start for u in tl.task_ids(name) for a in tl.attempts(u))

    try:
        runs = lab.timeline.wait_for(lambda tl: s if len(s := starts(lab.timeline)) >= 2 else None, wait, "")
    except AssertionError:
        runs = None
    finally:
        beat.stop()
    if runs is None:
        seen = starts(lab.timeline)
        raise LabFailure(
            verdict(
                f"celery beat should send health_check every {INTERVAL:g} s to the worker.",
                expected=f"two runs within {wait:.0f} s of beat starting",
                observed=f"{len(seen)} run(s) in {time.time() - begun:.1f} s; the entry: {entries}",
                hint="check `celery -A tasks beat -l info` in the lab folder: does it send health_check?",
            )
        )
    gap = runs[1] - runs[0]
    expect(
        abs(gap - INTERVAL) <= 0.5,
        f"Beat should send health_check about every {INTERVAL:g} s.",
        expected=f"runs {INTERVAL:g} s apart (±0.5 s)",
        observed=f"two runs {gap:.2f} s apart; the entry: {entries}",
        hint=f"'schedule': timedelta(seconds={INTERVAL:g}) (or {INTERVAL:g}), in one entry only.",
    )
