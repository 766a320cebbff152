"""The learner's progress: best lab scores, hints revealed, quiz memory.

One small JSON file (``.celerylab/progress.json`` in the kit, or ``$CELERYLAB_HOME/progress.json``).
A damaged file is set aside with a message and a fresh one started: progress is never worth a crash.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celerylab.paths import state_dir

VERSION = 1
HEADER = "celerylab progress file: written by the `celerylab` command; edit at your own risk."
# Quiz topics renamed since a learner's memory was written: question ids are "<topic>-NNN", so the memory
# of "concurrency-003" is the memory of "prefetch-003" (the topic took its lab's name).
RENAMED_TOPICS = {"concurrency": "prefetch"}


def current_question_id(qid: str) -> str:
    topic, sep, number = qid.rpartition("-")
    return f"{RENAMED_TOPICS[topic]}-{number}" if sep and topic in RENAMED_TOPICS else qid


def progress_path() -> Path:
    return state_dir() / "progress.json"


@dataclass
class Progress:
    """Everything remembered between runs. ``quiz`` belongs to celerylab.study.quiz (per-question memory)."""

    labs: dict[str, dict[str, Any]] = field(default_factory=dict)
    quiz: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> Progress:
        path = path or progress_path()
        if not path.exists():
            return cls(path=path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError(f"unknown format (version {data.get('version')!r})")
            labs, quiz = data.get("labs", {}), data.get("quiz", {})
            if not isinstance(labs, dict) or not isinstance(quiz, dict):
                raise ValueError("'labs' and 'quiz' must be objects")
            quiz = {current_question_id(qid): memory for qid, memory in quiz.items()}
            return cls(labs=labs, quiz=quiz, path=path)
        except (OSError, ValueError) as exc:
            aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
            path.replace(aside)
            print(
                f"celerylab: your progress file was damaged ({exc}); it was moved to {aside} "
                "and a fresh one started.",
                file=sys.stderr,
            )
            return cls(path=path)

    def save(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        payload = {"_": HEADER, "version": VERSION, "labs": self.labs, "quiz": self.quiz}
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def lab(self, name: str) -> dict[str, Any]:
        return self.labs.setdefault(name, {"best": None, "max": None, "hints": 0, "graded": 0})

    def record_grade(self, name: str, score: float, max_score: float) -> None:
        entry = self.lab(name)
        entry["max"] = max_score
        entry["graded"] = entry.get("graded", 0) + 1
        entry["last"] = score
        if entry.get("best") is None or score > entry["best"]:
            entry["best"] = score

    def reveal_hint(self, name: str, available: int) -> int:
        """Count one more hint as seen (up to ``available``); returns how many are now revealed."""
        entry = self.lab(name)
        entry["hints"] = min(available, entry.get("hints", 0) + 1)
        return entry["hints"]
