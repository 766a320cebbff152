"""JupyterLab's session manager in the browser test (``--ServerApp.session_manager_class``).

Notebooks run side by side in one JupyterLab, and the test checks that no scratch folder of a notebook's
kernel outlives it: each kernel gets a temp folder (``TMPDIR``) and a state folder (``CELERYLAB_HOME``) of
its own, under ``$CELERYLAB_BROWSER_KERNELS/<notebook>/``, so one notebook is never blamed for another's
folders (and two quiz widgets never write one progress file).
"""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_server.services.sessions.sessionmanager import SessionManager

KERNELS_ENV = "CELERYLAB_BROWSER_KERNELS"


def kernel_dir(base: Path, notebook: str) -> Path:
    """Where the kernel of ``notebook`` (its path or name) keeps its folders."""
    return base / Path(notebook).stem


class PerNotebookSessions(SessionManager):
    def get_kernel_env(self, path: str | None, name: str | None = None) -> dict[str, str]:
        env = super().get_kernel_env(path, name)
        if not path or KERNELS_ENV not in os.environ:
            return env
        folder = kernel_dir(Path(os.environ[KERNELS_ENV]), path)
        (folder / "tmp").mkdir(parents=True, exist_ok=True)  # a TMPDIR that is missing means /tmp
        return {**env, "TMPDIR": str(folder / "tmp"), "CELERYLAB_HOME": str(folder / "state")}
