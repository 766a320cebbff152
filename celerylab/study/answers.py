"""Reading a written answer against a rubric: a key point counts only where the answer asserts it.

A rubric is a list of key points, each with synonyms (``any``). Substring search scores answers that merely
mention words, so this module reads a little more carefully, with rules a learner can predict:

- Words, not substrings. The answer and every synonym become word tokens (lower case; ``-``, ``_``, ``.``
  and other punctuation separate words; typographic quotes and dashes fold to ASCII). A synonym word
  matches the same word or a regular inflection of it (``retry`` matches retries, retried, retrying;
  ``limit`` matches limits), never a longer word: ``retry`` does not match "retrieve", ``unique`` does not
  match "non-unique" (``non-``, ``un-``, ``re-``, ``pre-`` stay glued to their word). A trailing ``*``
  makes a stem (``idempot*``: idempotent, idempotency); the bank rejects stems under five letters.
- Phrases. A synonym of several words matches them in order, at most ``GAP`` other words apart, inside
  one clause ("soft time limit" matches "soft and hard time limits" only through the synonym "time limit").
- Negation. A match does not count when a negating word (no, not, never, without, skip, none, n't ...)
  comes up to ``NEG_BEFORE`` words before it or ``NEG_AFTER`` words after it in the same clause:
  "Retries: never." and "we don't retry" assert nothing; "never without a time limit" and "we never skip
  idempotency" do assert. Clauses end at ``. , ; !``, a line break, and
  words such as "but" or "instead". A negator that is part of the synonym itself ("no timeout" in a code
  review rubric) is the point, not a negation; "no more than", "not only" and the like do not negate.
- Old setting names. Names Celery 5.7 still accepts (``CELERYD_PREFETCH_MULTIPLIER``, ``CELERY_ACKS_LATE``:
  celery.app.defaults) are read as their new names before matching.
- Generic words. A single word that any answer about Celery contains ("queue", "worker", "state") cannot
  be a synonym on its own (``GENERIC``; enforced when the bank is validated), so a vague answer scores
  nothing for naming the parts of the system.

Everything is explainable: ``assess`` returns, per point, the answer's words that matched it, or the
negated mentions that did not count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

GAP = 2  # other words allowed between two words of a synonym
NEG_BEFORE = 5
NEG_AFTER = 3
MIN_STEM = 5

FOLD = str.maketrans(
    {
        "\u2019": "'",
        "\u2018": "'",
        "\u02bc": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2011": "-",
        "\u2212": "-",
        "\u00a0": " ",
        "\u2026": ".",
    }
)

NEGATORS = frozenset(
    "no not never without skip skips skipped skipping none nor neither lack lacks lacking forgo nope "
    "disable disabled disables dont doesnt didnt isnt arent wasnt wont cant nothing zero stopped instead "
    "rather".split()
)
# Negators that deny a whole subject, so their scope runs on through "is": "nothing is idempotent".
DETERMINERS = frozenset("no none nothing neither zero".split())
# "never skip X", "never without X", "no task without X" assert X: a denial of a denial.
INNER = frozenset("without skip skips skipped skipping lack lacks lacking forgo disable disabled".split())
OUTER = frozenset("not never no none nothing dont doesnt didnt".split())
# Words of a synonym a candidate may leave out or vary: "safe to run twice" matches "safely run twice".
OPTIONAL_WORDS = frozenset("a an the to of its is are be and".split())
# Negators that also read naturally *after* the thing they deny: "Retries: never.", "Time limits: none".
NEGATORS_AFTER = frozenset(
    "no not never none skip skips skipped skipping nope nah off disabled unnecessary unneeded false".split()
)
# "no more than five retries", "not only idempotent", "no matter", "does no harm": not a denial.
NOT_NEGATING_NEXT = frozenset("more less longer later earlier sooner only just matter harm problem".split())
# Words that start a new predicate: a negator before them does not reach past them.
SCOPE_BREAKS = frozenset(
    "is are was were gets will until so then because that which when if once after".split()
)
COPULAS = frozenset("is are was were gets will".split())
CHOOSING = frozenset("use using pick choose recommend".split())
# Words that may stand between a point and its denial: "acks_late IS not used", "Idempotency? WE skip it".
BRIDGE = frozenset(
    "is are was were we i they you it its do does did will would just simply have has had been be there "
    "also really actually totally completely entirely usually".split()
)
CLAUSE_WORDS = frozenset("but however although though whereas instead otherwise except unless".split())
GLUED_PREFIXES = frozenset({"non", "un", "re", "pre"})
CONTRACTIONS = {"won't": ("will", "not"), "can't": ("can", "not"), "cannot": ("can", "not")}

# Words any answer about Celery contains: never a synonym on their own (see celerylab.study.quizbank).
GENERIC = frozenset(
    "queue queues worker workers task tasks message messages set state states result results broker "
    "brokers celery run runs running send sends call calls use used job jobs process processes time data "
    "code app error errors function thing something work".split()
)

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_BREAK = re.compile(r"[.,;!](?=\s|$)|\n|[()]")


@dataclass(frozen=True)
class Token:
    word: str
    start: int  # offsets into the answer, for quoting its own words back
    end: int
    clause: int


def fold(text: str) -> str:
    """Typographic quotes, dashes and spaces as ASCII, lower case, one character for one (so offsets into
    the folded text quote the answer's own words: a letter whose lower case is longer stays as it is)."""
    return "".join(low if len(low := ch.lower()) == 1 else ch for ch in text.translate(FOLD))


@cache
def _old_names() -> dict[tuple[str, ...], tuple[str, ...]]:
    """Old setting name -> new name, as word tuples (only where they differ), from Celery itself: the
    table Celery uses to accept old names (private, but there since 4.0; without it, no renaming)."""
    try:
        from celery.app.defaults import _TO_NEW_KEY
    except ImportError:  # pragma: no cover - a Celery that moved it
        return {}
    pairs = {}
    for old, new in _TO_NEW_KEY.items():
        o, n = tuple(old.lower().split("_")), tuple(new.lower().split("_"))
        if o != n:
            pairs[o] = n
    return pairs


def tokenize(text: str) -> list[Token]:
    """Word tokens of ``text`` with their clause numbers (see the module docstring)."""
    folded = fold(text)
    breaks = [m.start() for m in _BREAK.finditer(folded)]
    raw: list[Token] = []
    clause = 0
    b = 0
    for m in _TOKEN.finditer(folded):
        while b < len(breaks) and breaks[b] < m.start():
            clause, b = clause + 1, b + 1
        word = m.group()
        if word == "instead" and folded[m.end() :].lstrip().startswith("of "):
            raw.append(Token("instead", m.start(), m.end(), clause))  # "instead of X" denies X
            continue
        if word in CLAUSE_WORDS:
            clause += 1
            continue
        if raw and raw[-1].word in GLUED_PREFIXES and folded[raw[-1].end : m.start()] == "-":
            prev = raw.pop()
            raw.append(Token(prev.word + word, prev.start, m.end(), prev.clause))
            continue
        if word in CONTRACTIONS or word.endswith("n't"):
            first, second = CONTRACTIONS.get(word, (word[:-3], "not"))
            raw += [Token(first, m.start(), m.end(), clause), Token(second, m.start(), m.end(), clause)]
            continue
        raw.append(Token(word.split("'")[0], m.start(), m.end(), clause))  # it's, I'd, user's: the word
    return _rename_old_settings(raw, folded)


def _rename_old_settings(tokens: list[Token], folded: str) -> list[Token]:
    """CELERY_ROUTES -> task routes, written as one identifier only ("Celery routes it" stays prose)."""
    old = _old_names()
    lengths = sorted({len(k) for k in old}, reverse=True)
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        for n in lengths:
            words = tuple(t.word for t in tokens[i : i + n])
            span = folded[tokens[i].start : tokens[i + n - 1].end] if len(words) == n else " "
            if words in old and not any(c.isspace() for c in span):
                first, last = tokens[i], tokens[i + n - 1]
                out += [Token(w, first.start, last.end, first.clause) for w in old[words]]
                i += n
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


def _forms(word: str) -> frozenset[str]:
    """``word`` and its regular inflections (plural, past, -ing, -er, -ly)."""
    forms = {word, word + "s", word + "es", word + "ed", word + "ing", word + "er", word + "ly"}
    if word.endswith("e"):
        forms |= {word + "d", word + "r", word[:-1] + "ing"}
    if word.endswith("y") and len(word) > 2:
        forms |= {word[:-1] + "ies", word[:-1] + "ied", word[:-1] + "ily"}
    if len(word) <= 4 and re.fullmatch(r".*[^aeiou][aeiou][bdgklmnprt]", word):
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing", word + word[-1] + "er"}
    return frozenset(forms)


@dataclass(frozen=True)
class Synonym:
    """One entry of a key point's ``any``, compiled: each word is exact (with inflections) or a stem."""

    text: str
    words: tuple[str, ...]
    stems: tuple[bool, ...]

    @classmethod
    def parse(cls, text: str) -> Synonym:
        words, stems = [], []
        for tok in tokenize(text.replace("*", " STEM ")):
            if tok.word == "stem" and words:
                stems[-1] = True
            else:
                words.append(tok.word)
                stems.append(False)
        keep = [k for k, w in enumerate(words) if w not in OPTIONAL_WORDS or stems[k]] or range(len(words))
        return cls(text, tuple(words[k] for k in keep), tuple(stems[k] for k in keep))

    def word_matches(self, k: int, word: str) -> bool:
        return word.startswith(self.words[k]) if self.stems[k] else word in _forms(self.words[k])

    def problem(self) -> str | None:
        """Why this synonym would match answers that do not make the point (None: fine)."""
        if not self.words:
            return "has no words"
        short = [w for w, s in zip(self.words, self.stems, strict=True) if s and len(w) < MIN_STEM]
        if short:
            return f"stem {short[0]!r}* is shorter than {MIN_STEM} letters"
        if len(self.words) == 1 and not self.stems[0] and any(g in _forms(self.words[0]) for g in GENERIC):
            return "is a word every answer about Celery contains"
        if len(self.words) == 1 and len(self.words[0]) < 2:
            return "is a single letter"
        return None

    def find(self, tokens: Sequence[Token]) -> list[tuple[int, int]]:
        """(first, last) token index of every match."""
        found = []
        for i, tok in enumerate(tokens):
            if not self.word_matches(0, tok.word):
                continue
            last, ok = i, True
            for k in range(1, len(self.words)):
                nxt = next(
                    (
                        j
                        for j in range(last + 1, min(len(tokens), last + 2 + GAP))
                        if tokens[j].clause == tok.clause and self.word_matches(k, tokens[j].word)
                    ),
                    None,
                )
                if nxt is None:
                    ok = False
                    break
                last = nxt
            if ok:
                found.append((i, last))
        return found


def _is_negator(tokens: Sequence[Token], j: int, allowed: frozenset[str]) -> bool:
    if tokens[j].word not in allowed:
        return False
    after = [t.word for t in tokens[j + 1 : j + 3] if t.clause == tokens[j].clause] + ["", ""]
    article = after[0] in ("a", "an", "the")
    return not (after[0] in NOT_NEGATING_NEXT or article and after[1] in NOT_NEGATING_NEXT)


def _negator_before(tokens: Sequence[Token], first: int, clause: int) -> int | None:
    crossed = False  # a copula between: only a determiner ("nothing is ...") reaches past it
    purpose = False  # "for" between: "don't use Celery for low-latency work" denies the tool, not the need
    for j in range(first - 1, max(-1, first - 1 - NEG_BEFORE), -1):
        word = tokens[j].word
        if tokens[j].clause != clause or word in SCOPE_BREAKS - COPULAS:
            return None
        if _is_negator(tokens, j, NEGATORS) and (not crossed or word in DETERMINERS):
            chooses = j + 1 < len(tokens) and tokens[j + 1].word in CHOOSING
            if not (purpose and chooses):
                return j
        crossed = crossed or word in COPULAS
        purpose = purpose or word == "for"
    return None


def negation(tokens: Sequence[Token], first: int, last: int, text: str = "") -> int | None:
    """Index of the word that denies the match tokens[first..last], or None if it is asserted.

    Before the match, a negator denies it unless a new predicate starts in between ("a task that isn't
    acked IS redelivered"). After it, only a denial counts ("Retries: never.", "acks_late is not used",
    "Idempotency? we skip it"), not a contrast ("IDs not objects", "acks_late never loses a task")."""
    clause = tokens[first].clause
    nearest = _negator_before(tokens, first, clause)
    # "never without a time limit" asserts the time limit.
    if nearest is not None and tokens[nearest].word in INNER:
        outer = _negator_before(tokens, nearest, clause)
        if outer is not None and tokens[outer].word in OUTER:
            nearest = None
    if nearest is not None:
        return nearest
    for j in range(last + 1, min(len(tokens), last + 1 + NEG_AFTER)):
        if tokens[j].clause != clause:
            break
        if _is_negator(tokens, j, NEGATORS_AFTER):
            bridge = [t.word for t in tokens[last + 1 : j]]
            rest = [t for t in tokens[j + 1 :] if t.clause == clause]
            replied = any(c in text[tokens[last].end : tokens[j].start] for c in ":?=")  # "Retries: no"
            if bridge or replied or not rest or tokens[j].word in ("skip", "skips", "skipped", "skipping"):
                return j
            return None
        if tokens[j].word not in BRIDGE:
            break
    return None


@dataclass(frozen=True)
class PointResult:
    """How one key point fared: the answer's words that made it, or the mentions a negation cancelled."""

    point: str
    found: bool
    words: str = ""
    negated: tuple[str, ...] = ()


def _quote(answer: str, tokens: Sequence[Token], first: int, last: int) -> str:
    return " ".join(answer[tokens[first].start : tokens[last].end].split())


def assess_point(
    point: str, synonyms: Sequence[Synonym], answer: str, tokens: Sequence[Token]
) -> PointResult:
    """The first asserted match of any synonym wins; otherwise every negated mention, quoted."""
    negated: list[str] = []
    for syn in synonyms:
        for first, last in syn.find(tokens):
            neg = negation(tokens, first, last, answer)
            if neg is None:
                return PointResult(point, True, _quote(answer, tokens, first, last))
            lo, hi = min(first, neg), max(last, neg)
            quote = _quote(answer, tokens, lo, hi)
            if quote not in negated:
                negated.append(quote)
    return PointResult(point, False, negated=tuple(negated))


@cache
def compile_synonyms(synonyms: tuple[str, ...]) -> tuple[Synonym, ...]:
    return tuple(Synonym.parse(s) for s in synonyms)


def assess(points: Sequence[tuple[str, Sequence[str]]], answer: str) -> list[PointResult]:
    """Each (point, synonyms) read against ``answer``, in rubric order."""
    tokens = tokenize(answer)
    return [assess_point(p, compile_synonyms(tuple(s)), answer, tokens) for p, s in points]


def synonym_problems(synonyms: Sequence[str]) -> list[str]:
    """'"queue" is a word every answer ... contains' for each synonym the bank must not accept."""
    return [f"{s!r} {p}" for s in synonyms if (p := Synonym.parse(s).problem())]
