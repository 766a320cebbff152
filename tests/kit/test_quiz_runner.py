"""`celerylab quiz` driven through its real terminal interface: scripted input in, transcript out."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import sys

import pytest

from celerylab.study.progress import Progress
from celerylab.study.quiz import Terminal, mastery_by_section, run_quiz
from celerylab.study.quizbank import MASTERED_BOX, is_mastered, record, select
from tests.kit.quizdrive import (
    SESSION,
    LiveProcess,
    plan_memory,
    read_memory,
    right_input,
    run_module,
    write_progress,
    wrong_input,
)


def first_of_kinds(bank, topic, kinds):
    return [next(q for q in bank if q.topic == topic and q.kind == kind) for kind in kinds]


@pytest.fixture
def planned(bank, quiz_home):
    """retries: a single-choice, a true/false, a multi-choice and a short answer, in that order."""
    order = first_of_kinds(bank, "retries", ["single", "truefalse", "multi", "short"])
    write_progress(quiz_home, plan_memory(order, [q for q in bank if q.topic == "retries"]))
    return order


def test_right_wrong_and_invalid_answers(planned, quiz_home):
    single, truefalse, multi, short = planned
    script = [
        "z",
        "",
        right_input(single),
        "maybe",
        wrong_input(truefalse),
        "a, z",
        right_input(multi),
        "",
        right_input(short),
    ]
    result = run_module(
        "celerylab.study.quiz", ["--topic", "retries", "--count", "4"], "\n".join(script) + "\n", quiz_home
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    asked = [line.split(" · ")[1] for line in out.splitlines() if line.startswith("Question ")]
    assert asked == [q.id for q in planned], "missed questions first, then by Leitner box"
    assert out.count("Type one letter, from a to d.") == 2  # "z", then an empty line
    assert "Type t (true) or f (false)." in out
    assert "Type the letters of every right choice" in out
    assert "Type a short answer" in out
    assert out.count("Right!") == 3
    assert f"Not quite. The statement is {'true' if truefalse.answer else 'false'}." in out
    assert "Read more: cheat sheet §" in out
    assert "Score: 3/4 (75%)" in out
    assert "\x1b[" not in out, "no colour codes when the output is piped"
    memory = read_memory(quiz_home)
    assert [memory[q.id]["box"] for q in planned] == [2, 1, 4, 5]
    assert all(memory[q.id]["last"] == SESSION for q in planned)


def test_end_of_input_stops_with_partial_score(planned, quiz_home):
    result = run_module(
        "celerylab.study.quiz",
        ["--topic", "retries", "--count", "4"],
        right_input(planned[0]) + "\n",
        quiz_home,
    )
    assert result.returncode == 0
    assert "Stopped early." in result.stdout
    assert "Score: 1/1 (100%) (4 planned)" in result.stdout
    memory = read_memory(quiz_home)
    assert (
        memory[planned[0].id]["box"] == 2 and memory[planned[1].id]["box"] == 2
    )  # the second was never answered


def test_ctrl_c_stops_with_partial_score(planned, quiz_home):
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    env.update(CELERYLAB_HOME=str(quiz_home))
    live = LiveProcess(
        [sys.executable, "-m", "celerylab.study.quiz", "--topic", "retries", "--count", "4"], env
    )
    live.wait_for("Your answer (a-")
    live.send(wrong_input(planned[0]))
    live.wait_for("True or false? (t/f): ")
    live.proc.send_signal(signal.SIGINT)
    assert live.proc.wait(timeout=30) == 0
    live.wait_for("Score: 0/1 (0%) (4 planned)")
    assert "Stopped early." in live.output
    assert "Traceback" not in live.proc.stderr.read()
    assert read_memory(quiz_home)[planned[0].id]["box"] == 1


def test_damaged_progress_file_is_set_aside(bank, quiz_home):
    (quiz_home / "progress.json").write_text("{this is not json")
    any_kind = "a\nt\n"  # "a" answers a choice or short question; a true/false one re-prompts, then "t"
    result = run_module("celerylab.study.quiz", ["--section", "11", "--count", "1"], any_kind, quiz_home)
    assert result.returncode == 0
    assert "progress file was damaged" in result.stderr
    assert "Score: " in result.stdout
    assert len(list(quiz_home.glob("progress.json.damaged-*"))) == 1
    assert len(read_memory(quiz_home)) == 1  # a fresh file, holding the one answer


def test_a_renamed_topic_keeps_its_memory_and_its_old_name(quiz_home):
    old = {"box": 3, "seen": 2, "correct": 2, "due": 0}
    write_progress(quiz_home, {"concurrency-003": old, "retries-001": {"box": 2}})
    memory = Progress.load(quiz_home / "progress.json").quiz
    assert memory["prefetch-003"] == old and "concurrency-003" not in memory and "retries-001" in memory
    result = run_module(
        "celerylab.study.quiz", ["--topic", "concurrency", "--count", "1"], "a\nt\n", quiz_home
    )
    assert result.returncode == 0 and "Unknown topic" not in result.stdout
    asked = re.search(r"Question 1/1 · (\S+)", result.stdout).group(1)
    assert asked.startswith("prefetch-")
    saved = read_memory(quiz_home)
    assert "concurrency-003" not in saved and {"prefetch-003", asked, "retries-001"} <= set(saved)


def test_unknown_topic_and_bad_count(quiz_home):
    result = run_module("celerylab.study.quiz", ["--topic", "retry"], "", quiz_home)
    assert result.returncode == 2
    assert "Unknown topic 'retry'" in result.stdout and "retries" in result.stdout
    out = io.StringIO()
    assert run_quiz(None, 0, stdin=io.StringIO(), stdout=out) == 2
    assert "at least 1" in out.getvalue()


def test_short_answer_feedback_names_missing_points(bank, tmp_path, monkeypatch):
    monkeypatch.setenv("CELERYLAB_HOME", str(tmp_path))
    q = next(q for q in bank if q.kind == "short")
    write_progress(tmp_path, plan_memory([q], [x for x in bank if x.topic == q.topic]))
    answers, transcript = tmp_path / "in.txt", tmp_path / "out.txt"
    answers.write_text("I am not sure\n")
    with answers.open() as stdin, transcript.open("w") as stdout:
        assert run_quiz([q.topic], 1, stdin=stdin, stdout=stdout) == 0
    out = " ".join(transcript.read_text().split())  # rich wraps long lines
    assert f"- {q.key_points[0].point} - missed" in out
    assert "I am not sure" in out, "piped answers are echoed so the transcript reads like a session"


def test_colour_only_on_a_terminal(monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    tty, pipe = FakeTTY(), io.StringIO()
    for stream in (tty, pipe):
        Terminal(io.StringIO(), stream).say("Right!", style="bold green")
    assert "\x1b[" in tty.getvalue()
    assert pipe.getvalue() == "Right!\n"


def test_spaced_repetition_order(bank):
    pool = [q for q in bank if q.topic == "canvas" and q.kind != "open"]
    missed, unseen, shaky, mastered_due, mastered_fresh = pool[:5]
    memory = {
        missed.id: {"box": 1, "last": 3},
        shaky.id: {"box": 2, "last": 2},  # due at 4
        mastered_due.id: {"box": MASTERED_BOX, "last": 0},  # due at 4
        mastered_fresh.id: {"box": MASTERED_BOX + 1, "last": 3},  # due at 11
    }
    memory.update({q.id: {"box": 5, "last": 3} for q in pool[5:]})  # due at 19
    order = select(pool[:5], memory, 5, random.Random(7))
    assert [q.id for q in order] == [missed.id, unseen.id, shaky.id, mastered_due.id, mastered_fresh.id]
    everything = select(pool, memory, len(pool), random.Random(7))
    assert everything[:2] == [missed, unseen], "missed first, then unseen before anything mastered"


def test_leitner_boxes_and_mastery(bank, tmp_path):
    progress = Progress(path=tmp_path / "progress.json")
    q = next(q for q in bank if q.section == 12 and q.kind != "open")
    before = mastery_by_section(progress, bank)[12]
    record(progress.quiz, q.id, True, 1)
    assert mastery_by_section(progress, bank)[12] == before, "one right answer is not mastery"
    record(progress.quiz, q.id, True, 2)
    assert mastery_by_section(progress, bank)[12] == (before[0] + 1, before[1])
    record(progress.quiz, q.id, False, 3)
    assert progress.quiz[q.id]["box"] == 1 and mastery_by_section(progress, bank)[12] == before
    progress.save()
    assert json.loads((tmp_path / "progress.json").read_text())["quiz"][q.id]["seen"] == 3
    totals = mastery_by_section(progress, bank)
    assert set(totals) == set(range(18)) and sum(total for _, total in totals.values()) == len(bank)


def test_edited_nonsense_in_memory_counts_as_unseen(bank):
    pool = [q for q in bank if q.topic == "brokers" and q.kind != "open"][:3]
    memory = {pool[0].id: {"box": "three", "last": None}, pool[1].id: "oops"}
    memory[pool[2].id] = {"box": 1, "last": 4}
    order = [q.id for q in select(pool, memory, 3, random.Random(1))]
    assert order[0] == pool[2].id and set(order[1:]) == {pool[0].id, pool[1].id}
    assert not is_mastered(memory, pool[0].id)
    assert record(memory, pool[1].id, True, 5) == {"box": 2, "seen": 1, "right": 1, "last": 5}
