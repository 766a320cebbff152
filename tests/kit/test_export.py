"""`celerylab export`: the starter pack and the Gradescope autograder, each used as its user would."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from celerylab.grading import export, labs
from tests.kit.conftest import ROOT, run_celerylab

LAB = "first_task"


def solution_files() -> list[Path]:
    """The answers: solution files, except a project's files the skeleton has as they are (``manage.py``,
    an empty ``__init__.py``), which give nothing away."""
    return sorted(
        p
        for p in (ROOT / "solutions").rglob("*.py")
        if "__pycache__" not in p.parts and not _as_in_skeleton(p)
    )


def _as_in_skeleton(path: Path) -> bool:
    rel = path.relative_to(ROOT / "solutions")
    skeleton = ROOT / "labs" / rel
    return skeleton.is_file() and skeleton.read_text() == path.read_text()


def solution_lines(lab: labs.Lab) -> set[str]:
    """Lines of the reference that the skeleton does not have: the answers."""
    skeleton = {line.strip() for p in sources(lab.folder) for line in p.read_text().splitlines()}
    return {
        line.strip()
        for p in sources(lab.solution)
        for line in p.read_text().splitlines()
        if len(line.strip()) > 30
        and line.strip() not in skeleton
        and not line.strip().startswith(("#", "import ", "from "))
    }


def sources(folder: Path) -> list[Path]:
    """tasks.py, or every module of a project lab (not its mutants and variants)."""
    if (folder / "tasks.py").exists():
        return [folder / "tasks.py"]
    return sorted(
        p for p in folder.rglob("*.py") if not {"mutants", "variants", "__pycache__"} & set(p.parts)
    )


def readme_commands(readme: str) -> list[str]:
    start = readme.split("## Start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", start, flags=re.S)


def assert_no_solutions(folder: Path) -> None:
    for gone in ("solutions", "tests/hidden", "tests/kit"):
        assert not (folder / gone).exists(), gone
    answers = {p.read_text() for p in solution_files()}
    texts = {
        p: p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts
    }
    assert not [p for p, text in texts.items() if text in answers], "a solution file was copied"
    answers_lines = set().union(*(solution_lines(lab) for lab in labs.catalogue()))
    for path, text in texts.items():
        if path.suffix == ".py":
            leaked = answers_lines & {line.strip() for line in text.splitlines()}
            assert not leaked, f"{path} holds solution lines: {sorted(leaked)[:3]}"


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    """The pack as a learner gets it: exported, then cloned from its repository."""
    made = tmp_path_factory.mktemp("export") / "pack"
    done = run_celerylab("export", "starter", str(made))
    assert done.returncode == 0, done.stdout + done.stderr
    clone = tmp_path_factory.mktemp("clone") / "celerylab"
    subprocess.run(["git", "clone", "-q", str(made), str(clone)], check=True)
    return clone


def test_the_starter_pack_holds_no_solution_code(pack):
    assert_no_solutions(pack)
    for part in (
        "celerylab/grading/plugin.py",
        "tests/labs/test_first_task.py",
        "notebooks",
        "quiz",
        "requirements.txt",
    ):
        assert (pack / part).exists(), part


def test_the_starter_packs_readme_commands_work_there(pack, tmp_path, no_orphans):
    """Both commands, with the pack's own engine (not this checkout's): the grade of the untouched
    skeleton runs to its verdicts, and doctor names a broker."""
    first, second = readme_commands((pack / "README.md").read_text())
    assert first.endswith("pip install -r requirements.txt && celerylab grade first_task")
    assert second.endswith("celerylab doctor")
    env = {**os.environ, "PYTHONPATH": str(pack), "CELERYLAB_HOME": str(tmp_path / "state")}
    env.pop("CELERYLAB_ROOT", None)
    for command, code in (("grade first_task", 1), ("doctor", 0)):
        done = subprocess.run(
            [sys.executable, "-m", "celerylab.cli", *command.split()],
            cwd=pack,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == code, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "state" / "reports" / "first_task.json").read_text())
    assert report["target"] == "labs/first_task" and 0 < report["score"] < report["max_score"]
    assert "would grade on" in done.stdout


@pytest.mark.slow
def test_the_starter_packs_readme_commands_in_a_fresh_venv(pack, no_orphans):
    """Exactly as the README says, from a fresh virtual environment (pip installs from the registry)."""
    first, second = readme_commands((pack / "README.md").read_text())
    for command, code in ((first, 1), (second, 0)):
        done = subprocess.run(["bash", "-c", command], cwd=pack, capture_output=True, text=True, timeout=1200)
        assert done.returncode == code, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_gradescope_zip_grades_a_submission_as_gradescope_lays_it_out(tmp_path, no_orphans):
    zip_path = tmp_path / "autograder.zip"
    assert run_celerylab("export", "gradescope", LAB, str(zip_path)).returncode == 0
    names = zipfile.ZipFile(zip_path).namelist()
    assert {"setup.sh", "run_autograder", f"tests/hidden/{LAB}/test_{LAB}__hidden.py"} <= set(names)
    assert not [n for n in names if n.startswith("solutions/")]
    root = tmp_path / "autograder"  # /autograder on Gradescope
    export.unpack_gradescope(zip_path, root)
    assert subprocess.run(["bash", "-n", str(root / "source" / "setup.sh")]).returncode == 0
    (root / "submission").mkdir()
    shutil.copyfile(ROOT / "solutions" / LAB / "tasks.py", root / "submission" / "tasks.py")
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "CELERYLAB_PYTHON": sys.executable}
    done = subprocess.run(
        [str(root / "run_autograder")], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 11 and len(results["tests"]) == 10, done.stdout[-2000:]
    hidden = [t for t in results["tests"] if t.get("visibility") == "after_published"]
    assert [t["name"] for t in hidden] == [
        "another service sends billing.multiply(3, -4) by name and reads -12"
    ]
    (root / "submission" / "tasks.py").unlink()
    (root / "results" / "results.json").unlink()
    subprocess.run([str(root / "run_autograder")], cwd=root, env=env, capture_output=True, timeout=60)
    assert json.loads((root / "results" / "results.json").read_text())["score"] == 0
