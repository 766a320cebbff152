"""`celerylab watch`: a save re-grades (failures first), a save mid-grade restarts, Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

from tests.kit.conftest import ROOT

LAB = "first_task"


def _ctrl_c_live() -> None:
    signal.signal(
        signal.SIGINT, signal.SIG_DFL
    )  # as from a terminal, even when pytest runs in the background


class Reader:
    """The watcher's output, line by line, as it comes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(ln) for ln in proc.stdout], daemon=True).start()

    def until(self, text: str, timeout: float = 120) -> list[str]:
        """Lines up to the first one holding ``text``."""
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            got.append(line)
            self.seen.append(line)
            if text in line:
                return got
        raise AssertionError(f"no {text!r} within {timeout:.0f} s; output:\n{''.join(self.seen)[-4000:]}")


def test_a_save_that_fixes_the_failure(tmp_path, home, no_orphans):
    folder = tmp_path / LAB
    folder.mkdir()
    shutil.copyfile(ROOT / "solutions" / LAB / "mutants" / "delay.py", folder / "tasks.py")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celerylab.cli",
            "watch",
            LAB,
            "--target",
            str(folder),
            "--broker",
            "embedded",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        start_new_session=True,
        preexec_fn=_ctrl_c_live,
    )
    out = Reader(proc)
    try:
        assert "broker kept warm: embedded" in "".join(out.until("watching"))
        first = "".join(out.until("waiting for a save"))
        assert "Score: 8/10" in first and "first failure: start_add(2, 3)" in first
        assert "expected:" in first  # the verdict in full, not its first line

        shutil.copyfile(ROOT / "solutions" / LAB / "mutants" / "json-result.py", folder / "tasks.py")
        out.until("grading first_task (last time's 1 failed test(s) first)")  # the grade is under way
        shutil.copyfile(ROOT / "solutions" / LAB / "tasks.py", folder / "tasks.py")
        out.until("saved during the grade: cancelled, grading again")
        fixed = out.until("waiting for a save")
        text = "".join(fixed)
        assert "Score: 10/10" in text and "full marks" in text
        ticks = [ln for ln in fixed if "✓" in ln]
        assert "start_add(2, 3)" in ticks[0], "last time's failure runs first"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 130, "".join(out.seen)[-2000:]
    out.until("interrupted", timeout=10)  # the reader thread has every line, to the end of the output
