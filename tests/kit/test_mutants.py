"""Grading the graders, for real (slow): every mutant loses points on the tests of its rule and only
there; every variant and the reference get full marks, on every broker. `celerylab check` does the work,
for every lab from one pool of grades (it stays full from one lab to the next); its output has a table per
lab and a line for each problem, which a failure shows."""

from __future__ import annotations

import pytest

from tests.kit.conftest import run_celerylab

KINDS = {  # the mutants and the solution on the default broker; the variants on every broker
    "redis": ("solution", "variant", "mutant"),
    "embedded": ("variant",),
    "rabbitmq": ("variant",),
}


@pytest.mark.mutants
@pytest.mark.timeout(3700)  # every lab's mutants, each graded for real
@pytest.mark.parametrize("broker", list(KINDS))
def test_every_mutant_is_caught_where_its_rule_is_judged_and_every_variant_gets_full_marks(
    broker, home, no_orphans
):
    only = [option for kind in KINDS[broker] for option in ("--only", kind)]
    done = run_celerylab("check", *only, "--broker", broker, "--jobs", "3", timeout=3600)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
