"""Where the kit lives on disk: its root (labs/, solutions/, tests/) and its state folder."""

from __future__ import annotations

import os
from pathlib import Path


def kit_root() -> Path:
    """The checkout that holds labs/ and tests/ (``$CELERYLAB_ROOT`` overrides)."""
    if env := os.environ.get("CELERYLAB_ROOT"):
        return Path(env).resolve()
    return Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """Progress and reports (``$CELERYLAB_HOME`` overrides, e.g. for tests)."""
    if env := os.environ.get("CELERYLAB_HOME"):
        return Path(env)
    return kit_root() / ".celerylab"
