"""Shared fixtures for the kit's own tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celerylab.paths import kit_root

ROOT = kit_root()


MARK = "CELERYLAB_TEST_MARK"


def wait_until(condition, what: str, timeout: float) -> None:
    """Poll ``condition`` until it holds; at ``timeout`` fail the test, naming what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.05)  # polling, bounded by the deadline above


KIT_NAMES = ("celerylab-w", "celerylab-b")  # comm of workers' and beats' processes, forked or exec'd


def kit_processes(mark: str | None = None) -> set[int]:
    """Pids of celery workers/beat (main and pool processes) and valkey servers; with ``mark``, only those
    that inherited it.

    Other gradings may run on the same machine at the same time, so a test asks only about the processes
    started under its own mark (an environment variable every child inherits, even once reparented). A
    worker forked by the fork server (celerylab.engine.forkserver) rewrites its command line and
    environment block to its own, and is also named by comm.
    """
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if (
            ("celery" in args and ("worker" in args or "beat" in args) and "-A" in args)
            or "valkey-server" in args
            or process_name(int(pid)) in KIT_NAMES
        ):
            if mark is None or _has_mark(int(pid), mark):
                pids.add(int(pid))
    return pids


def _has_mark(pid: int, mark: str) -> bool:
    """Workers inherit the mark in their environment; valkey rewrites its environ block (proctitle), so
    it is recognised by its working folder, which the mark's temp folder holds."""
    try:
        if f"{MARK}={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return True
        return f"/{mark}/" in os.readlink(f"/proc/{pid}/cwd") + "/"
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def is_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for init to reap it (its parent, the worker, was killed first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.fixture
def no_orphans(monkeypatch, tmp_path_factory) -> str:
    """Fails the test if a kit process started during it (here or in a subprocess) is still alive after."""
    mark = uuid.uuid4().hex
    temp = tmp_path_factory.getbasetemp() / mark
    temp.mkdir()
    monkeypatch.setenv(MARK, mark)
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield mark
    left = kit_processes(mark)
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private state folder (progress, reports, logs) for one test."""
    monkeypatch.setenv("CELERYLAB_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


@contextlib.contextmanager
def ctrl_c_as_in_a_terminal() -> Iterator[None]:
    """Children started inside get Ctrl-C as from a terminal, even when this run ignores it (a
    non-interactive shell's background job does, and a child inherits an ignored signal): a test's SIGINT
    must reach them."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # exec resets a handled signal to default
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        yield


def run_celerylab(
    *args: str, env: dict | None = None, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess:
    """Runs ``celerylab`` in a subprocess. If the wait ends early (its timeout, pytest-timeout, Ctrl-C), the
    child gets a Ctrl-C and time to stop its workers, so a test that fails leaves nothing behind either."""
    with ctrl_c_as_in_a_terminal():
        child = subprocess.Popen(
            [sys.executable, "-m", "celerylab.cli", *args],
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    try:
        stdout, stderr = child.communicate(input, timeout=timeout)
    except BaseException:
        child.send_signal(signal.SIGINT)
        try:
            child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
        raise
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


@pytest.fixture(scope="session")
def bank():
    """The quiz bank as shipped (read-only in tests)."""
    from celerylab.study.quizbank import load_bank

    return load_bank()


@pytest.fixture
def quiz_home(tmp_path) -> Path:
    """A state folder whose quiz bank is already trusted, for the quiz and interview runners."""
    from tests.kit.quizdrive import trust_bank

    trust_bank(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def broker():
    """The default broker (local Redis here, else the embedded Valkey), for engine tests."""
    from celerylab.engine.brokers import open_broker

    with open_broker() as broker:
        yield broker


@pytest.fixture
def ns(broker):
    """A fresh namespace on it, cleaned up after the test."""
    from celerylab.engine.namespaces import Namespace

    namespace = Namespace(broker, "kit")
    yield namespace
    namespace.cleanup()


def grade_side_by_side(lab: str, tmp_path: Path, *options: str) -> list[tuple[int, dict, str]]:
    """Two ``celerylab grade <lab> --solutions`` at the same time on one broker: (exit code, JSON report,
    output) of each, for the tests that prove two gradings never see each other."""
    runs = []
    for n in (1, 2):
        (tmp_path / str(n)).mkdir()
        cmd = [sys.executable, "-m", "celerylab.cli", "grade", lab, "--solutions", *options]
        cmd += ["--report-dir", str(tmp_path / str(n))]
        runs.append(
            subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    reports = [tmp_path / str(n) / f"{lab}.json" for n in (1, 2)]
    return [
        (run.returncode, json.loads(report.read_text()) if report.exists() else {}, out)  # {}: no grade ran
        for run, report, out in zip(runs, reports, outputs, strict=True)
    ]
