"""The `celerylab` command as a learner types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from celerylab import brokers
from tests.kit.conftest import ROOT, kit_processes, run_celerylab


def test_list_shows_the_labs_in_order(home):
    done = run_celerylab("list")
    assert done.returncode == 0 and "retries" in done.stdout and "celerylab grade" in done.stdout


def test_hints_are_revealed_one_tier_at_a_time(home):
    first = run_celerylab("hint", "retries").stdout
    assert "Hint 1/3" in first and "Hint 2/3" not in first
    run_celerylab("hint", "retries")
    third = run_celerylab("hint", "retries").stdout
    assert "Hint 3/3" in third and "last hint" in third
    assert "Hint 3/3" in run_celerylab("hint", "retries").stdout  # stays at the last tier
    saved = json.loads((home / "progress.json").read_text())
    assert saved["labs"]["retries"]["hints"] == 3


def test_progress_lists_labs_and_quiz_mastery(home):
    run_celerylab("hint", "retries")
    done = run_celerylab("progress")
    assert done.returncode == 0 and "retries" in done.stdout and "1/3" in done.stdout
    assert "quiz mastery" in done.stdout


def test_damaged_progress_is_set_aside_not_a_crash(home):
    home.mkdir(parents=True)
    (home / "progress.json").write_text("{not json")
    done = run_celerylab("progress")
    assert done.returncode == 0 and "damaged" in done.stderr
    assert list(home.glob("progress.json.damaged-*"))


def test_unknown_lab_and_broker_get_one_clear_line(home):
    done = run_celerylab("grade", "nosuchlab")
    assert done.returncode == 2 and "no lab named 'nosuchlab'" in done.stdout and "retries" in done.stdout
    done = run_celerylab("grade", "retries", "--broker", "kafka")
    assert (
        done.returncode == 2
        and "unknown broker" in done.stdout
        and "Traceback" not in done.stdout + done.stderr
    )


def test_doctor_reports_brokers_and_the_choice(home):
    done = run_celerylab("doctor")
    assert done.returncode == 0 and "would grade on" in done.stdout and "RabbitMQ" in done.stdout


def test_doctor_explains_what_to_do_when_the_chosen_broker_is_down(home):
    dead = f"redis://127.0.0.1:{brokers.free_port()}/0"
    done = run_celerylab("doctor", "--broker", "redis", env={"CELERYLAB_REDIS_URL": dead})
    assert done.returncode == 1 and "--broker embedded" in done.stdout.replace("\n", " ")


def test_grading_the_skeleton_records_progress(home, tmp_path, no_orphans):
    done = run_celerylab("grade", "retries", "-k", "first_try or client_error", "--report-dir", str(tmp_path))
    assert done.returncode == 0, (
        done.stdout
    )  # both of these pass on the skeleton: full marks for the selection
    # -k grades a subset: it is not recorded as the lab's score
    assert (
        "retries"
        not in json.loads(
            (home / "progress.json").read_text() if (home / "progress.json").exists() else '{"labs": {}}'
        )["labs"]
    )


def test_ctrl_c_during_a_grade_leaves_nothing_behind(home, no_orphans):
    """SIGINT to the whole foreground group, as a terminal's Ctrl-C does, in the middle of a grade."""
    grader = subprocess.Popen(
        [sys.executable, "-m", "celerylab.cli", "grade", "retries", "--solutions", "--broker", "embedded"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not kit_processes(no_orphans) or not (home / "logs" / "retries" / "w1.log").exists():
        assert time.monotonic() < deadline and grader.poll() is None, "the grade never started a worker"
        time.sleep(0.1)
    os.killpg(grader.pid, signal.SIGINT)
    out, _ = grader.communicate(timeout=60)
    assert grader.returncode != 0
    assert "Traceback" not in out


def test_a_machine_without_redis_grades_on_the_embedded_server(home, tmp_path, no_orphans):
    """The README's first command on a fresh machine: no broker answers, so the kit brings its own."""
    dead = f"redis://127.0.0.1:{brokers.free_port()}/0"
    done = run_celerylab(
        "grade",
        "retries",
        "-k",
        "first_try",
        "--report-dir",
        str(tmp_path),
        env={"CELERYLAB_REDIS_URL": dead, "CELERYLAB_BROKER_URL": ""},
    )
    report = json.loads((tmp_path / "retries.json").read_text())
    assert done.returncode == 0 and report["broker"].startswith("embedded: redis://127.0.0.1:")
    assert "valkey" in report["broker"]
