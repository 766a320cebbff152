"""``celerylab interview``: open questions under a timer, scored against a rubric of key points.

After each answer the rubric is shown as the scorer read it, with the model answer, and the candidate
confirms or corrects the points found, flashcard style: the confirmed points are what the Leitner memory
records. The timer is measured, never enforced: input is read normally (no threads interrupting it) and
the time from showing the question to the empty line that ends the answer is compared with the limit. A late
answer is still scored, so the learner sees what they covered, but it never counts as a pass in the
spaced-repetition memory. ``clock`` is injectable so tests are deterministic without sleeping.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO

from celerylab.study.progress import Progress
from celerylab.study.quiz import NoSession, Terminal, plan_session, reflow, show_points
from celerylab.study.quizbank import Question, record

DEFAULT_TIME_LIMIT = 120.0


def fmt_duration(seconds: float) -> str:
    """125.4 -> '2:05'."""
    whole = max(0, int(round(seconds)))
    return f"{whole // 60}:{whole % 60:02d}"


def read_answer(term: Terminal) -> tuple[str, bool]:
    """Lines up to the first empty line after some text: (answer, input ended). An empty start re-prompts."""
    lines: list[str] = []
    while True:
        try:
            line = term.ask("> ")
        except EOFError:
            return "\n".join(lines), True
        if line.strip():
            lines.append(line)
        elif lines:
            return "\n".join(lines), False
        else:
            term.say("Type your answer first; an empty line ends it (Ctrl-D stops).", style="yellow")


def score_answer(term: Terminal, q: Question, answer: str, elapsed: float, time_limit: float) -> list[bool]:
    """Show time, the rubric as read from the answer (numbered), the model answer; return what was found."""
    late = elapsed > time_limit
    if late:
        term.say(
            f"Answered in {fmt_duration(elapsed)}: LATE (limit {fmt_duration(time_limit)}). "
            "Scored below, but a late answer never counts as a pass.",
            style="bold yellow",
        )
    else:
        term.say(f"Answered in {fmt_duration(elapsed)} (limit {fmt_duration(time_limit)}).", style="dim")
    results = q.assess(answer)
    found = [r.found for r in results]
    _say_verdict(term, q, found, late, "Key points")
    show_points(term, results, numbered=True)
    term.say()
    term.say("A model answer:", style="bold")
    term.say(reflow(q.model_answer or ""))
    term.say(reflow(q.explanation), style="dim")
    if where := q.where_to_read():
        term.say(f"Read more: {where}", style="dim")
    return found


def _say_verdict(term: Terminal, q: Question, found: Sequence[bool], late: bool, what: str) -> bool:
    passed = sum(found) >= q.min_points and not late
    verdict = "pass" if passed else "not yet"
    term.say(
        f"{what}: {sum(found)}/{len(found)} (pass mark {q.min_points}): {verdict}.",
        style="bold green" if passed else "bold red",
    )
    return passed


def self_assess(term: Terminal, q: Question, found: list[bool], late: bool) -> tuple[list[bool], bool]:
    """Flashcard step: the candidate, having read the model answer, confirms or flips the points the
    scorer found (a rubric reads words, the candidate knows what they meant). Returns the confirmed
    points and whether input ended. Enter (or end of input) confirms."""
    confirmed = list(found)
    term.say()
    term.say(
        "Check yourself against the model answer: Enter confirms; type the numbers of points to flip "
        "(found <-> missed), e.g. '2 5'.",
        style="dim",
    )
    while True:
        try:
            line = term.ask("Points right? ")
        except EOFError:
            return confirmed, True
        text = line.strip().lower()
        if text in ("", "y", "yes", "ok"):
            return confirmed, False
        numbers = text.replace(",", " ").split()
        if not all(n.isdigit() and 1 <= int(n) <= len(confirmed) for n in numbers):
            term.say(f"Type point numbers from 1 to {len(confirmed)}, or Enter to confirm.", style="yellow")
            continue
        for n in {int(n) for n in numbers}:
            confirmed[n - 1] = not confirmed[n - 1]
        for n, (kp, ok) in enumerate(zip(q.key_points, confirmed, strict=True), 1):
            term.say(f"  {'+' if ok else '-'} {n}. {kp.point}", style="green" if ok else "yellow")
        _say_verdict(term, q, confirmed, late, "Your points")


def _choose(bank: Sequence[Question], question: str | None) -> tuple[list[Question], str | None]:
    pool = [q for q in bank if q.kind == "open"]
    if question is None:
        return pool, None
    by_id = {q.id: q for q in bank}
    if question not in by_id:
        return [], f"No question {question!r}. Interview questions: {', '.join(q.id for q in pool)}."
    if by_id[question].kind != "open":
        return [], f"{question} is a quiz question; practise it with `celerylab quiz`."
    return [by_id[question]], None


def run_interview(
    count: int = 3,
    time_limit: float = DEFAULT_TIME_LIMIT,
    question: str | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    progress: Progress | None = None,
    rng: random.Random | None = None,
) -> int:
    """Run a mock interview; 0 when it ran (even if stopped early), 1 for a broken bank, 2 on bad options."""
    term = Terminal(stdin, stdout)
    if count < 1 or time_limit <= 0:
        term.say("The question count and the time limit must be positive.")
        return 2
    try:
        questions, progress, session = plan_session(
            lambda bank: _choose(bank, question), count, progress, rng
        )
    except NoSession as exc:
        term.say(str(exc))
        return exc.code
    term.say(f"Mock interview: {len(questions)} question(s), {fmt_duration(time_limit)} each.", style="bold")
    term.say("Answer as you would out loud. Type your answer; an empty line ends it.", style="dim")
    passed = points = max_points = late = answered = 0
    try:
        for number, q in enumerate(questions, 1):
            term.say()
            where = "answer template" if q.section == 0 else f"§{q.section}"
            term.say(f"Question {number}/{len(questions)} · {q.id} · {where}", style="dim")
            term.say(reflow(q.prompt), style="bold")
            term.say(f"Time allowed: {fmt_duration(time_limit)}.", style="dim")
            start = clock()
            answer, ended = read_answer(term)
            elapsed = clock() - start
            if not answer:
                break
            late_answer = elapsed > time_limit
            found = score_answer(term, q, answer, elapsed, time_limit)
            confirmed, eof = self_assess(term, q, found, late_answer)
            ended = ended or eof
            if confirmed != found:
                term.say("Your correction counts for your memory of this question.", style="dim")
            ok = _say_verdict(term, q, confirmed, late_answer, "Confirmed")
            answered, passed = answered + 1, passed + ok
            points += sum(confirmed)
            max_points += len(q.key_points)
            late += late_answer
            record(progress.quiz, q.id, ok, session)
            progress.save()
            if ended:
                break
    except KeyboardInterrupt:
        term.say()
    if answered < len(questions):
        term.say("Stopped early.", style="yellow")
    term.say()
    term.say(
        f"Interview over: {passed}/{answered} answers passed; key points {points}/{max_points}; {late} late.",
        style="bold",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m celerylab.study.interview", description="Mock interview."
    )
    parser.add_argument("--count", type=int, default=3, help="number of questions (default 3)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, help="seconds per answer")
    parser.add_argument("--question", help="ask this question id only, e.g. interview_template-001")
    args = parser.parse_args(argv)
    return run_interview(args.count, args.time_limit, args.question)


if __name__ == "__main__":
    sys.exit(main())
