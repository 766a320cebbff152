"""`celerylab batch`: a class graded at once, each submission in its sandbox, hostile ones included.

The class-of-12 test (``slow``) grades solutions, the skeleton, mutants and every hostile case, and
checks each student's score, the gradebook's rows and columns, and that nothing escaped: no connection
reached the machine, no file was written outside the grade's folder, nothing was left running. The fast
test in the default suite grades three folders; the rest needs no worker at all.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import threading
import uuid
from pathlib import Path

import pytest
import redis

from celerylab.grading import batch, gradebook, sandbox
from celerylab.grading.gradejob import Run
from celerylab.grading.results import GradeReport, TestResult
from tests.kit.conftest import ROOT, run_celerylab

LAB = "first_task"  # the fastest lab: ~7 s a grade
SOLUTION = (ROOT / "solutions" / LAB / "tasks.py").read_text()
FULL = 11  # 10 points of the autograder + 1 of the kit's hidden test (tests/hidden/first_task/)

needs_sandbox = pytest.mark.skipif(not sandbox.detect().full, reason=sandbox.detect().statement)


def hostile(kind: str, probe: dict) -> str:
    """A submission that attacks the machine at import; the solution follows where it survives that."""
    port, marker, home = probe["port"], probe["marker"], probe["home"]
    attacks = {
        "fork-bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
        "        pass\n",
        "memory-hog": "blocks = []\nwhile True:\n    blocks.append(bytearray(256 * 1024 * 1024))\n",
        "busy-loop": "while True:\n    pass\n",
        "kill-parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "network": (
            "import socket, contextlib\n"
            f"for host in ('127.0.0.1', {probe['address']!r}, '1.1.1.1'):\n"
            "    with contextlib.suppress(OSError), socket.create_connection((host, "
            f"{port}), timeout=1) as s:\n"
            f"        s.sendall(b'{marker}')\n"
            "with contextlib.suppress(Exception):\n"
            "    import redis\n"
            f"    redis.Redis(socket_timeout=1, socket_connect_timeout=1).set('{marker}', 1)\n"
        ),
        "writes": (
            "import contextlib, pathlib\n"
            f"for place in ({str(ROOT / 'labs' / LAB)!r}, {str(ROOT)!r}, {home!r}, '/tmp', '/var/tmp'):\n"
            "    with contextlib.suppress(OSError):\n"
            f"        (pathlib.Path(place) / '{marker}').write_text('pwned')\n"
        ),
    }
    return attacks[kind] + "\n" + SOLUTION


@pytest.fixture
def listener():
    """A TCP server on every address of this machine: a hostile submission's connection would land here."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    heard: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    heard.append(conn.recv(100) or b"(connected)")
                except OSError:
                    heard.append(b"(connected)")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    marker = f"celerylab-hostile-{uuid.uuid4().hex[:8]}"
    yield {
        "port": server.getsockname()[1],
        "address": address,
        "marker": marker,
        "heard": heard,
        "home": os.path.expanduser("~"),
    }
    stop.set()
    thread.join(2)
    server.close()


def make_class(root: Path, students: dict[str, str | None]) -> Path:
    for name, code in students.items():
        (root / name).mkdir(parents=True)
        if code is not None:
            (root / name / "tasks.py").write_text(code)
    return root


def read_gradebook(out: Path) -> dict[str, dict[str, str]]:
    with (out / "gradebook.csv").open() as f:
        return {row["student"]: row for row in csv.DictReader(f)}


def escaped(probe: dict) -> list[str]:
    """What a hostile submission managed outside its sandbox."""
    found = [f"the listener heard {b!r}" for b in probe["heard"]]
    places = [ROOT / "labs" / LAB, ROOT, Path(probe["home"]), Path("/tmp"), Path("/var/tmp")]
    found += [f"wrote {p / probe['marker']}" for p in places if (p / probe["marker"]).exists()]
    client = redis.Redis(socket_timeout=1)
    try:
        if client.exists(probe["marker"]):
            found.append("set a key on the machine's Redis")
    except redis.RedisError:
        pass
    return found


def batch_args(lab: str, subs: Path, out: Path, *more: str) -> list[str]:
    return ["batch", lab, str(subs), "--out", str(out), "--jobs", "2", *more]


@pytest.mark.slow  # ~40 s: three grades in sandboxes; the default suite keeps the fast checks
@needs_sandbox
def test_a_small_class_is_graded_in_sandboxes(tmp_path, home, no_orphans, listener):
    """Smoke: a solution, the skeleton and a submission that writes everywhere and phones home."""
    subs = make_class(
        tmp_path / "class",
        {
            "ada": SOLUTION,
            "bo": (ROOT / "labs" / LAB / "tasks.py").read_text(),
            "eve": hostile("writes", listener) + "\n" + hostile("network", listener),
        },
    )
    done = run_celerylab(*batch_args(LAB, subs, tmp_path / "out"), timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "network, mount and PID namespaces" in done.stdout
    book = read_gradebook(tmp_path / "out")
    assert [book[s]["score"] for s in ("ada", "bo", "eve")] == [str(FULL), "1", str(FULL)], book
    assert book["ada"]["verdict"] == "full marks" and book["ada"]["hidden"] == "1"
    assert not escaped(listener)
    for student in ("ada", "bo", "eve"):
        report = json.loads((tmp_path / "out" / "reports" / f"{student}.json").read_text())
        assert report["schema"] == "celerylab.results/1" and report["target"] == student
        gs = json.loads((tmp_path / "out" / "gradescope" / student / "results.json").read_text())
        assert gs["score"] == report["score"]


@pytest.mark.slow
@needs_sandbox
def test_a_class_of_twelve_with_every_hostile_case(tmp_path, home, no_orphans, listener):
    """Solutions, skeleton, mutants and each hostile case: the expected score each, one row each, and
    nothing reached beyond its sandbox."""
    mutants = ROOT / "solutions" / LAB / "mutants"
    expected = {
        "s01-solution": FULL,
        "s02-variant": FULL,
        "s03-skeleton": 1,
        "s04-mutant-delay": 9,
        "s05-mutant-json": 10,
        "s06-mutant-ignore": 10,
        "s07-fork-bomb": 0,
        "s08-memory-hog": 0,
        "s09-busy-loop": 0,
        "s10-kill-parent": 0,
        "s11-network": FULL,
        "s12-writes": FULL,
        "s13-empty": 0,
    }
    code = {
        "s01-solution": SOLUTION,
        "s02-variant": (ROOT / "solutions" / LAB / "variants" / "by-name.py").read_text(),
        "s03-skeleton": (ROOT / "labs" / LAB / "tasks.py").read_text(),
        "s04-mutant-delay": (mutants / "delay.py").read_text(),
        "s05-mutant-json": (mutants / "json-result.py").read_text(),
        "s06-mutant-ignore": (mutants / "ignore-result.py").read_text(),
        **{
            f"s{n:02d}-{k}": hostile(k, listener)
            for n, k in enumerate(
                ["fork-bomb", "memory-hog", "busy-loop", "kill-parent", "network", "writes"], 7
            )
        },
        "s13-empty": None,
    }
    subs = make_class(tmp_path / "class", code)
    out = tmp_path / "out"
    done = run_celerylab(*batch_args(LAB, subs, out), timeout=900)
    book = read_gradebook(out)
    assert sorted(book) == sorted(expected), done.stdout[-3000:]
    scores = {s: float(row["score"]) for s, row in book.items()}
    assert scores == expected, {s: book[s]["verdict"] for s in book if scores[s] != expected[s]}
    assert all(row["max"] == str(FULL) for row in book.values())
    assert "cannot be loaded" in book["s09-busy-loop"]["verdict"]
    assert "did not finish within" in book["s09-busy-loop"]["verdict"]
    assert book["s10-kill-parent"]["verdict"].startswith("no grade")
    assert book["s13-empty"]["verdict"].startswith("no tasks.py")
    assert all("Traceback" not in row["verdict"] for row in book.values())
    assert not escaped(listener)
    assert done.returncode == 1  # two got no grade: the one that killed its grader, the empty folder
    summary = json.loads((out / "summary.json").read_text())
    assert summary["students"]["s01-solution"]["status"] == "pass"
    assert summary["students"]["s10-kill-parent"]["status"] == "error"


@pytest.mark.slow
def test_without_the_sandbox_the_batch_says_so_and_still_grades(tmp_path, home, no_orphans):
    subs = make_class(
        tmp_path / "class",
        {
            "ada": SOLUTION,
            "kim": hostile("kill-parent", {"port": 0, "address": "", "marker": "", "home": ""}),
        },
    )
    done = run_celerylab(*batch_args(LAB, subs, tmp_path / "out", "--sandbox", "off"), timeout=400)
    book = read_gradebook(tmp_path / "out")
    assert book["ada"]["score"] == str(FULL) and book["kim"]["verdict"].startswith("no grade")
    assert "sandbox: off" in done.stdout


# -- no workers needed -------------------------------------------------------------------------------


def test_the_fallback_is_stated():
    support = sandbox.Support("limits", "not root")
    assert "falling back to limits only" in support.statement and "not root" in support.statement


def test_a_sandboxed_batch_refuses_a_broker_it_cannot_reach(tmp_path):
    from celerylab.grading import labs

    with pytest.raises(batch.BatchError, match="--broker embedded"):
        batch.Batch(labs.find(LAB), tmp_path, broker="redis", support=sandbox.Support("full", ""))


def _report(points: list[tuple[str, float, bool]]) -> GradeReport:
    tests = [
        TestResult(
            id=f"t{n}",
            title=title,
            max_points=1,
            points=p,
            status="pass" if p else "fail",
            message="" if p else "it broke\nexpected: x",
            hidden=hidden,
        )
        for n, (title, p, hidden) in enumerate(points)
    ]
    return GradeReport(lab=LAB, target="x", broker="b", tests=tests)


def test_gradebook_rows_columns_and_summary(tmp_path):
    full = _report([("one", 1, False), ("two", 1, False), ("secret", 1, True)])
    part = _report([("one", 1, False), ("two", 0, False), ("secret", 0, True)])
    outcomes = [
        batch.Outcome("ada", full, "full marks", 5.0, True),
        batch.Outcome("bo", part, batch.verdict_of(Run(part, ""), 60), 6.0, True),
        batch.Outcome("cy", None, batch.verdict_of(Run(None, "", exit_code=-9), 60), 1.0, False),
        batch.Outcome("di", None, batch.verdict_of(Run(None, "", timed_out=True), 60), 60.0, False),
    ]
    csv_path, summary_path = gradebook.write(LAB, outcomes, tmp_path)
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == [
        "student",
        "score",
        "max",
        "one",
        "two",
        "hidden: secret",
        "hidden",
        "seconds",
        "verdict",
    ]
    assert rows[1][:7] == ["ada", "3", "3", "1", "1", "1", "1"]
    assert rows[2][:7] == ["bo", "1", "3", "1", "0", "0", "0"] and "2 of 3 tests failed" in rows[2][8]
    assert rows[3][:7] == ["cy", "0", "3", "0", "0", "0", "0"] and rows[3][8].startswith("no grade")
    assert "ran past its 60 s limit" in rows[4][8]
    summary = json.loads(summary_path.read_text())
    assert summary["students"]["ada"]["status"] == "pass" and summary["totals"]["errors"] == 2
    assert summary["students"]["bo"]["tests"][1] == {
        "name": "two",
        "status": "fail",
        "score": 0,
        "max_score": 1,
        "message": "it broke\nexpected: x",
        "hidden": False,
        "duration": 0.0,
    }
    assert "visibility" in full.to_gradescope()["tests"][2]  # hidden on Gradescope until published


def test_plan_is_one_submission_per_folder(tmp_path):
    make_class(tmp_path, {"b b": "x", "a": "y", ".git": None})
    (tmp_path / "notes.txt").write_text("")
    assert [(s.student, s.folder.name) for s in batch.plan(tmp_path)] == [("a", "a"), ("b_b", "b b")]
    with pytest.raises(batch.BatchError):
        batch.plan(tmp_path / "nope")
    shutil.rmtree(tmp_path)
