"""The rules celerylab.study.answers applies to a written answer, one rule per test (see its docstring)."""

from __future__ import annotations

import pytest

from celerylab.study.answers import GENERIC, assess, synonym_problems, tokenize

RUBRIC = [
    ("idempotent", ["idempot*", "safe to run twice", "more than once"]),
    ("retries", ["retry", "reattempt*"]),
    ("time limits", ["time limit", "soft deadline"]),
    ("unique key", ["unique"]),
]


def found(answer: str) -> dict[str, str]:
    return {r.point: r.words for r in assess(RUBRIC, answer) if r.found}


def test_inflections_match_but_longer_words_do_not():
    assert found("Failed calls are retried; idempotency keys everywhere") == {
        "retries": "retried",
        "idempotent": "idempotency",
    }
    assert found("We retrieve the row; a non-unique index; un-retried") == {}


@pytest.mark.parametrize(
    "answer",
    [
        "Idempotency? we skip it. Retries: never. Time limits: none",
        "We don't retry, nothing is idempotent, and there's no time limit.",
        "Tasks are not idempotent and we never set a time limit; retries aren't configured.",
        "Without idempotency, without retries and without time limits.",
        "Idempotency: not really. Zero retries; instead of time limits we trust the code.",
        "idempotent = false; we stopped using retries; time_limit=None? no time limit",
    ],
)
def test_negated_points_do_not_count(answer):
    results = assess(RUBRIC[:3], answer)
    assert not any(r.found for r in results), results
    assert all(r.negated for r in results)


@pytest.mark.parametrize(
    ("answer", "point"),
    [
        ("We never run a task without a time limit.", "time limits"),
        ("We never skip idempotency.", "idempotent"),
        ("No more than five retries, with backoff.", "retries"),
        ("A task that isn't acked is retried later.", "retries"),
        ("Idempotent tasks, not fire-and-forget ones.", "idempotent"),
        ("Retries with backoff - no duplicates", "retries"),
        ("Idempotent tasks - not fire-and-forget ones", "idempotent"),
        ("Use a soft deadline instead", "time limits"),
    ],
)
def test_what_is_not_a_negation(answer, point):
    assert point in found(answer)


def test_denying_the_tool_is_not_denying_the_need():
    rubric = [("latency", ["latency"])]
    assert assess(rubric, "Don't use it for low-latency work the user waits on.")[0].found
    assert not assess(rubric, "We don't care about latency.")[0].found


def test_phrases_match_in_one_clause_with_small_gaps():
    assert "idempotent" in found("It can safely run twice.")  # one word between "safe" and "run"
    assert "idempotent" not in found("It is safe. We run it twice.")  # two clauses
    assert "time limits" in found("a 30 s soft deadline and a 60 s kill deadline")


def test_typography_folds():
    assert found("We don’t retry") == {}
    assert found("Idempotent — “safe” to re‑attempt") == {"idempotent": "Idempotent", "retries": "re‑attempt"}


def test_old_setting_names_read_as_new():
    rubric = [("prefetch", ["worker prefetch multiplier"]), ("acks", ["task acks late"])]
    result = assess(rubric, "CELERYD_PREFETCH_MULTIPLIER = 1 and CELERY_ACKS_LATE = True")
    assert [r.words for r in result] == ["CELERYD_PREFETCH_MULTIPLIER", "CELERY_ACKS_LATE"]
    assert [t.word for t in tokenize("Celery routes it")] == ["celery", "routes", "it"]  # prose, not a name
    assert [t.word for t in tokenize("CELERY_ROUTES")] == ["task", "routes"]


def test_contractions_and_possessives():
    assert [t.word for t in tokenize("I'd say it's the worker's job; can't won't")] == [
        "i",
        "say",
        "it",
        "the",
        "worker",
        "job",
        "can",
        "not",
        "will",
        "not",
    ]


def test_the_bank_rejects_synonyms_that_match_anything():
    problems = synonym_problems(["queue", "workers", "retr*", "idempot*", "queue length", "x"])
    assert [p.split(" ", 1)[0] for p in problems] == ["'queue'", "'workers'", "'retr*'", "'x'"]
    assert {"queue", "worker", "state", "set"} <= GENERIC
