"""Helpers the quiz, interview and widget tests share: run the real commands, plan question order, answer.

The order of questions is made deterministic the way a learner's history would: a progress file whose
Leitner boxes rank the chosen questions first (box 1 = missed last time, then boxes 2, 3, 4 all due),
with every other question of the topic mastered and not due.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import threading
from pathlib import Path

from celerylab.study import quizbank
from celerylab.study.quizbank import Question
from tests.kit.conftest import ctrl_c_as_in_a_terminal

ROOT = Path(__file__).resolve().parents[2]
SESSION = 10  # the session the planned run will be (1 + the largest "last")


def run_module(
    module: str, args: list[str], stdin: str, home: Path, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``python -m <module> args`` with scripted input and a private state folder; output is piped."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "CLICOLOR_FORCE")}
    env.update(CELERYLAB_HOME=str(home), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
    )


def trust_bank(home: Path) -> None:
    """Record the bank as validated in ``home`` (validation itself is tested in test_quiz_bank)."""
    old = os.environ.get("CELERYLAB_HOME")
    os.environ["CELERYLAB_HOME"] = str(home)
    try:
        quizbank.load_bank()
    finally:
        if old is None:
            del os.environ["CELERYLAB_HOME"]
        else:
            os.environ["CELERYLAB_HOME"] = old


def plan_memory(order: list[Question], topic_questions: list[Question]) -> dict[str, dict]:
    """Leitner memory under which ``order`` (up to 4 questions) comes first, in that order."""
    memory = {q.id: {"box": 5, "last": SESSION - 1, "seen": 5, "right": 5} for q in topic_questions}
    for box, q in enumerate(order, 1):
        last = SESSION - 2 ** (box - 1)  # due exactly at SESSION
        memory[q.id] = {"box": box, "last": last, "seen": 1, "right": int(box > 1)}
    return memory


def write_progress(home: Path, memory: dict[str, dict]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    payload = {"_": "test", "version": 1, "labs": {}, "quiz": memory}
    (home / "progress.json").write_text(json.dumps(payload))


def read_memory(home: Path) -> dict[str, dict]:
    return json.loads((home / "progress.json").read_text())["quiz"]


def right_input(q: Question) -> str:
    """What a learner who knows the answer types."""
    if q.kind == "truefalse":
        return "t" if q.answer else "f"
    if q.kind in ("short", "open"):
        return " and ".join(kp.any[0] for kp in q.key_points)
    return " ".join(string.ascii_lowercase[i] for i in sorted(q.right_choices()))


def wrong_input(q: Question) -> str:
    if q.kind == "truefalse":
        return "f" if q.answer else "t"
    if q.kind in ("short", "open"):
        return "no idea"
    wrong = next(i for i in range(len(q.choices)) if i not in q.right_choices())
    return string.ascii_lowercase[wrong]


class LiveProcess:
    """A command whose output is read as it comes, so a test can act on what it shows (e.g. send Ctrl-C)."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        pipe = subprocess.PIPE
        with ctrl_c_as_in_a_terminal():
            self.proc = subprocess.Popen(
                cmd, stdin=pipe, stdout=pipe, stderr=pipe, text=True, env=env, cwd=ROOT
            )
        self.output = ""
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while chunk := self.proc.stdout.read(1):
            with self.cond:
                self.output += chunk
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: text in self.output or self.proc.poll() is not None, timeout):
                raise AssertionError(f"{text!r} never appeared; output so far:\n{self.output}")
        assert text in self.output, f"the process ended before {text!r}:\n{self.output}"

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
