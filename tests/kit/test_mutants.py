"""Grading the graders, for real (slow): every mutant loses points on the tests of its rule and only
there; every variant and the reference get full marks, on every broker. `celerylab check` does the work."""

from __future__ import annotations

import pytest

from celerylab.grading import labs
from tests.kit.conftest import run_celerylab

LABS = [lab.name for lab in labs.catalogue()]


@pytest.mark.mutants
@pytest.mark.timeout(1900)  # a whole lab's mutants, each graded for real
@pytest.mark.parametrize("lab", LABS)
def test_every_mutant_is_caught_where_its_rule_is_judged(lab, home, no_orphans):
    done = run_celerylab("check", lab, "--only", "mutant", "--broker", "redis", timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


@pytest.mark.mutants
@pytest.mark.timeout(1900)
@pytest.mark.parametrize("broker", ["embedded", "redis", "rabbitmq"])
@pytest.mark.parametrize("lab", LABS)
def test_every_variant_gets_full_marks(lab, broker, home, no_orphans):
    done = run_celerylab("check", lab, "--only", "variant", "--broker", broker, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
