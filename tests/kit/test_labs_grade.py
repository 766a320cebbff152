"""Every lab, graded for real through the CLI: the solution earns full marks, the skeleton under half.

The default run grades on the default broker (local Redis here), the labs over HEAVY seconds in the slow
suite; `pytest -m slow` grades every solution on the embedded Valkey and on RabbitMQ too.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from celerylab.grading import labs
from tests.kit.conftest import MARK, grade_side_by_side, kit_processes, run_celerylab

LABS = [lab.name for lab in labs.catalogue()]
HEAVY = 7  # expected_seconds above which a lab's two default grades run in the slow suite (CI runs it),
# so the default `pytest` stays under its 10-minute budget as labs are added; `pytest -m slow` grades them


def by_weight() -> list:
    return [
        pytest.param(lab.name, marks=[pytest.mark.slow] if lab.expected_seconds > HEAVY else [])
        for lab in labs.catalogue()
    ]


def grade(lab: str, tmp_path, *options: str, env: dict | None = None) -> tuple[int, dict, str]:
    done = run_celerylab("grade", lab, "--report-dir", str(tmp_path), *options, timeout=600, env=env)
    report_file = tmp_path / f"{lab}.json"
    assert report_file.exists(), f"no report; output:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.returncode, json.loads(report_file.read_text()), done.stdout


def failures(report: dict) -> str:
    return "\n".join(
        f"{t['title']}: {t['message']}\n{t['log'][-1500:]}" for t in report["tests"] if t["status"] != "pass"
    )


KINDS = {
    "test_solution_gets_full_marks": "solution",
    "test_untouched_skeleton_scores_under_half_and_explains": "labs",
    "test_solution_gets_full_marks_on_every_broker": "solution",
}
SIDE_BY_SIDE = 3  # grades at a time: each mostly waits on Celery (a skeleton, out its deadlines)


@pytest.fixture(scope="module")
def graded(request, tmp_path_factory) -> Iterator[Callable[..., tuple[int, dict, str]]]:
    """Every grade the selected tests of this module need (lab, solution or skeleton, broker), started at
    once and run side by side; a test waits for its own. Nothing they started may outlive the module."""
    mark = uuid.uuid4().hex
    temp = tmp_path_factory.mktemp(mark)
    wanted = [
        (item.callspec.params["lab"], KINDS[item.originalname], item.callspec.params.get("broker", ""))
        for item in request.session.items
        if item.module is request.module and item.originalname in KINDS
    ]

    def one(lab: str, kind: str, broker: str) -> tuple[int, dict, str]:
        folder = temp / f"{lab}-{kind}-{broker}"
        folder.mkdir()
        env = {"CELERYLAB_HOME": str(folder / "state"), MARK: mark, "TMPDIR": str(temp)}
        options = (["--solutions"] if kind == "solution" else []) + (["--broker", broker] if broker else [])
        return grade(lab, folder, *options, env=env)

    with ThreadPoolExecutor(SIDE_BY_SIDE) as pool:
        futures = {key: pool.submit(one, *key) for key in dict.fromkeys(wanted)}
        yield lambda lab, kind, broker="": futures[(lab, kind, broker)].result()
    assert not kit_processes(mark), f"processes left behind: {kit_processes(mark)}"


@pytest.mark.parametrize("lab", by_weight())
def test_solution_gets_full_marks(lab, graded):
    code, report, out = graded(lab, "solution")
    assert report["score"] == report["max_score"] > 0, failures(report)
    assert code == 0 and "full marks" in out


@pytest.mark.parametrize("lab", by_weight())
def test_untouched_skeleton_scores_under_half_and_explains(lab, graded):
    code, report, out = graded(lab, "labs")
    assert code == 1
    assert report["score"] < report["max_score"] / 2, (
        f"the skeleton scored {report['score']}/{report['max_score']}"
    )
    failed = [t for t in report["tests"] if t["status"] == "fail"]
    assert failed and all(t["message"].strip() for t in failed)
    assert "Traceback (most recent call last)" not in out, "verdicts, not stack trace walls"


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["embedded", "rabbitmq"])
@pytest.mark.parametrize("lab", LABS)
def test_solution_gets_full_marks_on_every_broker(lab, broker, graded):
    code, report, _ = graded(lab, "solution", broker)
    assert report["score"] == report["max_score"] > 0, failures(report)
    assert code == 0


POSTGRES = os.environ.get("CELERYLAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE_LABS = [lab.name for lab in labs.catalogue() if lab.database]


@pytest.mark.slow
@pytest.mark.parametrize("lab", DATABASE_LABS)
def test_database_lab_gets_full_marks_on_postgresql_and_drops_its_database(lab, tmp_path, home, no_orphans):
    """A lab with a database (lab.toml `database`) graded on PostgreSQL too; nothing of it is left."""
    from celerylab.engine.databases import grade_databases

    before = grade_databases(POSTGRES)
    code, report, _ = grade(lab, tmp_path, "--solutions", "--database", POSTGRES)
    assert report["score"] == report["max_score"] > 0, failures(report)
    assert code == 0
    assert not grade_databases(POSTGRES) - before, "the grade left its database behind"


def test_two_gradings_at_once_do_not_see_each_other(tmp_path, home, no_orphans):
    """Same broker, same lab, same task names, at the same time: each run sees only its own tasks."""
    selection = "first_try or client_error or server_errors"
    for code, report, out in grade_side_by_side("retries", tmp_path, "-k", selection):
        assert code == 0 and report["score"] == report["max_score"] == 4, out[-2000:]
