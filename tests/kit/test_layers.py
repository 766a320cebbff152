"""The package's layers: engine <- grading <- study <- cli. A module imports only from its own layer or
earlier ones, so the engine stays usable without labs and grading without the study front ends."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "celerylab"
LAYERS = ["engine", "grading", "study"]


def imported_layers(path: Path) -> set[str]:
    """The celerylab subpackages a module imports from, wherever the import stands (top level or lazily)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "celerylab" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_from_itself_and_earlier_layers(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    modules = sorted((PACKAGE / layer).glob("*.py"))
    assert modules, f"no modules in celerylab/{layer}"
    wrong = {m.name: sorted(imported_layers(m) - allowed) for m in modules if imported_layers(m) - allowed}
    assert not wrong, f"celerylab/{layer} imports from a later layer: {wrong}"


def test_no_module_is_left_at_the_top_but_the_command_and_paths():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "cli.py", "paths.py"], top
