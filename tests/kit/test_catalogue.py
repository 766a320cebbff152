"""The kit's anatomy: every lab complete and consistent, as CONTRIBUTING.md promises."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from celerylab.grading import labs
from celerylab.grading.labs import CatalogueError, load_lab
from tests.kit.conftest import ROOT

CATALOGUE = labs.catalogue()
LABS = [lab.name for lab in CATALOGUE]


def test_the_catalogue_has_the_core_labs_in_order():
    assert LABS[:2] == ["first_task", "retries"], "lab 0 is the newcomers' first task, then retries"
    assert {"first_task", "retries", "canvas", "idempotency", "acks", "scheduling"} <= set(LABS)
    assert len({lab.order for lab in CATALOGUE}) == len(CATALOGUE), "each lab has its own place"


@pytest.mark.parametrize("lab", CATALOGUE, ids=LABS)
def test_every_lab_has_the_whole_anatomy(lab):
    for path in (
        lab.folder / "README.md",
        lab.folder / lab.app_file,  # tasks.py, or a project's app package (lab.toml `app`)
        lab.solution / lab.app_file,
        lab.autograder,
        ROOT / lab.notebook,
        ROOT / lab.quiz,
    ):
        assert path.exists(), f"{lab.name}: missing {path.relative_to(ROOT)}"
    # notebooks/NN_<topic>.ipynb: NN is one of the lab's cheat-sheet sections; the topic may be the lab's
    # name or the section's (the outbox lab's notebook is 16_exactly_once), and the notebook links the lab
    assert re.fullmatch(r"notebooks/\d\d_[a-z][a-z0-9_]*\.ipynb", lab.notebook), "notebooks/NN_<topic>.ipynb"
    assert int(Path(lab.notebook).name[:2]) in lab.sections, "NN is one of the lab's cheat-sheet sections"
    assert f"labs/{lab.name}" in (ROOT / lab.notebook).read_text(), "the notebook links its lab"
    assert lab.quiz == f"quiz/{lab.name}.yaml", "quiz/<lab>.yaml"
    assert len(lab.hints) >= 3 and all(1 <= s <= 17 for s in lab.sections)
    readme = (lab.folder / "README.md").read_text()
    assert f"celerylab grade {lab.name}" in readme, "the README says how it is graded"
    assert code_files(lab.folder) - {"README.md", "lab.toml"} == code_files(lab.solution), (
        "a lab folder holds only its own files: README.md, lab.toml, and the same code files as the solution"
    )


def code_files(folder: Path) -> set[str]:
    """Files under ``folder`` (relative paths), without caches, dot files, mutants and variants."""
    skip = {"mutants", "variants", "__pycache__"}
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file()
        and not skip & set(p.relative_to(folder).parts)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


@pytest.mark.parametrize("lab", CATALOGUE, ids=LABS)
def test_skeleton_names_every_task_of_the_solution(lab):
    def tasks(path):
        tree = ast.parse(path.read_text())
        return {
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef)
            and any("task" in ast.unparse(d) for d in node.decorator_list)
        }

    def sources(folder):  # tasks.py, or every module of a project
        return (
            [folder / "tasks.py"]
            if lab.app == "tasks"
            else sorted(
                p
                for p in folder.rglob("*.py")
                if not {"mutants", "variants"} & set(p.relative_to(folder).parts)
            )
        )

    solution = set().union(*(tasks(p) for p in sources(lab.solution)))
    missing = solution - set().union(*(tasks(p) for p in sources(lab.folder)))
    assert not missing, f"the skeleton should already name every task of the contract: {missing}"
    assert any(re.search(r'^app = Celery\("', p.read_text(), re.M) for p in sources(lab.folder)), (
        "one app: app"
    )


@pytest.mark.parametrize("lab", CATALOGUE, ids=LABS)
def test_every_autograder_test_has_points_and_a_title(lab):
    tree = ast.parse(lab.autograder.read_text())
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert tests
    for node in tests:
        marks = [ast.unparse(d) for d in node.decorator_list]
        assert any(m.startswith("pytest.mark.points(") for m in marks), f"{node.name} has no points"
        assert ast.get_docstring(node), f"{node.name} has no one-line title"


def test_a_broken_lab_toml_is_named_with_its_field(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "lab.toml").write_text('title = "x"\norder = 1\n')
    with pytest.raises(CatalogueError, match="missing field `sections`"):
        load_lab(tmp_path / "x" / "lab.toml", tmp_path)
