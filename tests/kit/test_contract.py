"""Every lab's contract is data (lab.toml `rules`), and the autograder, the mutants, the variants and the
README all agree with it. These checks read files only; tests/kit/test_mutants.py grades for real."""

from __future__ import annotations

import ast
import re

import pytest

from celerylab.grading import labs
from celerylab.grading.labs import CatalogueError, load_lab, mutant_rule

CATALOGUE = labs.catalogue()
IDS = [lab.name for lab in CATALOGUE]


def autograder_tests(lab: labs.Lab) -> list[dict]:
    """Each test function's title, points and rules markers, read from its source."""
    out = []
    for node in ast.parse(lab.autograder.read_text()).body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        entry = {"name": node.name, "title": (ast.get_docstring(node) or "").splitlines()[0], "points": 1.0}
        entry["rules"], entry["needs"] = [], []
        for deco in node.decorator_list:
            if not isinstance(deco, ast.Call):
                continue
            name = ast.unparse(deco.func)
            if name == "pytest.mark.points":
                entry["points"] = float(ast.literal_eval(deco.args[0]))
            elif name == "pytest.mark.rules":
                entry["rules"] = [ast.literal_eval(a) for a in deco.args]
                for kw in deco.keywords:
                    if kw.arg == "needs":
                        entry["needs"] = list(ast.literal_eval(kw.value))
        out.append(entry)
    return out


@pytest.mark.parametrize("lab", CATALOGUE, ids=IDS)
def test_every_test_judges_known_rules_and_every_rule_is_judged(lab):
    assert lab.rules, f"{lab.name}: lab.toml has no [[rules]]"
    known = {r.id for r in lab.rules}
    tests = autograder_tests(lab)
    for t in tests:
        assert t["rules"], f"{lab.name}: {t['name']} judges no rule (add @pytest.mark.rules(...))"
        unknown = (set(t["rules"]) | set(t["needs"])) - known
        assert not unknown, f"{lab.name}: {t['name']} names unknown rules {sorted(unknown)}"
    judged = {r for t in tests for r in t["rules"]}
    assert not known - judged, f"{lab.name}: rules no test judges: {sorted(known - judged)}"


@pytest.mark.parametrize("lab", CATALOGUE, ids=IDS)
def test_rule_points_are_the_shares_of_the_tests_that_judge_them(lab):
    shares = {r.id: 0.0 for r in lab.rules}
    for t in autograder_tests(lab):
        for rule in t["rules"]:
            shares[rule] += t["points"] / len(t["rules"])
    for rule in lab.rules:
        assert abs(shares[rule.id] - rule.points) < 1e-9, (
            f"{lab.name}: rule {rule.id} is worth {rule.points:g} in lab.toml, but its tests give it "
            f"{shares[rule.id]:g} (a test's points are shared equally among the rules it judges)"
        )


@pytest.mark.parametrize("lab", CATALOGUE, ids=IDS)
def test_every_rule_has_a_mutant_and_there_are_three_variants(lab):
    rules = {r.id for r in lab.rules}
    mutated = {mutant_rule(p) for p in lab.mutants}
    assert not mutated - rules, f"{lab.name}: mutants of unknown rules: {sorted(mutated - rules)}"
    assert not rules - mutated, f"{lab.name}: rules no mutant breaks: {sorted(rules - mutated)}"
    assert len(lab.variants) >= 3, f"{lab.name}: {len(lab.variants)} variants; at least 3 correct ones"
    for path in lab.mutants + lab.variants:
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:  # a folder: an overlay
            doc = ast.get_docstring(ast.parse(source.read_text()))
            assert doc and len(doc.split()) >= 4, (
                f"{source}: a docstring says what it breaks (or how it differs)"
            )


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.mark.parametrize("lab", CATALOGUE, ids=IDS)
def test_readme_tables_match_the_rule_list_and_the_tests(lab):
    readme = (lab.folder / "README.md").read_text()
    rows = [_cells(line) for line in readme.splitlines() if line.strip().startswith("|")]
    for rule in lab.rules:
        hit = [r for r in rows if r and r[0] == f"`{rule.id}`"]
        assert hit, f"{lab.name}: README's contract table has no row for rule `{rule.id}`"
        text = " ".join(hit[0][1].split()) if len(hit[0]) > 1 else ""
        assert text == rule.text, (
            f"{lab.name}: rule {rule.id} reads\n  {text!r} in the README,\n  {rule.text!r} in lab.toml"
        )
        assert hit[0][-1] == f"{rule.points:g}", f"{lab.name}: rule {rule.id} points differ in the README"
    listed = {r.strip("`") for r in (row[0] for row in rows) if re.fullmatch(r"`[a-z0-9-]+`", r)}
    extra = listed - {r.id for r in lab.rules}
    assert not extra, f"{lab.name}: README lists rules lab.toml does not have: {sorted(extra)}"
    for t in autograder_tests(lab):
        row = [r for r in rows if len(r) >= 2 and r[1] == t["title"]]
        assert row, f"{lab.name}: README's grading table has no row titled {t['title']!r} ({t['name']})"
        assert row[0][0] == f"{t['points']:g}", f"{lab.name}: {t['name']} points differ in the README"


def test_a_rule_needs_id_text_and_points(tmp_path):
    (tmp_path / "x").mkdir()
    base = (
        'title = "x"\norder = 1\nsections = [5]\nexpected_seconds = 1\nnotebook = "n"\nquiz = "q"\n'
        'hints = ["h"]\n'
    )
    (tmp_path / "x" / "lab.toml").write_text(base + '[[rules]]\nid = "Bad Id"\ntext = "t"\npoints = 1\n')
    with pytest.raises(CatalogueError, match="kebab-case"):
        load_lab(tmp_path / "x" / "lab.toml", tmp_path)
    (tmp_path / "x" / "lab.toml").write_text(base + '[[rules]]\nid = "a"\ntext = "t"\n')
    with pytest.raises(CatalogueError, match="exactly `id`, `text` and `points`"):
        load_lab(tmp_path / "x" / "lab.toml", tmp_path)
