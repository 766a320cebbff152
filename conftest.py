"""The kit's root conftest: autograders in tests/labs/ are graded by the celerylab plugin."""

pytest_plugins = ["celerylab.grading.plugin"]
