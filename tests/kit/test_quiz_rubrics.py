"""Every written-answer question's rubric reads answers: its own rubric_tests (right answers in other
words pass; negated and vague ones fail) and its model answer, all through the same scorer the quiz,
the interview and `celerylab quiz score` use."""

from __future__ import annotations

import pytest

from celerylab.study.quiz import load_bank
from celerylab.study.quizbank import Question

BANK = load_bank()
WRITTEN = [q for q in BANK if q.kind in ("short", "open")]


def _explain(q: Question, answer: str) -> str:
    lines = [f"{q.id} (pass mark {q.min_points}/{len(q.key_points)}): {answer!r}"]
    for r in q.assess(answer):
        lines.append(f"  {'+' if r.found else '-'} {r.point}: {r.words or r.negated or 'not mentioned'}")
    return "\n".join(lines)


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for q in WRITTEN:
        if q.model_answer:
            cases.append((q.id, "model", q.model_answer))
        for kind, answers in q.rubric_tests.items():
            cases += [(q.id, kind, a) for a in answers]
    return cases


CASES = _cases()


@pytest.mark.parametrize(
    ("qid", "kind", "answer"), CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)]
)
def test_rubric_reads_the_answer(qid, kind, answer):
    q = next(q for q in WRITTEN if q.id == qid)
    should_pass = kind in ("pass", "model")
    assert q.passes_text(answer) == should_pass, _explain(q, answer)


def test_every_written_question_has_its_rubric_tests():
    thin = {
        q.id: {k: len(v) for k, v in q.rubric_tests.items()}
        for q in WRITTEN
        if len(q.rubric_tests.get("pass", ())) < 2
        or not q.rubric_tests.get("negated")
        or not q.rubric_tests.get("vague")
    }
    assert not thin, thin


def test_right_answers_are_not_the_model_answer():
    copies = [q.id for q in WRITTEN for a in q.rubric_tests["pass"] if q.model_answer and a in q.model_answer]
    assert not copies, copies


def test_negated_answers_name_the_points_they_deny():
    """A 'negated' case must fail because of its denials, not because it mentions nothing."""
    weak = [
        q.id for q in WRITTEN for a in q.rubric_tests["negated"] if not any(r.negated for r in q.assess(a))
    ]
    assert not weak, weak
