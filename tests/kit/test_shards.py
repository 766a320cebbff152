"""A lab's tests side by side (celerylab.grading.shards): the same verdicts, in the same order, as one after
the other; a shard that dies still gives each of its tests a verdict; groups follow the markers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from celerylab.grading import shards
from tests.kit.conftest import ROOT, run_celerylab


class FakeItem(SimpleNamespace):
    def get_closest_marker(self, name: str):
        return self.marks.get(name)


def item(module: str, together: str | None = None, deadline: float = 30.0) -> FakeItem:
    marks = {"together": SimpleNamespace(args=(together,))} if together else {}
    return FakeItem(fspath=module, marks=marks, deadline=deadline)


def test_tests_that_share_a_scenario_form_one_group_and_the_heaviest_start_first():
    items = [
        item("a.py", deadline=10),
        item("a.py", "crash", deadline=20),
        item("a.py", deadline=30),
        item("a.py", "crash", deadline=20),
        item("b.py", "crash", deadline=15),
    ]
    assert shards.plan(items, lambda i: i.deadline) == [[1, 3], [2], [4], [0]]  # a name is per module


def grade(lab: str, target: Path | str, out: Path, *options: str, env: dict | None = None):
    done = run_celerylab("grade", lab, "--target", str(target), "--report-dir", str(out), *options, env=env)
    return done, json.loads((out / f"{lab}.json").read_text())


def grade_hidden(tmp_path: Path, what: str, source: str, *options: str, env: dict | None = None):
    """Grade the first_task solution with only the hidden tests ``source`` (``test_first_task__<what>.py``,
    whose tests are named ``test_<what>...``): the kit's own scenarios, run as a grade runs a lab's."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / f"test_first_task__{what}.py").write_text(source)
    return run_celerylab(
        "grade",
        "first_task",
        "--solutions",
        "--extra-tests",
        str(hidden),
        "-k",
        f"test_{what}",
        "--report-dir",
        str(tmp_path),
        *options,
        env=env,
    )


def test_a_side_by_side_grade_reads_as_a_serial_one(tmp_path, home, no_orphans):
    """The skeleton (verdicts of every kind) graded both ways: same tests, order, statuses and messages."""
    serial_done, serial = grade("first_task", "labs", tmp_path / "serial", env={shards.SERIAL_ENV: "1"})
    sharded_done, sharded = grade("first_task", "labs", tmp_path / "sharded")
    assert serial_done.returncode == sharded_done.returncode == 1
    assert sharded["phases"].get("shards", 0) > 1 and "shards" not in serial["phases"]
    assert [t["id"] for t in sharded["tests"]] == [t["id"] for t in serial["tests"]]

    def verdicts(report: dict) -> list[tuple[str, str]]:  # the same words, whatever the task ids
        return [(t["status"], re.sub(r"[0-9a-f-]{8,}", "ID", t["message"])) for t in report["tests"]]

    assert verdicts(sharded) == verdicts(serial)
    table = [
        line for line in sharded_done.stdout.splitlines() if line.startswith("  ✓") or line.startswith("  ✗")
    ]
    assert table == [
        line for line in serial_done.stdout.splitlines() if line.startswith("  ✓") or line.startswith("  ✗")
    ]


@pytest.mark.parametrize("shards_at_once", ["1", "3"])
def test_a_shard_that_dies_gives_its_test_a_verdict_and_the_grade_goes_on(
    tmp_path, home, no_orphans, shards_at_once
):
    """The learner's status() ends the grader's own process (it runs there, on the grader's side); a spare
    shard takes the tests left (with one shard at a time, always: its pipe once reused a number of the dead
    shard's, which it closed, and its tests ended with exit code 70)."""
    source = (ROOT / "solutions" / "first_task" / "tasks.py").read_text()
    source = source.replace(
        "def status(task_id: str) -> dict[str, Any]:\n",
        "def status(task_id: str) -> dict[str, Any]:\n    import os\n    os._exit(7)\n",
    )
    submission = tmp_path / "first_task"
    submission.mkdir()
    (submission / "tasks.py").write_text(source)
    done, report = grade("first_task", submission, tmp_path, env={"CELERYLAB_SHARDS": shards_at_once})
    assert done.returncode == 1, done.stdout[-3000:]
    verdicts = {t["id"].rsplit("::", 1)[-1]: t for t in report["tests"]}
    assert len(verdicts) == 9
    dead = verdicts.pop("test_status_reads_state_and_ready")
    assert dead["status"] == "fail" and "ended before it finished (exit code 7)" in dead["message"]
    assert all(t["status"] == "pass" for t in verdicts.values()), [
        (t["id"], t["status"], t["message"]) for t in verdicts.values()
    ]
    assert "Traceback" not in done.stdout


@pytest.mark.parametrize("option", ["--serial", "-k"])
def test_serial_and_selected_grades_still_work(tmp_path, home, no_orphans, option):
    args = ["--serial"] if option == "--serial" else ["-k", "countdown or multiply"]
    done = run_celerylab("grade", "first_task", "--solutions", "--report-dir", str(tmp_path), *args)
    report = json.loads((tmp_path / "first_task.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:]
    assert len(report["tests"]) == (9 if option == "--serial" else 2)


SESSIONS = """
import os

import pytest


def note(lab, what):
    with open(os.environ["SESSIONS_LOG"], "a") as log:
        log.write(f"{what} {lab.session.ns.name} {lab.worker('w1').pid}\\n")


@pytest.mark.deadline(40)
def test_sessions_first_leaves_nothing(lab):
    lab.worker("w1")
    lab.wait(lab.send("add", 1, 2))
    note(lab, "first")


@pytest.mark.deadline(30)
def test_sessions_second_leaves_a_message_nobody_takes(lab):
    lab.send("add", 1, 2, queue=lab.ns.queue_name("nobody"))
    note(lab, "second")


@pytest.mark.deadline(20)
def test_sessions_third(lab):
    note(lab, "third")
"""


@pytest.mark.parametrize("mode", ["serial", "one shard"])
def test_a_group_that_leaves_work_behind_ends_its_session_a_clean_one_shares_it(
    tmp_path, home, no_orphans, mode
):
    """Three tests in a row (one shard, or serial: longest deadline first): the first leaves nothing, so the
    second runs on its session, with a worker of its own; the second leaves a message on the broker, so the
    third gets a fresh session."""
    log = tmp_path / "sessions.log"
    env = {
        "SESSIONS_LOG": str(log),
        "CELERYLAB_SHARDS": "1",
        **({shards.SERIAL_ENV: "1"} if mode == "serial" else {}),
    }
    done = grade_hidden(tmp_path, "sessions", SESSIONS, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in log.read_text().splitlines()}
    assert list(rows) == ["first", "second", "third"]
    (first, first_worker), (second, second_worker), (third, _) = rows.values()
    assert first == second != third
    assert first_worker != second_worker  # the session, not the worker: no pool process's history is shared
    report = json.loads((tmp_path / "first_task.json").read_text())
    assert report["phases"]["sessions"] == 2


ZYGOTE = """
import os
from pathlib import Path

import pytest


@pytest.mark.parametrize("n", range(3))
def test_zygote_worker(lab, n):
    worker = lab.start_worker(f"z{n}")
    parent = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    with open(os.environ["ZYGOTE_LOG"], "a") as log:
        log.write(f"{os.getpid()} {parent}\\n")
"""


def test_every_shard_forks_its_workers_from_the_zygote_the_grade_launched(tmp_path, home, no_orphans):
    """Three tests, one per shard: each shard's worker is a child of the one zygote launched as the grade
    began (not of a zygote each shard forks for itself, which costs every shard its own start)."""
    log = tmp_path / "zygote.log"
    done = grade_hidden(tmp_path, "zygote", ZYGOTE, env={"ZYGOTE_LOG": str(log), "CELERYLAB_SHARDS": "3"})
    assert done.returncode == 0, done.stdout[-3000:]
    rows = [line.split() for line in log.read_text().splitlines()]
    shard_pids, parents = {row[0] for row in rows}, {row[1] for row in rows}
    assert len(rows) == 3 and len(shard_pids) == 3, rows
    assert len(parents) == 1 and not parents & shard_pids, rows


EXCLUSIVE = """
import pytest


def test_exclusive_beside(lab):
    lab.worker("w1")
    assert lab.result(lab.send("add", 2, 3)) == 5


@pytest.mark.exclusive
def test_exclusive_alone(lab):
    lab.worker("w1")
    assert lab.result(lab.send("add", 2, 3)) == 5
"""


def test_an_exclusive_test_runs_in_the_main_process_with_the_probes_verdict(tmp_path, home, no_orphans):
    """On the embedded broker an exclusive test runs after the shards, in the main process: its session
    takes the import probe's verdict from there (it once read a pipe only shards have)."""
    done = grade_hidden(tmp_path, "exclusive", EXCLUSIVE, "--broker", "embedded")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Score: 2/2" in done.stdout
