"""Every notebook executes headless, top to bottom, on real workers, its widgets work after that, and it
leaves nothing behind.

The notebooks run side by side (3 at a time, ``$CELERYLAB_NOTEBOOKS_AT_ONCE``; tests/kit/sidebyside.py),
each kernel with a mark, a temp folder and a state folder of its own, so the processes left behind are
those of its own kernel (checked as soon as it has shut down, as ``no_orphans`` does for one test)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from functools import partial
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from celerylab.study.notebook_outputs import is_tidy
from tests.kit.conftest import MARK, ROOT, kit_processes
from tests.kit.sidebyside import SideBySide, heaviest_first, selected

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _marks(path: Path) -> list:
    """The section notebooks from 04 on (04: a Django project on a real database) run a lab's scenarios on
    real workers (10-40 s each): they run in the slow suite (CI runs it), so the default `pytest` stays
    under its 10-minute budget."""
    number = path.stem.partition("_")[0]
    return [pytest.mark.slow] if number.isdigit() and int(number) >= 4 else []


async def execute(base: Path, path: Path):
    """Runs ``path`` with the widget step appended, in a kernel of its own (this interpreter, whatever PATH
    says; its own mark, temp and state folders), and returns it executed; fails if a kit process started
    under its mark outlived its kernel."""
    mark = uuid.uuid4().hex
    temp = base / mark  # named by the mark: kit_processes knows a valkey server by its working folder
    temp.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CELERYLAB_HOME": str(temp / "state"),
        "MPLBACKEND": "Agg",
        MARK: mark,
        "TMPDIR": str(temp),
    }
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(AFTER_RUN_ALL))
    client = NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        await client.async_execute(env=env)  # the kernel is shut down when it returns
    except Exception as exc:
        if left := await asyncio.to_thread(kit_processes, mark):
            exc.add_note(f"processes left behind: {left}")
        raise
    left = await asyncio.to_thread(kit_processes, mark)
    assert not left, f"processes left behind: {left}"
    return nb


@contextlib.asynccontextmanager
async def _kernels(base: Path):
    yield partial(execute, base)


@pytest.fixture(scope="module")
def executed(request, tmp_path_factory) -> SideBySide:
    """Every selected notebook executing, started now, side by side; each test waits for its own."""
    base = tmp_path_factory.mktemp("notebooks")
    runs = SideBySide(selected(request, "test_notebook_executes"), partial(_kernels, base)).start()
    try:
        yield runs
    finally:
        runs.stop()


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.stem, marks=_marks(p)) for p in heaviest_first(NOTEBOOKS)]
)
def test_notebook_executes(path: Path, executed: SideBySide):
    nb = executed.verdict(path)  # raises what failed in this notebook's run
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert not widget_errors(nb), widget_errors(nb)


# What a learner does next: play with the widgets, after "Run All" ran the closing cell too. Each
# interact's function runs once more with its current values (what its button does); an error lands in
# the widget's saved output, where widget_errors finds it.
AFTER_RUN_ALL = """
import ipywidgets
from ipywidgets.widgets import widget as _registry

for _each in list(_registry._instances.values()):
    if isinstance(_each, ipywidgets.interactive):
        _each.update()
"""


def widget_errors(nb) -> list[dict]:
    """Errors inside widgets: ipywidgets catches an exception in an interact callback and keeps it in the
    Output widget's saved state, so the cell itself shows none."""
    state = (
        nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    )
    return [
        o
        for model in state.values()
        for o in model.get("state", {}).get("outputs", [])
        if o.get("output_type") == "error"
    ]


def test_every_notebook_is_named_for_a_cheat_sheet_section():
    for path in NOTEBOOKS:
        number, _, topic = path.stem.partition("_")
        assert number.isdigit() and 0 <= int(number) <= 17 and topic, path.name


def test_saved_notebooks_keep_plots_and_no_widget_reprs():
    """An untrusted notebook shows a saved widget as its repr (``interactive(children=(...``): the repo keeps
    a line that says to run the cells instead (``python -m celerylab.study.notebook_outputs
    notebooks/*.ipynb``)."""
    untidy = [p.name for p in NOTEBOOKS if not is_tidy(nbformat.read(p, as_version=4))]
    assert not untidy, f"run `python -m celerylab.study.notebook_outputs notebooks/*.ipynb`: {untidy}"


def test_tidy_keeps_what_a_widgets_output_showed():
    """explore() draws its first run inside the widget: the stored notebook keeps that plot and text
    (after the placeholder line), not the widget, and never an error."""
    from celerylab.study.notebook_outputs import PLACEHOLDER, STATE, WIDGET, tidy

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("control = explore(run, max_retries=(1, 4))")
    cell.outputs = [nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "box"}})]
    nb.cells.append(cell)
    error = {"output_type": "error", "ename": "E", "evalue": "x", "traceback": []}
    plot = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
    text = {"output_type": "stream", "name": "stdout", "text": "waits before each retry (s): [[1.0]]\n"}
    nb.metadata["widgets"] = {
        STATE: {
            "state": {
                "box": {
                    "model_name": "VBoxModel",
                    "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_out"]},
                },
                "slider": {"model_name": "IntSliderModel", "state": {"value": 3}},
                "out": {"model_name": "OutputModel", "state": {"outputs": [text, plot, error]}},
            }
        }
    }
    tidy(nb)
    assert is_tidy(nb)
    assert [o.get("text") or o.get("data") for o in cell.outputs] == [
        {"text/plain": PLACEHOLDER},
        text["text"],
        plot["data"],
    ]
