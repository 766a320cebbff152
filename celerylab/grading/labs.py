"""The lab catalogue: one ``lab.toml`` per lab folder, read and checked here.

``lab.toml`` fields (all required unless marked optional):

- ``title``: one line, shown in lists.
- ``order``: the lab's place in the curriculum (0 = first, the newcomers' lab); the catalogue is sorted by it.
- ``sections``: the cheat-sheet sections the lab drills, e.g. ``[5, 15]``.
- ``expected_seconds``: how long a grade of the solution should take here (README and benchmark).
- ``notebook``, ``quiz``: paths, relative to the kit root, of the topic's notebook and quiz file.
- ``hints``: tiered hints, gentlest first; ``celerylab hint <lab>`` reveals one more each time.
- ``command`` (optional): the learner's own worker command line, ``celery -A APP worker ...`` (say
  ``celery -A tasks worker -l info``), run in the lab folder as it is, with the kit's node name, queue
  and event options after it. Without it workers run ``celery -A celerylab.engine.runtime worker`` on
  tasks.py.
- ``rules``: the contract as data, an array of tables ``{id, text, points}``. ``id`` is short kebab-case
  (``retry-5xx``), ``text`` is the rule exactly as the README's contract table states it, ``points`` its
  worth. Each autograder test names the rules it judges with ``@pytest.mark.rules("id", ...)`` (and the
  rules it merely relies on with ``needs=[...]``); a test's ``points`` are shared equally among the rules
  it judges, and the kit's tests require those shares to add up to each rule's points.
- ``app`` (optional): the module the kit imports to find the learner's Celery app, relative to the lab
  folder (default ``tasks``, i.e. ``tasks.py``); a package for a project, e.g. ``proj`` (``proj/__init__.py``
  exposing the app, as ``celery -A proj`` finds it). Probe, workers and grader all import this one.
- ``env`` (optional): environment variables the grade sets for itself, the probe and every worker, e.g.
  ``{DJANGO_SETTINGS_MODULE = "proj.settings"}`` (Celery installs its Django fix-up only when that is set).
- ``own_settings`` (optional): Celery settings the kit normally lays over the learner's app (its JSON-only
  ``accept_content``, ``task_serializer``, ``result_serializer``) that this lab judges instead, so the
  learner's own values reach the workers and the grader's copy of their app.
- ``database`` (optional): ``"django"`` makes a database per grade (SQLite in a temp folder by default, or on
  the server ``--database URL`` names), migrated from the project's models before any test runs and dropped
  afterwards (see celerylab.engine.databases).

Beside the reference ``solutions/<lab>/tasks.py``: ``mutants/<rule>.py`` (or ``<rule>--<what>.py``, or a
folder holding a ``tasks.py``) break exactly one rule each; ``variants/*.py`` are other correct solutions.
``celerylab check <lab>`` grades them all (see celerylab.grading.mutation).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


COMMAND = re.compile(r"^celery (-A|--app) \S+ worker( .*)?$")  # lab.toml's `command`
RULE_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")  # so ``<rule>--<what>.py`` splits unambiguously


class CatalogueError(ValueError):
    """A lab.toml is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Rule:
    id: str
    text: str
    points: float


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
    rules: tuple[Rule, ...] = ()
    app: str = "tasks"
    env: tuple[tuple[str, str], ...] = ()
    database: str | None = None
    own_settings: tuple[str, ...] = ()
    command: str | None = None

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise CatalogueError(f"lab {self.name} has no rule {rule_id!r}")

    @property
    def mutants(self) -> list[Path]:
        """Copies of the solution that each break one rule (the rule id is the name before any ``--``)."""
        return _entries(self.solution / "mutants")

    @property
    def variants(self) -> list[Path]:
        """Other correct solutions: each must get full marks."""
        return _entries(self.solution / "variants")

    @property
    def folder(self) -> Path:
        return self.root / "labs" / self.name

    @property
    def solution(self) -> Path:
        return self.root / "solutions" / self.name

    @property
    def app_file(self) -> str:
        """The app module's file, relative to the lab folder: ``tasks.py``, ``proj/__init__.py``."""
        return app_file(self.app)

    @property
    def autograder(self) -> Path:
        return self.root / "tests" / "labs" / f"test_{self.name}.py"


def mutant_rule(path: Path) -> str:
    """``retry-5xx--raise-for-status.py`` -> ``retry-5xx``."""
    return path.name.removesuffix(".py").split("--", 1)[0]


def app_file(module: str) -> str:
    """The file of the app module in a lab folder: ``tasks`` -> ``tasks.py``; a dotted or package name
    (``proj``) -> ``proj/__init__.py`` (a lab with ``app`` set is a project, so its app is a package)."""
    return "tasks.py" if module == "tasks" else module.replace(".", "/") + "/__init__.py"


def _entries(folder: Path) -> list[Path]:
    """Mutant or variant files, and folders that hold Python files (overlays of the solution)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if (p.suffix == ".py" and p.is_file()) or (p.is_dir() and any(p.rglob("*.py")))
    )


def _env(path: Path, data: object) -> tuple[tuple[str, str], ...]:
    if data is None:
        return ()
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise CatalogueError(f'{path}: `env` must be a table of texts, e.g. {{NAME = "value"}}')
    return tuple(sorted(data.items()))


def _rules(path: Path, data: object) -> tuple[Rule, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise CatalogueError(f"{path}: `rules` must be an array of tables ([[rules]])")
    rules = []
    for n, entry in enumerate(data, 1):
        where = f"{path}: rule {n}"
        if not isinstance(entry, dict) or set(entry) != {"id", "text", "points"}:
            raise CatalogueError(f"{where}: needs exactly `id`, `text` and `points`")
        if not isinstance(entry["id"], str) or not RULE_ID.match(entry["id"]):
            raise CatalogueError(f"{where}: id {entry['id']!r} is not kebab-case (e.g. retry-5xx)")
        if not isinstance(entry["text"], str) or not entry["text"].strip():
            raise CatalogueError(f"{where}: `text` must be the rule as the README states it")
        if not isinstance(entry["points"], int | float) or entry["points"] <= 0:
            raise CatalogueError(f"{where}: `points` must be a positive number")
        rules.append(Rule(entry["id"], " ".join(entry["text"].split()), float(entry["points"])))
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise CatalogueError(f"{path}: rule ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return tuple(rules)


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
    command = data.get("command")
    if command is not None and (not isinstance(command, str) or not COMMAND.match(command)):
        raise CatalogueError(f"{path}: `command` must read `celery -A APP worker ...`, not {command!r}")
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
        rules=_rules(path, data.get("rules")),
        command=command,
        app=_optional(path, data, "app", str) or "tasks",
        env=_env(path, data.get("env")),
        database=_optional(path, data, "database", str),
        own_settings=tuple(_optional(path, data, "own_settings", list) or ()),
    )


def _optional(path: Path, data: dict, key: str, kind: type) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise CatalogueError(f"{path}: `{key}` has the wrong type ({type(value).__name__})")
    if key == "database" and value not in (None, "django"):
        raise CatalogueError(f'{path}: `database` can only be "django"')
    return value


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
