"""The lab catalogue: one ``lab.toml`` per lab folder, read and checked here.

``lab.toml`` fields (all required unless marked optional):

- ``title``: one line, shown in lists.
- ``order``: the lab's place in the curriculum (1 = first); the catalogue is sorted by it.
- ``sections``: the cheat-sheet sections the lab drills, e.g. ``[5, 15]``.
- ``expected_seconds``: how long a grade of the solution should take here (README and benchmark).
- ``notebook``, ``quiz``: paths, relative to the kit root, of the topic's notebook and quiz file.
- ``hints``: tiered hints, gentlest first; ``celerylab hint <lab>`` reveals one more each time.
- ``points`` is not a field: the autograder's ``points`` markers are the single source of truth.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from celerylab.paths import kit_root

SECTIONS = {  # the cheat sheet's section titles (0: its interview answer template)
    0: "Interview answer template",
    1: "What is Celery? When to use it",
    2: "Core architecture",
    3: "Minimal example",
    4: "Django integration",
    5: "Retries & backoff",
    6: "Idempotency",
    7: "ETA / countdown / scheduling",
    8: "Chaining / grouping / chords",
    9: "Acknowledgements & reliability",
    10: "Concurrency, prefetch, rate limit",
    11: "Routing & multiple queues",
    12: "RabbitMQ vs Redis broker",
    13: "Monitoring",
    14: "Common pitfalls",
    15: "Example: robust HTTP task",
    16: "Exactly-once?",
    17: "Graceful shutdown",
}

REQUIRED = {
    "title": str,
    "order": int,
    "sections": list,
    "expected_seconds": (int, float),
    "notebook": str,
    "quiz": str,
    "hints": list,
}


class CatalogueError(ValueError):
    """A lab.toml is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Lab:
    name: str
    title: str
    order: int
    sections: tuple[int, ...]
    expected_seconds: float
    notebook: str
    quiz: str
    hints: tuple[str, ...]
    root: Path

    @property
    def folder(self) -> Path:
        return self.root / "labs" / self.name

    @property
    def solution(self) -> Path:
        return self.root / "solutions" / self.name

    @property
    def autograder(self) -> Path:
        return self.root / "tests" / "labs" / f"test_{self.name}.py"


def load_lab(path: Path, root: Path | None = None) -> Lab:
    root = root or kit_root()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"{path}: {exc}") from None
    for key, kind in REQUIRED.items():
        if key not in data:
            raise CatalogueError(f"{path}: missing field `{key}`")
        if not isinstance(data[key], kind):
            raise CatalogueError(f"{path}: `{key}` has the wrong type ({type(data[key]).__name__})")
    if not data["hints"] or not all(isinstance(h, str) and h.strip() for h in data["hints"]):
        raise CatalogueError(f"{path}: `hints` must be a non-empty list of texts")
    return Lab(
        name=path.parent.name,
        title=data["title"],
        order=data["order"],
        sections=tuple(data["sections"]),
        expected_seconds=float(data["expected_seconds"]),
        notebook=data["notebook"],
        quiz=data["quiz"],
        hints=tuple(" ".join(h.split()) for h in data["hints"]),
        root=root,
    )


def catalogue(root: Path | None = None) -> list[Lab]:
    root = root or kit_root()
    labs = [load_lab(p, root) for p in sorted((root / "labs").glob("*/lab.toml"))]
    return sorted(labs, key=lambda lab: (lab.order, lab.name))


def find(name: str, root: Path | None = None) -> Lab:
    labs = catalogue(root)
    for lab in labs:
        if lab.name == name:
            return lab
    names = ", ".join(lab.name for lab in labs)
    raise CatalogueError(f"no lab named {name!r}; the labs are: {names}")
