"""How grading treats broken learner code: one clear verdict per test, and the grade goes on."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from celerylab.grading.results import GradeReport, TestResult
from tests.kit.conftest import ROOT, run_celerylab

SKELETON = (ROOT / "labs" / "retries" / "tasks.py").read_text()


def grade_source(tmp_path, source: str, *options: str, env: dict | None = None) -> tuple[dict, str, float]:
    lab = tmp_path / "retries"
    lab.mkdir()
    (lab / "tasks.py").write_text(source)
    begun = time.monotonic()
    done = run_celerylab(
        "grade", "retries", "--target", str(lab), "--report-dir", str(tmp_path), *options, env=env
    )
    elapsed = time.monotonic() - begun
    assert done.returncode == 1, done.stdout + done.stderr
    return json.loads((tmp_path / "retries.json").read_text()), done.stdout, elapsed


def test_syntax_error_fails_every_test_with_the_line(tmp_path, home, no_orphans):
    report, out, elapsed = grade_source(
        tmp_path, SKELETON.replace("def fetch(self, url: str) -> dict:", "def fetch(self, url:")
    )
    assert len(report["tests"]) == 8 and report["score"] == 0
    assert all("cannot be loaded" in t["message"] and "line" in t["message"] for t in report["tests"])
    assert "Traceback" not in out
    assert elapsed < 30, "a module that cannot load should not start workers"


def test_crash_at_import_names_the_learners_line(tmp_path, home, no_orphans):
    report, _, _ = grade_source(tmp_path, SKELETON + "\nsettings = {}['missing']\n")
    message = report["tests"][0]["message"]
    assert "KeyError" in message and "settings = {}['missing']" in message


def test_import_that_never_ends_is_cut_off(tmp_path, home, no_orphans):
    report, _, elapsed = grade_source(
        tmp_path, SKELETON + "\nwhile True:\n    pass\n", env={"CELERYLAB_PROBE_TIMEOUT": "3"}
    )
    assert all("did not finish within 3 s" in t["message"] for t in report["tests"])
    assert elapsed < 30


def test_missing_task_says_what_was_found(tmp_path, home, no_orphans):
    report, _, _ = grade_source(tmp_path, SKELETON.replace("def fetch(", "def fetch_url("), "-k", "first_try")
    (test,) = report["tests"]
    assert "MISSING TASK" in test["message"] and "fetch_url" in test["message"]


def test_task_that_never_returns_hits_the_deadline_with_its_last_state(tmp_path, home, no_orphans):
    hung = SKELETON.replace("    resp = httpx.get(url, timeout=5)", "    while True:\n        pass")
    report, _, elapsed = grade_source(tmp_path, hung, "-k", "first_try")
    (test,) = report["tests"]
    assert test["status"] == "fail" and "Gave up waiting" in test["message"] and "STARTED" in test["message"]
    assert elapsed < 15 + 20


def test_report_round_trips_and_exports(tmp_path):
    report = GradeReport(
        lab="retries",
        target="labs/retries",
        broker="redis",
        tests=[
            TestResult(id="t::a", title="A", max_points=2, points=2, status="pass", backoff_wait=1.5),
            TestResult(id="t::b", title="B", max_points=1, points=0, status="fail", message="x" * 5000),
        ],
    )
    report.write(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema"] == "celerylab.results/1" and data["score"] == 2 and data["max_score"] == 3
    assert data["backoff_wait"] == 1.5 and len(data["tests"][1]["message"]) == 4000
    again = GradeReport.read(tmp_path / "r.json")
    assert again.score == 2 and not again.full_marks and again.tests[0].title == "A"
    assert report.to_gradescope() == {
        "score": 2,
        "tests": [
            {"name": "A", "score": 2, "max_score": 2, "output": "passed"},
            {"name": "B", "score": 0, "max_score": 1, "output": "x" * 5000},
        ],
    }


def test_a_report_of_another_schema_is_refused(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"schema": "celerylab.results/0"}))
    with pytest.raises(ValueError, match="celerylab.results/1"):
        GradeReport.read(tmp_path / "r.json")


def _alive_with(token: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if token in line and " Z" not in line]


def test_children_started_at_import_do_not_hold_up_the_verdict_or_survive(tmp_path, home, no_orphans):
    """A child in the same group, one in a new session and a forked daemon, then a raise: the real error
    within 5 s, and none of the three is left."""
    token = f"{300 + uuid.uuid4().int % 600}.{uuid.uuid4().int % 10**6}"
    source = (
        SKELETON
        + f"""
import os, subprocess, threading
subprocess.Popen(["sleep", "{token}"])
subprocess.Popen(["sleep", "{token}"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "{token}"])
    os._exit(0)
threading.Thread(target=lambda: __import__("time").sleep(600), daemon=False).start()
raise RuntimeError("the config server is down")
"""
    )
    report, out, elapsed = grade_source(
        tmp_path, source, "-k", "first_try", env={"CELERYLAB_PROBE_TIMEOUT": "60"}
    )
    (test,) = report["tests"]
    assert "RuntimeError: the config server is down" in test["message"], test["message"]
    # Waiting on the children's pipe would last the whole probe timeout (60 s); the verdict is taken when
    # printed (about 1 s after the probe starts on an idle machine, so 5 s measured from the probe).
    assert elapsed < 30, f"the verdict took {elapsed:.1f} s"
    assert not _alive_with(f"sleep {token}"), "a process the learner's import started survived the grade"


def test_a_daemon_started_by_a_task_is_gone_after_the_grade(tmp_path, home, no_orphans):
    token = f"{300 + uuid.uuid4().int % 600}.{uuid.uuid4().int % 10**6}"
    source = SKELETON.replace(
        "    resp = httpx.get(url, timeout=5)",
        f"""    import os, subprocess
    subprocess.Popen(["sleep", "{token}"], start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        os.execvp("sleep", ["sleep", "{token}"])
    resp = httpx.get(url, timeout=5)""",
    )
    grade_source_ok = run_celerylab(
        "grade",
        "retries",
        "--target",
        str(_write(tmp_path, source)),
        "-k",
        "first_try",
        "--report-dir",
        str(tmp_path),
    )
    assert "Score: 1/1" in grade_source_ok.stdout, grade_source_ok.stdout[-2000:]
    assert not _alive_with(f"sleep {token}"), "a process the learner's task started survived the grade"


def _write(tmp_path, source: str):
    path = tmp_path / "submission.py"
    path.write_text(source)
    return path


def test_a_single_file_is_graded_as_the_labs_tasks_py(tmp_path, home, no_orphans):
    path = _write(tmp_path, (ROOT / "solutions" / "retries" / "tasks.py").read_text())
    done = run_celerylab(
        "grade", "retries", "--target", str(path), "-k", "first_try or client", "--report-dir", str(tmp_path)
    )
    assert done.returncode == 0 and "Score: 2/2" in done.stdout, done.stdout[-2000:]


def test_workers_run_in_a_time_zone_that_is_not_utc(tmp_path, home, no_orphans):
    """So a naive datetime.now() is caught on every host; the offset is not a whole hour."""
    source = SKELETON.replace(
        "    resp = httpx.get(url, timeout=5)\n    resp.raise_for_status()\n    return resp.json()",
        "    import time\n    return {'tz': time.strftime('%z')}",
    )
    path = _write(tmp_path, source)
    done = run_celerylab(
        "grade", "retries", "--target", str(path), "-k", "first_try", "--report-dir", str(tmp_path)
    )
    report = json.loads((tmp_path / "retries.json").read_text())
    assert "+0545" in report["tests"][0]["message"], report["tests"][0]["message"]
    assert done.returncode == 1


def test_a_grader_error_keeps_its_name_however_deep_the_traceback():
    """A grader bug is reported with the error first; a deep traceback keeps only its end after that."""
    from celerylab.grading.plugin import _message

    def deep(n: int) -> None:
        if n == 0:
            raise ConnectionError("the broker went away")
        deep(n - 1)

    call = pytest.CallInfo.from_call(lambda: deep(200), when="setup")
    message = _message(call)
    assert message.splitlines()[0] == "the grader hit an unexpected ConnectionError: the broker went away"
    assert "raise ConnectionError" in message  # where it happened: the traceback's end
    assert len(message) < 3200
