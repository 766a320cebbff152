"""What a notebook keeps of its outputs in the repo: the plots and printed results a reader on GitHub (or a
learner opening an untrusted notebook) can see, and no widgets.

A saved widget renders only in a trusted notebook with its state, and otherwise shows its Python repr
(``interactive(children=(IntSlider(...``). So each widget output is replaced by one line that says what to
do, and the widget state is dropped: the widget appears when the cell runs.

    python -m celerylab.study.notebook_outputs notebooks/*.ipynb   # tidy them in place (after running them)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat

WIDGET = "application/vnd.jupyter.widget-view+json"
PLACEHOLDER = "(an interactive widget: run the cells to play with it)"


def tidy(nb: Any) -> Any:
    """``nb`` with every widget output turned into the placeholder line and no saved widget state."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if WIDGET in output.get("data", {}):
                output["data"] = {"text/plain": PLACEHOLDER}
    nb.metadata.pop("widgets", None)
    return nb


def is_tidy(nb: Any) -> bool:
    no_state = "widgets" not in nb.metadata
    return no_state and not any(
        WIDGET in output.get("data", {}) for cell in nb.cells for output in cell.get("outputs", [])
    )


def main(paths: list[str]) -> int:
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        if not is_tidy(nb):
            nbformat.write(tidy(nb), path)
            print(f"tidied {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
