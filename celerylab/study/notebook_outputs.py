"""What a notebook keeps of its outputs in the repo: the plots and printed results a reader on GitHub (or a
learner opening an untrusted notebook) can see, and no widgets.

A saved widget renders only in a trusted notebook with its state, and otherwise shows its Python repr
(``interactive(children=(IntSlider(...``). So each widget output is replaced by one line that says what to
do, followed by what the widget's own output areas held when the notebook was run (the plot and text of
an ``explore()`` widget's first run), and the widget state is dropped: the widget appears when the cell runs.

    python -m celerylab.study.notebook_outputs notebooks/*.ipynb   # tidy them in place (after running them)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat

WIDGET = "application/vnd.jupyter.widget-view+json"
STATE = "application/vnd.jupyter.widget-state+json"
PLACEHOLDER = "(an interactive widget: run the cells to play with it)"


def tidy(nb: Any) -> Any:
    """``nb`` with every widget output turned into the placeholder line plus the outputs its Output widgets
    captured, and no saved widget state."""
    state = nb.metadata.get("widgets", {}).get(STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET)
            if view is None:
                outputs.append(output)
                continue
            output["data"] = {"text/plain": PLACEHOLDER}
            outputs.append(output)
            outputs.extend(captured(state, view.get("model_id", "")))
        cell.outputs = outputs
    nb.metadata.pop("widgets", None)
    return nb


def captured(state: dict[str, Any], model_id: str, seen: set[str] | None = None) -> list[Any]:
    """The plots and text the Output widgets inside widget ``model_id`` hold (its children, depth first);
    nested widget views and errors are left out (an error is the notebook test's business)."""
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id].get("state", {})
    found = (
        [
            nbformat.from_dict(o)
            for o in model.get("outputs", [])
            if o.get("output_type") != "error" and WIDGET not in o.get("data", {})
        ]
        if state[model_id].get("model_name") == "OutputModel"
        else []
    )
    for child in model.get("children", []):
        found += captured(state, str(child).removeprefix("IPY_MODEL_"), seen)
    return found


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
