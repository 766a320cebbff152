"""Hidden tests of the first_task lab: an example of what an instructor adds and learners never see.

A hidden test module is an ordinary autograder module (same fixtures, markers, points and verdicts) named
``test_<lab>__<what>.py``: the part before ``__`` says which lab it belongs to. ``celerylab batch`` runs the
kit's own (``tests/hidden/<lab>/``) with every grade, ``--extra-tests DIR`` adds a folder of them, and
``celerylab export starter`` leaves ``tests/hidden/`` out. In the report and the gradebook they are marked
hidden.
"""

from __future__ import annotations

import pytest

from celerylab.grading.session import expect


@pytest.mark.points(1)
@pytest.mark.deadline(15)
@pytest.mark.rules("registered-name")
def test_billing_multiply_serves_another_service(lab):
    """another service sends billing.multiply(3, -4) by name and reads -12"""
    lab.worker()
    result = lab.session.app.send_task("billing.multiply", args=(3, -4))
    lab.wait(result)
    expect(
        lab.timeline.state(result.id) == "SUCCESS",
        "a message for billing.multiply must find a task of that name on the worker.",
        expected="SUCCESS",
        observed=lab.timeline.describe(result.id),
        hint='register the task under its name: @app.task(name="billing.multiply").',
    )
    value = lab.result(result)
    expect(value == -12, "billing.multiply(3, -4) must return -12.", observed=repr(value))
