"""A quiz any notebook can embed: ``QuizWidget(topic="retries", count=5)`` as a cell's last line.

It asks the same bank, with the same spaced repetition and progress file, as ``celerylab quiz``. Besides
the buttons it has a programmatic path - ``answer(...)``, ``check()``, ``next()`` - so tests (and
headless notebook runs) can drive it without a browser.
"""

from __future__ import annotations

import html
import random
import string
from collections.abc import Iterable, Sequence
from typing import Any

import ipywidgets as widgets

from celerylab.study.progress import Progress
from celerylab.study.quiz import choose_pool, grade, parse_answer, reflow, right_answer_text
from celerylab.study.quizbank import Question, load_bank, next_session, record, select


def _letters(value: int | str | Iterable[int | str]) -> str:
    """0 / 'a' / [0, 'c'] -> 'a' / 'a' / 'ac' (the quiz's own input syntax)."""
    items = [value] if isinstance(value, int | str) else list(value)
    return "".join(string.ascii_lowercase[v] if isinstance(v, int) else str(v).strip().lower() for v in items)


class QuizWidget(widgets.VBox):
    """Question, choices, a Check button, feedback with the explanation, and a running score."""

    def __init__(
        self,
        topic: str | Sequence[str] | None = None,
        count: int = 5,
        sections: Sequence[int] | None = None,
        *,
        progress: Progress | None = None,
        remember: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        names = [topic] if isinstance(topic, str) else list(topic) if topic else None
        pool, problem = choose_pool(load_bank(), names, sections)
        if problem:
            raise ValueError(problem)
        self.progress = progress or Progress.load()
        self.remember = remember
        self.questions: list[Question] = select(pool, self.progress.quiz, count, rng)
        self.session = next_session(self.progress.quiz)
        self.index = self.right = self.checked = 0
        self.header, self.prompt, self.feedback, self.score = (widgets.HTML() for _ in range(4))
        self.inputs = widgets.HBox()
        self.check_button = widgets.Button(description="Check", button_style="primary")
        self.next_button = widgets.Button(description="Next", disabled=True)
        self.check_button.on_click(lambda _: self.check())
        self.next_button.on_click(lambda _: self.next())
        buttons = widgets.HBox([self.check_button, self.next_button])
        super().__init__([self.header, self.prompt, self.inputs, buttons, self.feedback, self.score])
        self._show()

    @property
    def current(self) -> Question | None:
        return self.questions[self.index] if self.index < len(self.questions) else None

    def _show(self) -> None:
        q = self.current
        self.feedback.value = ""
        self._update_score()
        if q is None:
            self.header.value = "<b>Quiz finished.</b>"
            self.prompt.value = "Run the cell again for more questions; missed ones come back first."
            self.inputs.children = ()
            self.check_button.disabled = self.next_button.disabled = True
            return
        where = "answer template" if q.section == 0 else f"§{q.section}"
        self.header.value = (
            f"<small>Question {self.index + 1}/{len(self.questions)} · {q.id} · {where} · "
            f"difficulty {q.difficulty}/3</small>"
        )
        code = f"<pre>{html.escape(q.code)}</pre>" if q.code else ""
        choices = "".join(
            f"<div>{letter}) {html.escape(reflow(c))}</div>"
            for letter, c in zip(string.ascii_lowercase, q.choices, strict=False)
        )
        self.prompt.value = f"<p><b>{html.escape(reflow(q.prompt))}</b></p>{code}{choices}"
        self.inputs.children = self._input_widgets(q)
        self.check_button.disabled, self.next_button.disabled = False, True

    @staticmethod
    def _input_widgets(q: Question) -> tuple[widgets.Widget, ...]:
        """Compact inputs (the choice texts, which may be long, wrap in the prompt above them)."""
        if q.kind == "short":
            return (widgets.Text(placeholder="Your answer", layout=widgets.Layout(width="60%")),)
        if q.kind == "truefalse":
            return (widgets.ToggleButtons(options=[("True", "t"), ("False", "f")], index=None),)
        letters = string.ascii_lowercase[: len(q.choices)]
        if q.kind == "multi":
            auto = widgets.Layout(width="auto")
            return tuple(widgets.Checkbox(description=ch, indent=False, layout=auto) for ch in letters)
        return (widgets.ToggleButtons(options=list(letters), index=None),)

    def answer(self, value: Any) -> None:
        """Fill in an answer: choice index or letter (a list of them for multi), a bool, or text."""
        q = self.current
        if q is None:
            raise RuntimeError("the quiz is finished")
        if q.kind == "short":
            self.inputs.children[0].value = str(value)
        elif q.kind == "truefalse":
            self.inputs.children[0].value = "t" if value else "f"
        elif q.kind == "multi":
            chosen = _letters(value)
            for letter, box in zip(string.ascii_lowercase, self.inputs.children, strict=False):
                box.value = letter in chosen
        else:
            self.inputs.children[0].value = _letters(value)

    def _typed(self, q: Question) -> str:
        """The widgets' state in the terminal quiz's input syntax, so both share one parser."""
        if q.kind == "multi":
            boxes = zip(string.ascii_lowercase, self.inputs.children, strict=False)
            return "".join(letter for letter, box in boxes if box.value)
        return self.inputs.children[0].value or ""

    def check(self) -> bool | None:
        """Grade the current answer and show feedback; None (and a hint) if nothing is filled in."""
        q = self.current
        if q is None or self.check_button.disabled:
            return None
        parsed, problem = parse_answer(q, self._typed(q))
        if problem:
            self.feedback.value = f"<span style='color:#b58900'>{html.escape(problem)}</span>"
            return None
        ok = grade(q, parsed)
        self.checked, self.right = self.checked + 1, self.right + ok
        if self.remember:
            record(self.progress.quiz, q.id, ok, self.session)
            self.progress.save()
        self.feedback.value = self._feedback_html(q, parsed, ok)
        self.check_button.disabled, self.next_button.disabled = True, False
        self._update_score()
        return ok

    def _feedback_html(self, q: Question, parsed: Any, ok: bool) -> str:
        wrong = f"<b style='color:#c62828'>Not quite.</b> {html.escape(right_answer_text(q))}"
        verdict = "<b style='color:#2e7d32'>Right!</b>" if ok else wrong
        parts = [verdict]
        if q.kind == "short":
            for r in q.assess(str(parsed)):  # the same evidence the terminal shows
                if r.found:
                    parts.append(f"✓ {html.escape(r.point)} - found in: “{html.escape(r.words)}”")
                elif r.negated:
                    said = "; ".join(f"“{html.escape(w)}”" for w in r.negated)
                    parts.append(f"✗ missing: {html.escape(r.point)} - negated in {said}")
                else:
                    parts.append(f"✗ missing: {html.escape(r.point)}")
        parts.append(html.escape(reflow(q.explanation)))
        if where := q.where_to_read():
            parts.append(f"<small>Read more: {html.escape(where)}</small>")
        return "<br>".join(parts)

    def next(self) -> None:
        if self.current is not None:
            self.index += 1
            self._show()

    def _update_score(self) -> None:
        self.score.value = f"Score: {self.right}/{self.checked}" + ("" if self.current else " - done")
