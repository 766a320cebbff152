"""``celerylab interview``: open questions under a timer, scored against a rubric of key points.

The timer is measured, never enforced: input is read normally (no threads interrupting it) and the time
from showing the question to the empty line that ends the answer is compared with the limit. A late
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

from celerylab.progress import Progress
from celerylab.quiz import NoSession, Terminal, plan_session, reflow
from celerylab.quizbank import Question, record

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


def score_answer(term: Terminal, q: Question, answer: str, elapsed: float, time_limit: float) -> bool:
    """Show time, key points hit and missed, and the model answer; True if it counts as a pass."""
    late = elapsed > time_limit
    if late:
        term.say(
            f"Answered in {fmt_duration(elapsed)}: LATE (limit {fmt_duration(time_limit)}). "
            "Scored below, but a late answer never counts as a pass.",
            style="bold yellow",
        )
    else:
        term.say(f"Answered in {fmt_duration(elapsed)} (limit {fmt_duration(time_limit)}).", style="dim")
    hit, missed = q.grade_text(answer)
    passed = len(hit) >= q.min_points and not late
    verdict = "pass" if passed else "not yet"
    term.say(
        f"Key points: {len(hit)}/{len(q.key_points)} (pass mark {q.min_points}): {verdict}.",
        style="bold green" if passed else "bold red",
    )
    for kp in hit:
        term.say(f"  + {kp.point}", style="green")
    for kp in missed:
        term.say(f"  - missed: {kp.point}", style="yellow")
    term.say()
    term.say("A model answer:", style="bold")
    term.say(reflow(q.model_answer or ""))
    term.say(reflow(q.explanation), style="dim")
    if where := q.where_to_read():
        term.say(f"Read more: {where}", style="dim")
    return passed


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
            ok = score_answer(term, q, answer, elapsed, time_limit)
            answered, passed = answered + 1, passed + ok
            points += len(q.grade_text(answer)[0])
            max_points += len(q.key_points)
            late += elapsed > time_limit
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
    parser = argparse.ArgumentParser(prog="python -m celerylab.interview", description="Mock interview.")
    parser.add_argument("--count", type=int, default=3, help="number of questions (default 3)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, help="seconds per answer")
    parser.add_argument("--question", help="ask this question id only, e.g. interview_template-001")
    args = parser.parse_args(argv)
    return run_interview(args.count, args.time_limit, args.question)


if __name__ == "__main__":
    sys.exit(main())
