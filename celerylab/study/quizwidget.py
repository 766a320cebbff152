"""A quiz any notebook can embed: ``QuizWidget(topic="retries", count=5)`` as a cell's last line.

It asks the same bank, with the same spaced repetition and progress file, as ``celerylab quiz``, and talks
like the buttons it shows (the terminal's "type a letter" would not). The bank's text is Markdown
(`acks_late`, *emphasis*), rendered as such. Open interview questions need a timer, a rubric and a confirm
step: the widget says which ones the topic has and that ``celerylab interview`` asks them. Besides the
buttons it has a programmatic path - ``answer(...)``, ``check()``, ``next()`` - so tests (and headless
notebook runs) can drive it without a browser.
"""

from __future__ import annotations

import html
import random
import string
from collections.abc import Iterable, Sequence
from typing import Any

import ipywidgets as widgets
from markdown_it import MarkdownIt

from celerylab.study.progress import Progress
from celerylab.study.quiz import choose_pool, grade, parse_answer, reflow, right_answer_text
from celerylab.study.quizbank import Question, load_bank, next_session, record, select

_MARKDOWN = MarkdownIt("commonmark", {"html": False})  # the bank's raw HTML, if any, is shown as text
ASK = {  # what to do when Check is pressed with nothing chosen, in the widget's own terms
    "single": "Pick one of the letters above, then press Check.",
    "predict": "Pick one of the letters above, then press Check.",
    "multi": "Tick every right letter above (one or more), then press Check.",
    "truefalse": "Pick True or False, then press Check.",
    "short": "Write a short answer in the box (a few words), then press Check.",
}


def markdown(text: str, inline: bool = False) -> str:
    """The bank's Markdown as HTML (`code`, *emphasis*, links); hard-wrapped YAML lines join up."""
    return _MARKDOWN.renderInline(reflow(text)) if inline else _MARKDOWN.render(reflow(text))


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
        bank = load_bank()
        pool, problem = choose_pool(bank, names, sections)
        if problem:
            raise ValueError(problem)
        topics = {q.topic for q in pool}
        self.open_questions = [q for q in bank if q.kind == "open" and q.topic in topics]
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
            self.prompt.value = (
                "<p>Run the cell again for more questions; missed ones come back first.</p>"
                + self._open_questions_html()
            )
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
            f"<div><b>{letter})</b> {markdown(c, inline=True)}</div>"
            for letter, c in zip(string.ascii_lowercase, q.choices, strict=False)
        )
        self.prompt.value = f"<div style='font-weight:600'>{markdown(q.prompt)}</div>{code}{choices}"
        self.inputs.children = self._input_widgets(q)
        self.check_button.disabled, self.next_button.disabled = False, True

    def _open_questions_html(self) -> str:
        """Where the open questions are: they need a timer, a rubric and a confirm step (the terminal's)."""
        if not self.open_questions:
            return ""
        ids = ", ".join(f"<code>{html.escape(q.id)}</code>" for q in self.open_questions)
        first = html.escape(self.open_questions[0].id)
        return (
            f"<p>Open interview questions on this topic ({ids}) are answered out loud, not ticked: in a "
            "terminal, "
            f"<code>celerylab interview --question {first}</code> times your answer, scores it against the "
            "rubric, shows the points it found and lets you confirm or correct them.</p>"
        )

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
        if problem:  # the terminal's words ("type a letter") would not fit buttons
            self.feedback.value = (
                f"<span style='color:#b58900'>{html.escape(ASK.get(q.kind, problem))}</span>"
            )
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
        wrong = f"<b style='color:#c62828'>Not quite.</b> {markdown(right_answer_text(q), inline=True)}"
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
        head = "<br>".join(parts)
        where = q.where_to_read()
        read = f"<small>Read more: {html.escape(where)}</small>" if where else ""
        return f"{head}{markdown(q.explanation)}{read}"

    def next(self) -> None:
        if self.current is not None:
            self.index += 1
            self._show()

    def _update_score(self) -> None:
        self.score.value = f"Score: {self.right}/{self.checked}" + ("" if self.current else " - done")
