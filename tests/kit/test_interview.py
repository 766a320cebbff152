"""`celerylab interview`: typed multi-line answers, scored against the rubric, timed without threads."""

from __future__ import annotations

import io
import itertools

from celerylab.study.interview import fmt_duration, run_interview
from celerylab.study.progress import Progress
from tests.kit.quizdrive import plan_memory, read_memory, run_module, write_progress

PRODUCTION = "interview_template-001"
GOOD = """We run Celery on RabbitMQ; tasks are small and idempotent.
Transient errors are retried with exponential backoff and jitter;
every task has soft and hard time limits.
Heavy work is routed to a dedicated queue; critical tasks use acks_late.
We monitor queue length and failures with Flower and Prometheus, and pass IDs, not objects.
"""


def ticking(*times: float):
    """A fake clock returning ``times`` in order: question shown, answer finished, ..."""
    values = itertools.chain(times)
    return lambda: next(values)


def test_production_question_end_to_end(quiz_home):
    script = "\n" + GOOD + "\n"  # an empty first line is re-prompted, the final empty line ends the answer
    result = run_module(
        "celerylab.study.interview", ["--question", PRODUCTION, "--time-limit", "600"], script, quiz_home
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "Time allowed: 10:00." in out
    assert "Type your answer first" in out
    assert "Key points: 8/8 (pass mark 6): pass." in out
    assert "A model answer:" in out
    assert "Check yourself against the model answer" in out
    assert "Confirmed: 8/8 (pass mark 6): pass." in out
    assert "Interview over: 1/1 answers passed; key points 8/8; 0 late." in out
    assert "\x1b[" not in out
    assert read_memory(quiz_home)[PRODUCTION]["box"] == 2


def test_weak_answer_shows_points_missed(quiz_home):
    script = "We use Celery with Redis.\nIt works.\n\n"
    result = run_module("celerylab.study.interview", ["--question", PRODUCTION], script, quiz_home)
    out = result.stdout
    assert "Time allowed: 2:00." in out
    assert "Key points: 1/8 (pass mark 6): not yet." in out
    assert '  + 1. Broker choice and why (Redis or RabbitMQ) - found in: "Redis"' in out
    assert "  - 8. Small payloads (pass IDs, not objects or blobs) - missed" in out
    assert read_memory(quiz_home)[PRODUCTION]["box"] == 1


def test_late_answer_is_scored_but_never_passes(bank, tmp_path):
    progress = Progress(path=tmp_path / "progress.json")
    out = io.StringIO()
    code = run_interview(
        1, 120.0, PRODUCTION, io.StringIO(GOOD + "\n"), out, clock=ticking(1000.0, 1151.0), progress=progress
    )
    assert code == 0
    text = out.getvalue()
    assert "Answered in 2:31: LATE (limit 2:00)." in text
    assert "Key points: 8/8 (pass mark 6): not yet." in text
    assert "Interview over: 0/1 answers passed; key points 8/8; 1 late." in text
    assert progress.quiz[PRODUCTION]["box"] == 1


def test_on_time_answer_by_the_same_clock_passes(tmp_path):
    progress = Progress(path=tmp_path / "progress.json")
    out = io.StringIO()
    run_interview(
        1, 120.0, PRODUCTION, io.StringIO(GOOD + "\n"), out, clock=ticking(0.0, 119.0), progress=progress
    )
    assert "Answered in 1:59 (limit 2:00)." in out.getvalue()
    assert progress.quiz[PRODUCTION]["box"] == 2


def test_missed_question_comes_back_first_and_eof_stops(bank, tmp_path):
    opens = [q for q in bank if q.kind == "open"]
    missed = opens[-1]
    progress = Progress(path=tmp_path / "progress.json")
    progress.quiz.update(plan_memory([missed], []))
    for q in opens[:-1]:
        progress.quiz[q.id] = {"box": 2, "last": 9}  # due at 11; the planned session is 10
    out = io.StringIO()
    assert (
        run_interview(2, 60, None, io.StringIO("Idempotency keys everywhere.\n"), out, progress=progress) == 0
    )
    text = out.getvalue()
    assert f"Question 1/2 · {missed.id}" in text
    assert "Stopped early." in text and "Interview over: 0/1 answers passed" in text
    assert progress.quiz[missed.id]["last"] == 10


def test_bad_options(quiz_home, bank):
    result = run_module("celerylab.study.interview", ["--question", "nope-001"], "", quiz_home)
    assert result.returncode == 2 and PRODUCTION in result.stdout
    quiz_id = next(q.id for q in bank if q.kind == "single")
    result = run_module("celerylab.study.interview", ["--question", quiz_id], "", quiz_home)
    assert result.returncode == 2 and "celerylab quiz" in result.stdout
    assert run_interview(0, 60, stdin=io.StringIO(), stdout=io.StringIO()) == 2
    assert run_interview(1, 0, stdin=io.StringIO(), stdout=io.StringIO()) == 2


def test_progress_home_is_used_by_default(quiz_home, monkeypatch):
    monkeypatch.setenv("CELERYLAB_HOME", str(quiz_home))
    write_progress(quiz_home, {})
    run_interview(1, 60, PRODUCTION, io.StringIO("Redis.\n\n"), io.StringIO(), clock=ticking(0.0, 5.0))
    assert read_memory(quiz_home)[PRODUCTION]["seen"] == 1


def test_fmt_duration():
    assert [fmt_duration(s) for s in (0, 59.4, 60, 125.4, 3600)] == ["0:00", "0:59", "1:00", "2:05", "60:00"]


def test_self_assessment_corrections_decide_the_memory(quiz_home):
    """The candidate flips points the scorer got wrong; the confirmed result is what is remembered."""
    # Found: Redis (1), idempotent (2), retries (3), time limits (4) - one short of the pass mark.
    answer = "Redis broker; idempotent tasks; retries with backoff; soft and hard time limits.\n"
    # "9" is out of range (re-prompted); "6 8" flips two points the candidate did make, in other words.
    script = answer + "\n9\n6, 8\n\n"
    result = run_module(
        "celerylab.study.interview", ["--question", PRODUCTION, "--time-limit", "600"], script, quiz_home
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "Key points: 4/8 (pass mark 6): not yet." in out
    assert "Type point numbers from 1 to 8, or Enter to confirm." in out
    assert "  + 6. acks_late for crash safety" in out and "Your points: 6/8 (pass mark 6): pass." in out
    assert "Confirmed: 6/8 (pass mark 6): pass." in out
    assert "Interview over: 1/1 answers passed; key points 6/8; 0 late." in out
    assert read_memory(quiz_home)[PRODUCTION]["box"] == 2


def test_self_assessment_can_take_a_point_away(tmp_path):
    progress = Progress(path=tmp_path / "progress.json")
    out = io.StringIO()
    script = GOOD + "\n" + "1 2 3\n" + "\n"  # the candidate says three of the found points were luck
    run_interview(1, 600, PRODUCTION, io.StringIO(script), out, clock=ticking(0.0, 30.0), progress=progress)
    text = out.getvalue()
    assert "Key points: 8/8 (pass mark 6): pass." in text
    assert "Confirmed: 5/8 (pass mark 6): not yet." in text
    assert progress.quiz[PRODUCTION]["box"] == 1
