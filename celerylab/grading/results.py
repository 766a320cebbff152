"""A grade as data: what each test earned and why, written as versioned JSON.

The JSON is what the CLI, progress, the benchmark and Gradescope-style exports read; the terminal table is
one rendering of it. ``SCHEMA`` changes whenever a field's meaning does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "celerylab.results/1"
MESSAGE_LIMIT = 4000  # keep reports readable even when a learner's task prints a novel


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class, despite the name
    id: str
    title: str
    max_points: float
    points: float
    status: str  # "pass" | "fail"
    message: str = ""
    duration: float = 0.0
    backoff_wait: float = 0.0  # seconds the test had to wait for countdowns the lab's rules impose
    waited: float = 0.0  # seconds its scenario's tasks were in flight (Timeline.busy): what no grader can cut
    log: str = ""  # the tail of the worker logs, for a failed test
    timeline: str = ""  # Timeline.table() of a failed test: every attempt, which process, outcome
    rules: list[str] = field(default_factory=list)  # the lab.toml rules this test judges
    needs: list[str] = field(default_factory=list)  # the rules it relies on
    hidden: bool = False  # an instructor's test the learner does not have (--extra-tests)


@dataclass
class GradeReport:
    lab: str
    target: str
    broker: str
    tests: list[TestResult] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0
    schema: str = SCHEMA

    @property
    def score(self) -> float:
        return sum(t.points for t in self.tests)

    @property
    def max_score(self) -> float:
        return sum(t.max_points for t in self.tests)

    @property
    def full_marks(self) -> bool:
        return bool(self.tests) and self.score == self.max_score

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for test in data["tests"]:
            test["message"] = test["message"][:MESSAGE_LIMIT]
        data.update(
            score=self.score,
            max_score=self.max_score,
            backoff_wait=round(sum(t.backoff_wait for t in self.tests), 3),
        )
        return data

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def read(cls, path: Path) -> GradeReport:
        return cls.from_dict(json.loads(path.read_text()), str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "the report") -> GradeReport:
        """The inverse of :meth:`to_dict` (a report file, or one a farm worker sent back)."""
        data = dict(data)
        if data.get("schema") != SCHEMA:
            raise ValueError(f"{where} is a {data.get('schema')!r} report; this celerylab reads {SCHEMA}")
        tests = [TestResult(**t) for t in data.pop("tests")]
        for derived in ("score", "max_score", "backoff_wait"):
            data.pop(derived, None)
        return cls(tests=tests, **data)

    def to_gradescope(self) -> dict[str, Any]:
        """The Gradescope autograder results.json shape, for instructors who grade there."""
        return {
            "score": self.score,
            "tests": [
                {
                    "name": t.title,
                    "score": t.points,
                    "max_score": t.max_points,
                    "output": t.message or "passed",
                    **({"visibility": "after_published"} if t.hidden else {}),
                }
                for t in self.tests
            ],
        }
