"""celerylab.engine.faults without a worker: an armed fault fires in exactly one process, a barrier holds
each arriving process until the other one is there, and the log tells what was published and what met.

Child processes are spawned, not forked: a fork of this (threaded) pytest process can inherit a lock held
by another thread and hang."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

from celerylab.engine import faults

SPAWN = multiprocessing.get_context("spawn")


def test_an_armed_crash_is_claimed_by_exactly_one_caller(tmp_path):
    box = faults.Faults(tmp_path)
    armed = box.crash("before", "apply_order")
    start, wins = threading.Barrier(8), []

    def race() -> None:
        start.wait()  # every caller tries at the same moment
        wins.append(faults._claim(armed))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(wins) == [False] * 7 + [True] and not box.armed(armed)


def _publish(folder: str, task: str, task_id: str) -> None:
    os.environ[faults.ENV] = folder
    faults._before(sender=task, body=((7, 3), {}, {}), headers={"id": task_id})
    faults._after(sender=task, headers={"id": task_id})


def test_a_crash_before_publishing_kills_the_process_once_and_logs_an_unsent_message(tmp_path):
    box = faults.Faults(tmp_path)
    box.crash("before", "apply_order")
    for task_id, code in (("first", faults.EXIT_CODE), ("second", 0)):  # fired once only
        proc = SPAWN.Process(target=_publish, args=(str(tmp_path), "tasks.apply_order", task_id))
        proc.start()
        proc.join(60)
        assert proc.exitcode == code
    first, second = box.published("apply_order")
    assert first["args"] == [7, 3] and first["bytes"] < 100
    assert (first["sent"], second["sent"]) == (False, True)


def _insert(folder: str, statement: str) -> None:
    os.environ[faults.ENV] = folder
    faults._maybe_crash_at_insert(statement)


def test_a_crash_at_an_insert_fires_on_that_table_only_and_once(tmp_path):
    box = faults.Faults(tmp_path)
    armed = box.crash_at_insert("ledger")
    for statement, code in (
        ("INSERT INTO processed_messages (message_id) VALUES (?)", 0),  # another table: goes on
        ("SELECT amount_cents FROM ledger WHERE order_id = ?", 0),  # not an insert
        ('INSERT INTO "ledger" (order_id, amount_cents) VALUES (%(o)s, %(a)s)', faults.EXIT_CODE),
        ("INSERT INTO ledger (order_id, amount_cents) VALUES (?, ?)", 0),  # fired once already
    ):
        proc = SPAWN.Process(target=_insert, args=(str(tmp_path), statement))
        proc.start()
        proc.join(60)
        assert proc.exitcode == code, statement
    assert not box.armed(armed)


def _arrive(folder: str, statement: str) -> None:
    os.environ[faults.ENV] = folder
    faults._barrier(statement, "after")  # a read arrives once answered


def test_a_barrier_holds_the_first_process_until_the_second_arrives(tmp_path, monkeypatch):
    box = faults.Faults(tmp_path)
    round_id = box.barrier(["processed_messages"], parties=2, wait=60)
    first = SPAWN.Process(target=_arrive, args=(str(tmp_path), "SELECT 1 FROM processed_messages"))
    first.start()
    assert faults._wait_for(lambda: list(tmp_path.glob("arrived-*")), 60), "the first process never arrived"
    assert first.exitcode is None  # held there
    monkeypatch.setenv(faults.ENV, str(tmp_path))
    begun = time.monotonic()
    faults._barrier("INSERT INTO processed_messages (message_id) VALUES (1)", "after")  # a write: not here
    assert not box.barrier_met(round_id) and first.exitcode is None
    faults._barrier("INSERT INTO processed_messages (message_id) VALUES (1)", "before")  # both go on
    assert time.monotonic() - begun < 5
    first.join(30)
    assert first.exitcode == 0
    met = [e["met"] for e in box._entries() if e.get("event") == "barrier" and e["round"] == round_id]
    assert met == [True, True] and box.barrier_met(round_id)


def test_a_process_alone_at_a_barrier_goes_on_after_its_wait(tmp_path, monkeypatch):
    box = faults.Faults(tmp_path)
    round_id = box.barrier(["processed_messages"], parties=2, wait=0.3)
    monkeypatch.setenv(faults.ENV, str(tmp_path))
    begun = time.monotonic()
    faults._barrier("SELECT * FROM processed_messages", "before")  # a read passes before it runs...
    assert time.monotonic() - begun < 0.2 and not list(tmp_path.glob("arrived-*"))
    faults._barrier("SELECT * FROM processed_messages", "after")  # ...and waits once answered
    assert time.monotonic() - begun >= 0.3 and not box.barrier_met(round_id)
    begun = time.monotonic()
    faults._barrier("SELECT * FROM processed_messages", "after")  # one arrival per process and round
    assert time.monotonic() - begun < 0.2


def test_a_statement_on_another_table_passes_at_once(tmp_path, monkeypatch):
    faults.Faults(tmp_path).barrier(["processed_messages"], parties=2, wait=30)
    monkeypatch.setenv(faults.ENV, str(tmp_path))
    begun = time.monotonic()
    faults._barrier("SELECT * FROM orders", "after")
    faults._barrier("INSERT INTO orders (customer) VALUES ('x')", "before")
    assert time.monotonic() - begun < 0.5 and not list(tmp_path.glob("arrived-*"))


def test_a_line_still_being_written_is_left_out(tmp_path):
    box = faults.Faults(tmp_path)
    (tmp_path / faults.LOG).write_text('{"event": "postrun", "id": "a", "state": "SUCCESS"}\n{"event": "post')
    assert box.ended("a") == {"event": "postrun", "id": "a", "state": "SUCCESS"} and box.ended("b") is None
