"""The question bank is valid, covers the curriculum, and its validator catches what it claims to."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from celerylab.study import quizbank
from celerylab.study.quiz import load_bank, validate_file
from celerylab.study.quizbank import KeyPoint, bank_files, normalize

ROOT = Path(__file__).resolve().parents[2]
PROOFS = Path(__file__).with_name("test_quiz_proofs.py")
LAB_TOPICS = {"retries": {5, 15}, "idempotency": {6, 16}, "scheduling": {7}, "canvas": {8}, "acks": {9, 17}}
TEMPLATE_POINTS = ("broker", "idempotent", "backoff", "time limit", "rout", "acks_late", "monitor", "payload")


@pytest.fixture(scope="module")
def bank() -> list[quizbank.Question]:
    return load_bank()


@pytest.fixture(autouse=True)
def _state(tmp_path, monkeypatch):
    monkeypatch.setenv("CELERYLAB_HOME", str(tmp_path))  # the validation cache must not leak between tests


def test_schema_is_a_valid_json_schema():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(json.loads((ROOT / "quiz" / "schema.json").read_text()))


@pytest.mark.parametrize("path", bank_files(), ids=lambda p: p.name)
def test_every_quiz_file_validates_with_links(path):
    assert validate_file(path) == []


def test_topics_that_labs_link_to_exist_with_their_sections():
    for topic, sections in LAB_TOPICS.items():
        data = yaml.safe_load((ROOT / "quiz" / f"{topic}.yaml").read_text())
        assert set(data["sections"]) == sections, topic


def test_bank_size_and_coverage(bank):
    quiz = [q for q in bank if q.kind != "open"]
    per_section = Counter(q.section for q in quiz)
    assert len(quiz) >= 120, f"only {len(quiz)} quiz questions"
    thin = {s: per_section[s] for s in range(1, 18) if per_section[s] < 6}
    assert not thin, f"sections with fewer than 6 questions: {thin}"
    assert per_section[0] >= 6, "the interview answer template needs its own questions"
    assert {q.kind for q in bank} == {"single", "multi", "truefalse", "short", "predict", "open"}


def test_every_question_says_where_to_read_more(bank):
    """Besides its cheat-sheet section: a documentation page or a notebook of the kit."""
    missing = [q.id for q in bank if not (q.links.get("docs") or q.links.get("notebook"))]
    assert not missing, missing
    assert all(q.where_to_read().startswith("cheat sheet") for q in bank)


def test_bank_reaches_two_hundred_questions(bank):
    assert len(bank) >= 200, len(bank)


def test_ids_are_unique_and_stable_shaped(bank):
    ids = [q.id for q in bank]
    assert len(ids) == len(set(ids))
    assert all(q.id.startswith(q.topic + "-") for q in bank)


def test_choice_answers_in_range(bank):
    for q in bank:
        if q.is_choice:
            assert q.right_choices() and max(q.right_choices()) < len(q.choices), q.id


def test_every_cheat_sheet_mistake_is_taught(bank):
    schema = json.loads((ROOT / "quiz" / "schema.json").read_text())
    mistakes = set(schema["$defs"]["question"]["properties"]["teaches"]["enum"])
    assert mistakes == {q.teaches for q in bank if q.teaches}


def test_production_question_uses_the_answer_template(bank):
    q = next(q for q in bank if q.id == "interview_template-001")
    rubric = " ".join(normalize(kp.point) for kp in q.key_points)
    missing = [p for p in TEMPLATE_POINTS if normalize(p) not in rubric]
    assert not missing, f"the rubric lacks {missing}"
    assert q.passes_text(q.model_answer)
    assert not q.passes_text("We use Celery with Redis and it works fine.")


def test_every_open_question_model_answer_passes_its_own_rubric(bank):
    failing = [q.id for q in bank if q.kind == "open" and not q.passes_text(q.model_answer)]
    assert not failing


def _proof_tests() -> set[str]:
    tree = ast.parse(PROOFS.read_text())
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_predict_question_names_an_existing_proof(bank):
    proofs = _proof_tests()
    named = {q.id: q.proof for q in bank if q.kind == "predict"}
    missing = {qid: proof for qid, proof in named.items() if proof not in proofs}
    assert not missing, f"proof tests missing from {PROOFS.name}: {missing}"
    assert len(set(named.values())) == len(named), "each predict question needs its own proof"


def test_key_points_match_whole_words():
    kp = KeyPoint("acks_late", ("acks late", "acknowledg*"))
    assert kp.hit("We set ACKS-LATE on critical tasks")
    assert kp.hit("the message is acknowledged")
    assert not KeyPoint("ack", ("ack",)).hit("exponential back off")


BAD = {
    "duplicate id": ("questions/1/id", "retries-001", "duplicate id"),
    "answer out of range": ("questions/0/answer", 7, "out of range"),
    "predict without proof": ("questions/0/kind", "predict", "'proof' is a required property"),
    "unknown field": ("questions/0/colour", "red", "Additional properties are not allowed"),
    "missing notebook": ("questions/0/links", {"notebook": "notebooks/99_nothing.ipynb"}, "does not exist"),
    "unknown lab": ("questions/0/links", {"lab": "nolab"}, "neither a listed lab"),
    "wrong section": ("questions/0/section", 9, "not one of the file's"),
    "generic synonym": ("questions/17/key_points/0/any", ["queue"], "every answer about Celery contains"),
    "short stem": ("questions/17/key_points/0/any", ["retr*"], "shorter than 5 letters"),
    "open without rubric tests": ("questions/17/rubric_tests", None, "'rubric_tests' is a required property"),
    "one passing rubric test": ("questions/17/rubric_tests/pass", ["Backoff."], "is too short"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_validator_rejects(tmp_path, case):
    where, value, message = BAD[case]
    data = yaml.safe_load((ROOT / "quiz" / "retries.yaml").read_text())
    target = data
    *parents, leaf = where.split("/")
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is None:
        del target[leaf]
    else:
        target[leaf] = value
    path = tmp_path / "retries.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    errors = validate_file(path)
    assert any(message in e for e in errors), errors


def test_load_bank_revalidates_changed_content(tmp_path):
    good = tmp_path / "retries.yaml"
    good.write_text((ROOT / "quiz" / "retries.yaml").read_text())
    assert load_bank([good])  # valid: its digest is now trusted
    good.write_text(good.read_text().replace("answer: 1", "answer: 9", 1))
    with pytest.raises(quizbank.BankError, match="out of range"):
        load_bank([good])
