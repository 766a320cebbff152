"""The `celerylab` command as a learner types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from celerylab import cli
from celerylab.engine import brokers
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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_by_a_finaliser_still_stops_the_grade():
    """CI once saw a SIGINT land in a redis pool's __del__: Python printed "Exception ignored" and the grade
    ran on to full marks and exit 0. The handler remembers it; the next test's setup raises it again."""

    class Finaliser:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs here, inside __del__, where Python swallows what it raises

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (not under nohup)
    try:
        interrupt = cli._Interrupt()
        with interrupt.armed():
            Finaliser()  # collected at once: the interrupt is swallowed
            assert interrupt.seen
            with pytest.raises(KeyboardInterrupt):
                interrupt.pytest_runtest_setup(None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # lives only as long as the run
    finally:
        signal.signal(signal.SIGINT, before)


def _ctrl_c_live() -> None:
    """The grader starts with Ctrl-C live, as from a terminal, even when these tests run with SIGINT ignored
    (under nohup or as a background job, whose children inherit the ignore and rightly keep it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ctrl_c_a_grade(args: list[str], started: Callable[[], bool], not_started: str) -> str:
    """Grade, and once ``started()`` holds, Ctrl-C the whole foreground group as a terminal does: the grade
    must say it was interrupted and exit 130. Returns what it printed."""
    grader = subprocess.Popen(
        [sys.executable, "-m", "celerylab.cli", "grade", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_ctrl_c_live,
    )
    deadline = time.monotonic() + 60
    while not started():
        assert time.monotonic() < deadline and grader.poll() is None, not_started
        time.sleep(0.05)
    os.killpg(grader.pid, signal.SIGINT)
    out, _ = grader.communicate(timeout=60)
    assert grader.returncode == 130, out[-2000:]
    assert "grade interrupted; every worker, beat and broker it started is stopped" in out
    return out


def test_ctrl_c_during_a_grade_leaves_nothing_behind(home, no_orphans):
    """SIGINT to the whole foreground group, as a terminal's Ctrl-C does, in the middle of a grade."""
    out = _ctrl_c_a_grade(
        ["retries", "--solutions", "--broker", "embedded"],
        lambda: bool(kit_processes(no_orphans)) and any((home / "logs" / "retries").rglob("w1.log")),
        "the grade never started a worker",
    )
    for noise in ("Traceback", "KeyboardInterrupt", "no tests ran", "exit code"):
        assert noise not in out, out[-2000:]


def test_ctrl_c_during_a_shutdown_test_leaves_nothing_behind(home, no_orphans):
    """Ctrl-C while a worker of the shutdown lab is in its soft shutdown and a rescue worker starts."""
    logs = home / "logs" / "shutdown"  # each shard's in a folder of its own

    def rescue_started() -> bool:  # rescue starts right after the SIGQUIT
        return any(logs.rglob("rescue.log"))

    out = _ctrl_c_a_grade(["shutdown", "--solutions"], rescue_started, "the grade never sent its SIGQUIT")
    assert "Traceback" not in out, out[-2000:]


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


def test_repeat_shows_each_tests_pass_rate(home, no_orphans):
    done = run_celerylab(
        "grade", "retries", "--solutions", "-k", "first_try or client_error", "--repeat", "2"
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "pass rate over 2 grades" in done.stdout and done.stdout.count("2/2") == 2, done.stdout


def test_quiz_score_explains_a_passing_answer(home):
    answer = (
        "Broker is RabbitMQ. Every task can safely execute more than once, and is re‑attempted with "
        "exponentially growing, randomized delays. Each has a 30 s soft deadline and a 60 s kill deadline. "
        "Reports have their own queue; CELERY_ACKS_LATE on payments; Grafana shows queue depth; arguments "
        "are primary keys."
    )
    done = run_celerylab("quiz", "score", "interview_template-001", input=answer)
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join(done.stdout.split())  # rich wraps long lines
    assert 'found in: "more than once"' in out
    assert 'found in: "re‑attempted"' in out and 'found in: "CELERY_ACKS_LATE"' in out
    assert "Score: 8/8 key points (pass mark 6): pass." in out


def test_quiz_score_fails_denials_and_vague_answers(home):
    denied = "Idempotency? we skip it. Retries: never. Time limits: none. Redis, and Flower."
    done = run_celerylab("quiz", "score", "interview_template-001", input=denied)
    out = " ".join(done.stdout.split())
    assert done.returncode == 1
    assert 'missed: negated in "Retries: never"' in out and "Score: 2/8" in out
    vague = "A message goes to a queue, a worker runs it, and I check its state."
    done = run_celerylab("quiz", "score", "architecture-009", input=vague)
    assert done.returncode == 1 and "Score: 0/6" in " ".join(done.stdout.split())


def test_quiz_score_unknown_id_and_choice_questions(home):
    done = run_celerylab("quiz", "score", "nope-001", input="anything")
    assert done.returncode == 2 and "No question 'nope-001'" in done.stdout
    assert run_celerylab("quiz", "score", "architecture-001", input="a\n").returncode == 0
    assert run_celerylab("quiz", "score", "architecture-001", input="b\n").returncode == 1
    helped = run_celerylab("quiz", "score", "--help")
    assert helped.returncode == 0 and "Exit 0 when the answer passes" in " ".join(helped.stdout.split())
    assert run_celerylab("quiz", "--help").stdout.count("score") >= 1
