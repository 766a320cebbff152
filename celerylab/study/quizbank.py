"""The question bank (``quiz/<topic>.yaml``) and the learner's memory of it.

The bank is data: ``quiz/schema.json`` documents every field once. This module loads and validates it,
grades an answer, and keeps a Leitner schedule per question id in ``Progress.quiz``:

    {"box": 1-5, "last": session, "seen": n, "right": n}

A wrong answer puts a question in box 1 (the "missed" box); a right one moves it up a box (a first right
answer straight to box 2). Box b is due again ``2**(b-1)`` sessions after it was last asked; a session is
one quiz, interview or widget that recorded answers, numbered ``1 + max(last)``, so no counter is stored.
A question in box ``MASTERED_BOX`` or higher is mastered: answered right at least twice in a row. An entry
someone edited into nonsense counts as unseen rather than crashing the quiz.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from celerylab.paths import kit_root, state_dir
from celerylab.study.answers import PointResult, assess, synonym_problems

CACHE_VERSION = 2  # bump when validation rules change, so cached verdicts are redone
MAX_BOX = 5
MASTERED_BOX = 3
LABS = ("retries", "canvas", "idempotency", "acks", "scheduling")  # labs/<name>/ (may still be in progress)


def quiz_dir() -> Path:
    return kit_root() / "quiz"


class BankError(ValueError):
    """The bank failed validation; ``errors`` lists every problem as ``file: where: what``."""

    def __init__(self, errors: list[str]):
        super().__init__("invalid quiz bank:\n  " + "\n  ".join(errors))
        self.errors = errors


def normalize(text: str) -> str:
    """Lower case, '-'/'_' as spaces, single spaces: 'acks_late' and 'Acks-Late' read the same."""
    return " ".join(re.sub(r"[-_]", " ", text.lower()).split())


@dataclass(frozen=True)
class KeyPoint:
    point: str
    any: tuple[str, ...]

    def read(self, answer: str) -> PointResult:
        """Whether ``answer`` asserts this point, and in which words (rules: celerylab.study.answers)."""
        return assess([(self.point, self.any)], answer)[0]

    def hit(self, answer: str) -> bool:
        return self.read(answer).found


@dataclass(frozen=True)
class Question:
    id: str
    topic: str
    section: int
    difficulty: int
    kind: str
    prompt: str
    explanation: str
    code: str | None = None
    choices: tuple[str, ...] = ()
    answer: Any = None
    key_points: tuple[KeyPoint, ...] = ()
    min_points: int = 1
    model_answer: str | None = None
    links: dict[str, Any] = field(default_factory=dict)
    proof: str | None = None
    teaches: str | None = None
    rubric_tests: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def is_choice(self) -> bool:
        return self.kind in ("single", "multi", "predict")

    def right_choices(self) -> frozenset[int]:
        return frozenset(self.answer if self.kind == "multi" else [self.answer])

    def grade_choices(self, picked: Iterable[int]) -> bool:
        return frozenset(picked) == self.right_choices()

    def assess(self, answer: str) -> list[PointResult]:
        """Each key point read against the typed answer: found (in which words) or missed (and why)."""
        return assess([(kp.point, kp.any) for kp in self.key_points], answer)

    def grade_text(self, answer: str) -> tuple[list[KeyPoint], list[KeyPoint]]:
        """Split the key points into (hit, missed) by the typed answer."""
        found = [r.found for r in self.assess(answer)]
        hit = [kp for kp, ok in zip(self.key_points, found, strict=True) if ok]
        return hit, [kp for kp, ok in zip(self.key_points, found, strict=True) if not ok]

    def passes_text(self, answer: str) -> bool:
        return len(self.grade_text(answer)[0]) >= self.min_points

    def where_to_read(self) -> str:
        """'cheat sheet §5 · <docs URL> · notebooks/05_retries.ipynb · lab labs/retries/' (what exists)."""
        parts = []
        if (sec := self.links.get("cheatsheet")) is not None:
            parts.append("cheat sheet: answer template" if sec == 0 else f"cheat sheet §{sec}")
        if docs := self.links.get("docs"):
            parts.append(docs)
        if (nb := self.links.get("notebook")) and (kit_root() / nb).is_file():
            parts.append(nb)
        if lab := self.links.get("lab"):
            parts.append(f"lab labs/{lab}/ (celerylab grade {lab})")
        return " · ".join(parts)


def _question(topic: str, raw: dict[str, Any], defaults: dict[str, Any]) -> Question:
    kps = tuple(KeyPoint(kp["point"], tuple(kp["any"])) for kp in raw.get("key_points", ()))
    default_min = len(kps) if raw["kind"] == "short" else max(1, -(-2 * len(kps) // 3))
    return Question(
        id=raw["id"],
        topic=topic,
        section=raw["section"],
        difficulty=raw["difficulty"],
        kind=raw["kind"],
        prompt=raw["prompt"].strip(),
        explanation=raw["explanation"].strip(),
        code=raw["code"].rstrip() if raw.get("code") else None,
        choices=tuple(c.strip() for c in raw.get("choices", ())),
        answer=raw.get("answer"),
        key_points=kps,
        min_points=raw.get("min_points", default_min or 1),
        model_answer=raw["model_answer"].strip() if raw.get("model_answer") else None,
        links={"cheatsheet": raw["section"], **defaults, **raw.get("links", {})},
        proof=raw.get("proof"),
        teaches=raw.get("teaches"),
        rubric_tests={k: tuple(v) for k, v in raw.get("rubric_tests", {}).items()},
    )


@cache
def _validator() -> Any:
    # Imported here, not at the top: with jsonschema's optional format checkers installed (jupyter pulls in
    # rfc3987-syntax) `import jsonschema` takes seconds, and a quiz whose bank was already validated
    # never needs it (see load_bank).
    from jsonschema import Draft202012Validator

    schema = json.loads((quiz_dir() / "schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _parse(text: str) -> Any:
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _check(path: Path, text: str) -> tuple[dict[str, Any] | None, list[str]]:
    """Parse and schema-check one file's text: (data, errors); data is None if unusable."""
    try:
        data = _parse(text)
    except yaml.YAMLError as exc:
        return None, [f"{path.name}: not valid YAML: {exc}"]
    errors = [
        f"{path.name}: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ]
    return (None if errors else data), errors


def _semantic_errors(path: Path, data: dict[str, Any], check_links: bool) -> list[str]:
    """What the schema cannot say: names agree, ids unique, answers in range, links resolve."""
    errors, seen = [], set()
    name = path.name
    if data["topic"] != path.stem:
        errors.append(f"{name}: topic {data['topic']!r} must equal the file name stem {path.stem!r}")
    for raw in data["questions"]:
        qid = raw["id"]
        where = f"{name}: {qid}"
        if not qid.startswith(f"{data['topic']}-"):
            errors.append(f"{where}: id must start with '{data['topic']}-'")
        if qid in seen:
            errors.append(f"{where}: duplicate id")
        seen.add(qid)
        if raw["section"] not in data["sections"]:
            errors.append(f"{where}: section {raw['section']} is not one of the file's {data['sections']}")
        n = len(raw.get("choices", ()))
        answers = raw["answer"] if isinstance(raw.get("answer"), list) else [raw.get("answer")]
        if n and any(not isinstance(a, int) or a >= n for a in answers):
            errors.append(f"{where}: answer {raw['answer']} is out of range for {n} choices")
        if len(set(raw.get("choices", ()))) != n:
            errors.append(f"{where}: duplicate choices")
        for kp in raw.get("key_points", ()):
            errors += [f"{where}: synonym {problem}" for problem in synonym_problems(kp["any"])]
        if raw.get("min_points", 0) > len(raw.get("key_points", ())):
            errors.append(f"{where}: min_points exceeds the number of key points")
        links = {**data.get("links", {}), **raw.get("links", {})} if check_links else {}
        for key, value in links.items():
            if key == "notebook" and not (kit_root() / value).is_file():
                errors.append(f"{where}: links.notebook {value} does not exist")
            if key == "lab" and value not in LABS and not (kit_root() / "labs" / value).is_dir():
                errors.append(f"{where}: links.lab {value!r} is neither a listed lab nor a folder in labs/")
    return errors


def validate_file(path: Path | str, check_links: bool = True) -> list[str]:
    """Every problem in one quiz file (empty list: valid). Loading for a quiz skips the link check: a
    notebook renamed later must not stop anyone practising (the kit's tests check links)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        return [f"{path.name}: cannot read: {exc}"]
    data, errors = _check(path, text)
    return errors if data is None else errors + _semantic_errors(path, data, check_links)


def bank_files() -> list[Path]:
    return sorted(quiz_dir().glob("*.yaml"))


def _digest(texts: dict[Path, str]) -> str:
    sha = hashlib.sha256(f"{CACHE_VERSION}\n{(quiz_dir() / 'schema.json').read_text()}".encode())
    for path, text in sorted(texts.items()):
        sha.update(f"\0{path.name}\0{text}".encode())
    return sha.hexdigest()


def _cache_path() -> Path:
    return state_dir() / "quiz-bank.sha256"


def load_bank(paths: Sequence[Path] | None = None) -> list[Question]:
    """Every question, in file then bank order; raises BankError listing all problems.

    Full validation runs when the bank's content differs from the last content that passed (its digest
    is kept in the state folder), so an unchanged bank loads in milliseconds."""
    texts = {path: path.read_text() for path in (paths or bank_files())}
    digest = _digest(texts)
    try:
        trusted = _cache_path().read_text().strip() == digest
    except OSError:
        trusted = False
    errors: list[str] = []
    if not trusted:
        for path, text in texts.items():
            data, file_errors = _check(path, text)
            errors += file_errors if data is None else file_errors + _semantic_errors(path, data, False)
    questions = []
    if not errors:
        for text in texts.values():
            data = _parse(text)
            questions += [_question(data["topic"], q, data.get("links", {})) for q in data["questions"]]
    ids = [q.id for q in questions]
    errors += [f"{i}: id used in more than one file" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if errors:
        raise BankError(errors)
    if not trusted:
        with contextlib.suppress(OSError):
            _cache_path().parent.mkdir(parents=True, exist_ok=True)
            _cache_path().write_text(digest + "\n")
    return questions


def topics(bank: Sequence[Question]) -> list[str]:
    return sorted({q.topic for q in bank})


# --- memory: Leitner boxes in Progress.quiz -------------------------------------------------------------


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _box_last(entry: Any) -> tuple[int, int]:
    """(box, last session) of a memory entry; (0, 0) - unseen - if missing or not numbers."""
    try:
        box, last = int(entry.get("box", 0)), int(entry.get("last", 0))
    except (AttributeError, TypeError, ValueError):
        return 0, 0
    return (box, last) if 0 <= box <= MAX_BOX else (0, 0)


def next_session(memory: dict[str, Any]) -> int:
    return 1 + max((_box_last(e)[1] for e in memory.values()), default=0)


def record(memory: dict[str, Any], qid: str, right: bool, session: int) -> dict[str, Any]:
    """Move ``qid`` up a box (right) or back to box 1 (wrong); returns its entry."""
    box, _ = _box_last(memory.get(qid))
    old = memory.get(qid) if isinstance(memory.get(qid), dict) else {}
    memory[qid] = entry = {
        "box": min(MAX_BOX, max(2, box + 1)) if right else 1,  # box 1 means "missed last time"
        "seen": _int(old.get("seen")) + 1,
        "right": _int(old.get("right")) + int(right),
        "last": session,
    }
    return entry


def is_mastered(memory: dict[str, Any], qid: str) -> bool:
    return _box_last(memory.get(qid))[0] >= MASTERED_BOX


def select(
    pool: Sequence[Question], memory: dict[str, dict[str, Any]], count: int, rng: random.Random | None = None
) -> list[Question]:
    """Up to ``count`` questions, most useful first: due wrong answers (box 1), then unseen, then other
    due questions by box, then the rest soonest-due first. Ties are shuffled by ``rng``."""
    rng = rng or random.Random()
    session = next_session(memory)
    shuffled = list(pool)
    rng.shuffle(shuffled)

    def rank(q: Question) -> tuple[int, int, int]:
        box, last = _box_last(memory.get(q.id))
        if not box:
            return (1, 0, 0)
        due_at = last + 2 ** (box - 1)
        if due_at <= session:
            return (0 if box == 1 else 2, box, due_at)
        return (3, due_at, box)

    return sorted(shuffled, key=rank)[: max(0, count)]


def mastery_by_section(progress: Any, bank: Sequence[Question] | None = None) -> dict[int, tuple[int, int]]:
    """section -> (questions mastered, questions in the bank), for every section in the bank."""
    bank = load_bank() if bank is None else bank
    memory = progress.quiz
    result: dict[int, tuple[int, int]] = {}
    for q in bank:
        done, total = result.get(q.section, (0, 0))
        result[q.section] = (done + is_mastered(memory, q.id), total + 1)
    return dict(sorted(result.items()))
