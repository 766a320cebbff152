"""The notebook quiz widget builds, scores through its programmatic path, and the 00 notebook runs."""

from __future__ import annotations

import html
import os
import random
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from celerylab.study.progress import Progress
from celerylab.study.quizwidget import QuizWidget, markdown
from tests.kit.quizdrive import ROOT, right_input, trust_bank, wrong_input

NOTEBOOK = ROOT / "notebooks" / "00_interview_prep.ipynb"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CELERYLAB_HOME", str(tmp_path))
    trust_bank(tmp_path)
    return tmp_path


def widget_answer(q, typed: str):
    """The terminal input, as the value a notebook user would pick in the widget."""
    if q.kind == "truefalse":
        return typed == "t"
    if q.kind == "multi":
        return typed.split()
    return typed if q.kind == "short" else "abcdef".index(typed)


def test_builds_and_shows_the_first_question(home):
    quiz = QuizWidget(topic="canvas", count=3, rng=random.Random(3))
    assert len(quiz.questions) == 3 and all(q.topic == "canvas" for q in quiz.questions)
    assert "Question 1/3" in quiz.header.value and quiz.current.id in quiz.header.value
    assert quiz.inputs.children and not quiz.check_button.disabled and quiz.next_button.disabled
    assert "application/vnd.jupyter.widget-view+json" in quiz._repr_mimebundle_()


def test_every_kind_scores_right_and_wrong(home):
    progress = Progress(path=home / "progress.json")
    quiz = QuizWidget(topic="retries", count=50, progress=progress, rng=random.Random(5))
    kinds = {q.kind for q in quiz.questions}
    assert kinds == {"single", "multi", "truefalse", "short", "predict"}
    expected_right = 0
    for number, q in enumerate(quiz.questions):
        right = number % 2 == 0
        quiz.answer(widget_answer(q, right_input(q) if right else wrong_input(q)))
        assert quiz.check() is right, q.id
        expected_right += right
        assert ("Right!" in quiz.feedback.value) is right
        assert markdown(q.explanation) in quiz.feedback.value
        assert quiz.check_button.disabled and not quiz.next_button.disabled
        quiz.next()
    assert quiz.current is None and quiz.check() is None
    assert quiz.score.value == f"Score: {expected_right}/{len(quiz.questions)} - done"
    saved = Progress.load(home / "progress.json").quiz
    assert {q.id for q in quiz.questions} == set(saved)
    assert saved[quiz.questions[1].id]["box"] == 1 and saved[quiz.questions[0].id]["box"] == 2


def test_check_without_an_answer_asks_for_one_in_the_widgets_terms(home):
    """The terminal says "Type one letter, from a to d"; a widget has buttons, boxes and a text field."""
    quiz = QuizWidget(topic="retries", count=50, remember=False, rng=random.Random(5))
    asked = {}
    while quiz.current is not None:
        if quiz.current.kind not in asked:
            assert quiz.check() is None and not quiz.check_button.disabled
            asked[quiz.current.kind] = html.unescape(quiz.feedback.value)
        quiz.next()
    assert set(asked) == {"single", "multi", "truefalse", "short", "predict"}
    assert not any("Type" in said for said in asked.values()), asked
    assert "Pick one of the letters" in asked["single"] and "Tick every right letter" in asked["multi"]
    assert "True or False" in asked["truefalse"] and "Write a short answer" in asked["short"]
    assert quiz.score.value == "Score: 0/0 - done"
    assert not (home / "progress.json").exists()


def test_markdown_in_questions_and_explanations_is_rendered(home):
    """The bank writes `acks_late` and *emphasis*: the widget shows code and emphasis, not backticks."""
    quiz = QuizWidget(topic="first_task", count=50, remember=False)
    with_code = [q for q in quiz.questions if "`" in q.prompt]
    assert with_code, "the topic has a question with `code` in its prompt"
    while quiz.current is not with_code[0]:
        quiz.next()
    assert "<code>" in quiz.prompt.value and "`" not in quiz.prompt.value
    quiz.answer(0)
    quiz.check()
    assert "<code>" in quiz.feedback.value or "`" not in quiz.current.explanation
    assert markdown("a `b` <i>c</i>") == "<p>a <code>b</code> &lt;i&gt;c&lt;/i&gt;</p>\n"  # raw HTML is text


def test_the_finished_quiz_says_where_the_open_questions_are(home):
    quiz = QuizWidget(topic="scheduling", count=1, remember=False)
    assert len(quiz.open_questions) == 2 and all(q.kind == "open" for q in quiz.open_questions)
    quiz.next()
    assert "celerylab interview --question scheduling-" in quiz.prompt.value
    assert all(q.id in quiz.prompt.value for q in quiz.open_questions)
    assert QuizWidget(topic="acks", count=1, remember=False).open_questions == []  # acks has none


def test_sections_and_unknown_topic(home):
    quiz = QuizWidget(sections=[0], count=4)
    assert {q.section for q in quiz.questions} == {0}
    with pytest.raises(ValueError, match="Unknown topic 'nope'"):
        QuizWidget(topic="nope")


def test_interview_prep_notebook_runs_headless(home, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(NOTEBOOK.parent)}}
    NotebookClient(nb, timeout=120, kernel_name="python3", resources=resources).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    data = [o.get("data", {}) for o in outputs]
    assert any("application/vnd.jupyter.widget-view+json" in d for d in data), "the quiz widget is displayed"
    assert any("image/png" in d for d in data), "the mastery chart is drawn"


def test_short_answer_feedback_shows_the_evidence(home):
    quiz = QuizWidget(topic="routing", count=50, remember=False)
    while quiz.current is not None and quiz.current.id != "routing-007":
        quiz.next()
    quiz.answer("Not task_default_queue; use task_routes.")
    assert quiz.check() is False
    assert "negated in “Not task_default_queue”" in quiz.feedback.value
    again = QuizWidget(topic="routing", count=50, remember=False)
    while again.current.id != "routing-007":
        again.next()
    again.answer("CELERY_DEFAULT_QUEUE")
    assert again.check() is True and "found in: “CELERY_DEFAULT_QUEUE”" in again.feedback.value
