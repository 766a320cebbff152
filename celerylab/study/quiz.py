"""``celerylab quiz``: one question at a time in the terminal, with feedback and spaced repetition.

Questions come from the bank (celerylab.study.quizbank); which ones, and in what order, from the learner's
Leitner memory in the progress file: wrong answers come back first, then unseen questions, then the rest.
Every answer is saved as soon as it is given, so Ctrl-C or end of input loses nothing; both end the quiz
cleanly with the partial score. Colour only when the output is a terminal (rich decides; NO_COLOR works).
"""

from __future__ import annotations

import argparse
import random
import re
import string
import sys
from collections.abc import Callable, Sequence
from typing import IO

from rich.console import Console

from celerylab.study.answers import PointResult
from celerylab.study.progress import RENAMED_TOPICS, Progress
from celerylab.study.quizbank import (
    BankError,
    Question,
    load_bank,
    mastery_by_section,
    next_session,
    record,
    select,
    validate_file,
)
from celerylab.study.quizbank import topics as bank_topics

__all__ = ["Terminal", "load_bank", "mastery_by_section", "run_quiz", "run_score", "validate_file"]

TRUE_WORDS, FALSE_WORDS = {"t", "true", "y", "yes"}, {"f", "false", "n", "no"}


def reflow(text: str) -> str:
    """Join the hard-wrapped lines of each paragraph so the terminal can wrap them to its width."""
    return "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()))


class Terminal:
    """Line-based terminal I/O shared by the quiz and the interview (tests pass their own streams)."""

    def __init__(self, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> None:
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.console = Console(file=self.stdout, highlight=False, emoji=False)
        self.echo = not _isatty(self.stdin)  # piped input is not echoed: echo it so transcripts read well

    def say(self, text: str = "", style: str | None = None, end: str = "\n", wrap: bool = True) -> None:
        self.console.print(text, style=style, markup=False, end=end, soft_wrap=not wrap)

    def code(self, text: str) -> None:
        for line in text.splitlines():
            self.console.print("    " + line, style="cyan", markup=False, soft_wrap=True)

    def ask(self, prompt: str) -> str:
        """One line of input without its newline; EOFError at end of input."""
        self.say(prompt, style="bold", end="")
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            self.say()
            raise EOFError
        line = line.rstrip("\r\n")
        if self.echo:
            self.say(line, wrap=False)
        return line


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def parse_answer(q: Question, text: str) -> tuple[object, str | None]:
    """(parsed answer, None) or (None, what to type instead)."""
    text = text.strip()
    if q.kind == "truefalse":
        word = text.lower().rstrip(".!")
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS, None
        return None, "Type t (true) or f (false)."
    if q.kind == "short":
        return (text, None) if text else (None, "Type a short answer (a few words).")
    letters = string.ascii_lowercase[: len(q.choices)]
    picked = re.sub(r"[\s,;().]", "", text.lower())
    valid = picked and all(ch in letters for ch in picked)
    if q.kind == "multi":
        if valid:
            return frozenset(letters.index(ch) for ch in picked), None
        return None, f"Type the letters of every right choice, from a to {letters[-1]}, e.g. 'a c'."
    if valid and len(picked) == 1:
        return frozenset([letters.index(picked)]), None
    return None, f"Type one letter, from a to {letters[-1]}."


def grade(q: Question, answer: object) -> bool:
    if q.kind == "truefalse":
        return answer == q.answer
    if q.kind == "short":
        return q.passes_text(str(answer))
    return q.grade_choices(answer)  # type: ignore[arg-type]


def _prompt_for(q: Question) -> str:
    if q.kind == "truefalse":
        return "True or false? (t/f): "
    if q.kind == "short":
        return "Your answer: "
    last = string.ascii_lowercase[len(q.choices) - 1]
    if q.kind == "multi":
        return f"Your answers (letters a-{last}, e.g. 'a c'): "
    return f"Your answer (a-{last}): "


def show_question(term: Terminal, q: Question, number: int, total: int) -> None:
    where = "answer template" if q.section == 0 else f"§{q.section}"
    term.say()
    term.say(f"Question {number}/{total} · {q.id} · {where} · difficulty {q.difficulty}/3", style="dim")
    term.say(reflow(q.prompt), style="bold")
    if q.code:
        term.say()
        term.code(q.code)
    if q.choices:
        term.say()
        for letter, choice in zip(string.ascii_lowercase, q.choices, strict=False):
            term.say(f"  {letter}) {reflow(choice)}")


def show_feedback(term: Terminal, q: Question, answer: object, right: bool) -> None:
    if right:
        term.say("Right!", style="bold green")
    else:
        term.say(f"Not quite. {right_answer_text(q)}", style="bold red")
    if q.kind == "short":
        show_points(term, q.assess(str(answer)))
    term.say(reflow(q.explanation))
    if where := q.where_to_read():
        term.say(f"Read more: {where}", style="dim")


def show_points(term: Terminal, results: Sequence[PointResult], numbered: bool = False) -> None:
    """Each key point found (with the answer's words that made it) or missed (with the denial, if any),
    so a learner sees why, not only how many."""
    for n, r in enumerate(results, 1):
        mark = f"{n}. " if numbered else ""
        if r.found:
            term.say(f'  + {mark}{r.point} - found in: "{r.words}"', style="green")
        elif r.negated:
            said = "; ".join(f'"{w}"' for w in r.negated)
            term.say(f"  - {mark}{r.point} - missed: negated in {said}", style="yellow")
        else:
            term.say(f"  - {mark}{r.point} - missed", style="yellow")


def right_answer_text(q: Question) -> str:
    if q.kind == "truefalse":
        return f"The statement is {'true' if q.answer else 'false'}."
    if q.kind == "short":
        return "A good answer names: " + "; ".join(kp.point for kp in q.key_points) + "."
    picks = sorted(q.right_choices())
    letters = ", ".join(string.ascii_lowercase[i] for i in picks)
    if len(picks) == 1:
        return f"The answer is {letters}) {reflow(q.choices[picks[0]])}"
    return f"The right choices are {letters}."


def ask_question(term: Terminal, q: Question, number: int, total: int) -> bool:
    """Show ``q``, re-prompt until the input parses, show feedback; True if answered right."""
    show_question(term, q, number, total)
    while True:
        answer, problem = parse_answer(q, term.ask(_prompt_for(q)))
        if problem is None:
            break
        term.say(problem, style="yellow")
    right = grade(q, answer)
    show_feedback(term, q, answer, right)
    return right


def choose_pool(
    bank: Sequence[Question], topic_names: Sequence[str] | None, sections: Sequence[int] | None
) -> tuple[list[Question], str | None]:
    """Quiz-able questions for the filters, or an error message naming what exists."""
    known = bank_topics(bank)
    topic_names = [RENAMED_TOPICS.get(t, t) for t in topic_names or ()]  # an old name still works
    unknown = [t for t in topic_names if t not in known]
    if unknown:
        return [], f"Unknown topic {', '.join(map(repr, unknown))}. Topics: {', '.join(known)}."
    pool = [
        q
        for q in bank
        if q.kind != "open"
        and (not topic_names or q.topic in topic_names)
        and (not sections or q.section in sections)
    ]
    if not pool:
        return [], "No quiz questions match those topics and sections (sections are 0-17)."
    return pool, None


class NoSession(Exception):
    """The questions could not be chosen; ``code`` is the exit code (1: broken bank, 2: bad filter)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def plan_session(
    choose: Callable[[list[Question]], tuple[list[Question], str | None]],
    count: int,
    progress: Progress | None,
    rng: random.Random | None,
) -> tuple[list[Question], Progress, int]:
    """Load the bank, keep what ``choose`` picks, and take today's ``count`` questions from it (missed
    first); returns them with the progress they are recorded in and the session number."""
    try:
        bank = load_bank()
    except BankError as exc:
        raise NoSession(str(exc), 1) from None
    pool, problem = choose(bank)
    if problem:
        raise NoSession(problem, 2)
    progress = progress or Progress.load()
    return select(pool, progress.quiz, count, rng), progress, next_session(progress.quiz)


def run_quiz(
    topics: list[str] | None,
    count: int,
    sections: list[int] | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    *,
    progress: Progress | None = None,
    rng: random.Random | None = None,
) -> int:
    """Ask up to ``count`` questions; 0 when the quiz ran (even if stopped early), 2 on bad filters."""
    term = Terminal(stdin, stdout)
    if count < 1:
        term.say("The question count must be at least 1.")
        return 2
    try:
        questions, progress, session = plan_session(
            lambda bank: choose_pool(bank, topics, sections), count, progress, rng
        )
    except NoSession as exc:
        term.say(str(exc))
        return exc.code
    term.say(f"celerylab quiz: {len(questions)} questions; missed ones come back first.", style="bold")
    term.say("Stop any time with Ctrl-D or Ctrl-C; every answer is saved as you go.", style="dim")
    right = asked = 0
    try:
        for number, q in enumerate(questions, 1):
            ok = ask_question(term, q, number, len(questions))
            asked, right = asked + 1, right + ok
            record(progress.quiz, q.id, ok, session)
            progress.save()
    except (EOFError, KeyboardInterrupt):
        term.say("Stopped early.", style="yellow")
    pct = f" ({100 * right // asked}%)" if asked else ""
    planned = "" if asked == len(questions) else f" ({len(questions)} planned)"
    term.say()
    term.say(f"Score: {right}/{asked}{pct}{planned}", style="bold")
    return 0


def run_score(question_id: str, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Score one answer read from stdin (``celerylab quiz score``): 0 if it passes, 1 if not, 2 for an
    unknown question id (or a bank that fails validation). Written questions show every key point found,
    in which words, and missed; choice questions take the letters (or t/f) the quiz takes. Nothing is
    recorded in the memory: this is for checking an answer (or a rubric), not for practice."""
    term = Terminal(stdin, stdout)
    term.echo = False  # the answer is the input, not a transcript
    try:
        bank = {q.id: q for q in load_bank()}
    except BankError as exc:
        term.say(str(exc))
        return 2
    q = bank.get(question_id)
    if q is None:
        near = [i for i in bank if i.split("-")[0] == question_id.split("-")[0]] or sorted(bank)[:5]
        term.say(f"No question {question_id!r} in the bank. Ids look like: {', '.join(near[:12])}.")
        return 2
    answer = term.stdin.read()
    term.say(f"{q.id} ({q.kind}): {reflow(q.prompt)}", style="bold")
    if q.kind in ("short", "open"):
        results = q.assess(answer)
        show_points(term, results)
        found = sum(r.found for r in results)
        passed = found >= q.min_points
        term.say(
            f"Score: {found}/{len(results)} key points (pass mark {q.min_points}): "
            f"{'pass' if passed else 'not yet'}.",
            style="bold green" if passed else "bold red",
        )
        if where := q.where_to_read():
            term.say(f"Read more: {where}", style="dim")
        return 0 if passed else 1
    parsed, problem = parse_answer(q, answer)
    if problem is not None:
        term.say(f"Cannot read that answer: {problem}", style="yellow")
        return 1
    right = grade(q, parsed)
    term.say("Score: right." if right else f"Score: wrong. {right_answer_text(q)}", style="bold")
    return 0 if right else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m celerylab.study.quiz", description="Practise Celery.")
    parser.add_argument("--topic", action="append", help="quiz topic (repeatable), e.g. retries")
    parser.add_argument("--section", action="append", type=int, help="cheat-sheet section 0-17 (repeatable)")
    parser.add_argument("--count", type=int, default=10, help="number of questions (default 10)")
    args = parser.parse_args(argv)
    return run_quiz(args.topic, args.count, args.section)


if __name__ == "__main__":
    sys.exit(main())
