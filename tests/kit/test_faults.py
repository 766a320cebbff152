"""celerylab.engine.faults without a worker: an armed fault fires in exactly one process, a barrier holds
each arriving process until the other one is there, and the log tells what was published and what ended."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from celerylab.engine import faults

FORK = multiprocessing.get_context("fork")


def _race_for_claim(folder: str, barrier, results) -> None:
    barrier.wait()  # every process tries at the same moment
    results.put(faults._claim(faults.Path(folder) / "crash--before--apply_order"))


def test_an_armed_crash_is_claimed_by_exactly_one_process(tmp_path):
    box = faults.Faults(tmp_path)
    box.crash("before", "apply_order")
    barrier, results = FORK.Barrier(6), FORK.Queue()
    procs = [FORK.Process(target=_race_for_claim, args=(str(tmp_path), barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    assert sorted(results.get(timeout=5) for _ in procs) == [False] * 5 + [True]


def _publish(folder: str, task: str, task_id: str) -> None:
    os.environ[faults.ENV] = folder
    faults._before(sender=task, body=((7, 3), {}, {}), headers={"id": task_id})
    faults._after(sender=task, headers={"id": task_id})
    os._exit(0)


def test_a_crash_before_publishing_kills_the_process_and_logs_an_unsent_message(tmp_path):
    box = faults.Faults(tmp_path)
    box.crash("before", "apply_order")
    proc = FORK.Process(target=_publish, args=(str(tmp_path), "tasks.apply_order", "first"))
    proc.start()
    proc.join(10)
    assert proc.exitcode == faults.EXIT_CODE
    (entry,) = box.published("apply_order")
    assert entry["args"] == [7, 3] and entry["sent"] is False and entry["bytes"] < 100
    proc = FORK.Process(target=_publish, args=(str(tmp_path), "tasks.apply_order", "second"))  # once only
    proc.start()
    proc.join(10)
    assert proc.exitcode == 0 and [e["sent"] for e in box.published("apply_order")] == [False, True]


def _arrive(folder: str, statement: str, results) -> None:
    os.environ[faults.ENV] = folder
    begun = time.monotonic()
    faults._barrier(statement)
    results.put(time.monotonic() - begun)


@pytest.mark.parametrize("parties", [1, 2])
def test_a_barrier_holds_the_first_process_until_the_second_arrives(tmp_path, parties):
    box = faults.Faults(tmp_path)
    box.barrier(["processed_messages"], parties=2)
    results = FORK.Queue()
    first = FORK.Process(target=_arrive, args=(str(tmp_path), "SELECT 1 FROM processed_messages", results))
    first.start()
    deadline = time.monotonic() + 10
    while not list(tmp_path.glob("arrived-*")) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the first process's arrival, bounded by the deadline above
    if parties == 2:
        second = FORK.Process(target=_arrive, args=(str(tmp_path), "INSERT INTO processed_messages", results))
        second.start()
        second.join(10)
    first.join(10)
    waits = sorted(results.get(timeout=5) for _ in range(parties))
    if parties == 2:
        assert waits[-1] < faults.BARRIER_WAIT  # released by the second arrival, not by the time-out
    else:
        assert waits[0] >= faults.BARRIER_WAIT * 0.9  # alone: held until the time-out


def test_a_statement_on_another_table_passes_at_once(tmp_path):
    box = faults.Faults(tmp_path)
    box.barrier(["processed_messages"], parties=2)
    results = FORK.Queue()
    proc = FORK.Process(target=_arrive, args=(str(tmp_path), "SELECT * FROM orders", results))
    proc.start()
    proc.join(10)
    assert results.get(timeout=5) < 0.5
