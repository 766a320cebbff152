"""The grading farm: `celerylab batch --farm` on `celerylab farm worker` processes.

Slow: two farm workers on Redis grade a class exactly as the local batch does (the same gradebook, cell by
cell but the seconds); on RabbitMQ one of two is SIGKILLed mid-grade and its submission is graded again by
the other, one row, the same score; a batch interrupted with Ctrl-C leaves no grade running on the farm.
Fast (default suite): the message (pack, unpack, limits), collecting once, the farm's settings and its
errors (no broker, no worker, another kit).
"""

from __future__ import annotations

import base64
import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from celerylab import cli
from celerylab.engine import processes
from celerylab.grading import batch, farm, labs, sandbox
from celerylab.grading.batch import Graded
from celerylab.grading.results import GradeReport, TestResult
from tests.kit.conftest import ROOT, ctrl_c_as_in_a_terminal, run_celerylab, wait_until
from tests.kit.test_batch import FULL, LAB, SOLUTION, hostile, make_class, read_gradebook

REDIS = os.environ.get("CELERYLAB_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ = os.environ.get("CELERYLAB_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
MUTANTS = ROOT / "solutions" / LAB / "mutants"


def a_queue() -> str:
    """A farm of the test's own on a shared broker: its queue, exchanges and key prefix are this name."""
    return f"celerylab.farm.test-{uuid.uuid4().hex[:8]}"


# -- farm workers as separate processes ----------------------------------------------------------------
def scratch_of(proc: subprocess.Popen) -> str:
    """Where a farm worker's grades run: every process of one of its grades works below it."""
    return f"{sandbox.scratch_parent()}/{farm.SCRATCH_PREFIX}{proc.pid}-"


def grade_processes(procs: dict[str, subprocess.Popen]) -> list[int]:
    """Live processes working in a farm worker's scratch folder: the grades it runs (sandbox, grader,
    embedded broker, workers). They run as other uids, in other sessions: only their folder finds them."""
    prefixes = tuple(scratch_of(p) for p in procs.values())
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(entry / "cwd").startswith(prefixes) and not _zombie(entry):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _zombie(entry: Path) -> bool:
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@contextmanager
def farm_workers(
    url: str, queue: str, names: list[str], logs: Path, env: dict[str, str] | None = None
) -> Iterator[dict[str, subprocess.Popen]]:
    """``celerylab farm worker`` per name (through the kit's process helper: killed if the test dies), all
    answering before the test goes on; at the end every one is stopped, none of their grades is left,
    their scratch folders are gone and the farm is removed from the broker."""
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in names:
            cmd = [sys.executable, "-m", "celerylab.cli", "farm", "worker", "--broker", url]
            cmd += ["--farm-queue", queue, "--name", f"{name}@%h"]
            procs[name] = processes.spawn(
                cmd, log_path=logs / f"{name}.log", cwd=ROOT, env={**os.environ, **(env or {})}
            )
        app = farm.make_app(url, queue)
        try:
            farm.wait_for_workers(app, LAB, wait=180, count=len(names))
        finally:
            app.close()
        yield procs
    finally:
        stopped = [proc for proc in procs.values() if proc.poll() is None]  # not those the test SIGKILLed
        for proc in procs.values():
            processes.kill_group(proc, signal.SIGTERM, wait=60)  # warm shutdown: its scratch folder goes
        farm.remove(url, queue)
    wait_until(lambda: not grade_processes(procs), "the farm workers' grades all gone", 30)
    left = [folder for proc in stopped for folder in scratch_folders(proc)]
    assert not left, f"scratch folders left: {left}"


def scratch_folders(proc: subprocess.Popen) -> list[Path]:
    return list(Path(sandbox.scratch_parent()).glob(f"{farm.SCRATCH_PREFIX}{proc.pid}-*"))


class FarmRun:
    """``celerylab batch --farm`` in a subprocess, its output read line by line as it comes."""

    def __init__(self, *args: str) -> None:
        with ctrl_c_as_in_a_terminal():  # its Ctrl-C test needs SIGINT live, however this suite was started
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celerylab.cli", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"},
            )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, pattern: str, timeout: float) -> re.Match:
        """The first output line matching ``pattern``, waited for (the batch's own report of an event)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s:\n{self.output}")
                self._changed.wait(min(left, 1.0))

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except BaseException:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
            raise
        self._reader.join(10)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def without_seconds(book: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {student: {k: v for k, v in row.items() if k != "seconds"} for student, row in book.items()}


# -- slow: real farm workers ---------------------------------------------------------------------------
@pytest.mark.slow  # ~2-3 min: the class graded twice, here and on the farm
@pytest.mark.timeout(900)
def test_two_farm_workers_give_the_local_batchs_gradebook(tmp_path, home, no_orphans):
    """A class (solution, skeleton, a mutant, hostile code, no tasks.py) on two farm workers on Redis:
    the same gradebook as the local batch, every grade in a farm worker's sandbox, both workers used."""
    probe = {"port": 0, "address": "", "marker": f"celerylab-farm-{uuid.uuid4().hex[:8]}", "home": str(home)}
    subs = make_class(
        tmp_path / "class",
        {
            "s1-solution": SOLUTION,
            "s2-skeleton": (ROOT / "labs" / LAB / "tasks.py").read_text(),
            "s3-mutant": (MUTANTS / "delay.py").read_text(),
            "s4-writes": hostile("writes", probe),
            "s5-kill-parent": hostile("kill-parent", probe),
            "s6-empty": None,
        },
    )
    local = run_celerylab(
        "batch", LAB, str(subs), "--out", str(tmp_path / "local"), "--jobs", "2", timeout=600
    )
    assert local.returncode == 1, local.stdout[-3000:]  # two got no grade (kill-parent, empty)
    queue = a_queue()
    with farm_workers(REDIS, queue, ["one", "two"], tmp_path) as workers:
        run = FarmRun(
            "batch", LAB, str(subs), "--out", str(tmp_path / "farm"), "--farm", REDIS, "--farm-queue", queue
        )
        code = run.finish(timeout=600)
        assert code == 1, run.output[-3000:]
        assert all(w.poll() is None for w in workers.values()), "a farm worker died"
    expected = read_gradebook(tmp_path / "local")
    assert expected["s1-solution"]["score"] == str(FULL) and expected["s2-skeleton"]["score"] == "1"
    local, farmed = without_seconds(expected), without_seconds(read_gradebook(tmp_path / "farm"))
    differ = {
        student: {
            k: (v, farmed.get(student, {}).get(k))
            for k, v in row.items()
            if farmed.get(student, {}).get(k) != v
        }
        for student, row in local.items()
    }
    assert farmed == local, f"(local, farm) where they differ: {differ}\n{run.output[-3000:]}"
    for sub in ("reports", "gradescope"):
        assert sorted(p.name for p in (tmp_path / "farm" / sub).iterdir()) == sorted(
            p.name for p in (tmp_path / "local" / sub).iterdir()
        )
    where = {
        s: re.search(r"^graded on (\w+)@", (tmp_path / "farm" / "logs" / f"{s}.log").read_text(), re.M)
        for s in expected
    }
    assert {m.group(1) for m in where.values() if m} == {"one", "two"}, run.output[-3000:]
    assert "network, mount and PID namespaces" in run.output  # the farm workers said how they sandbox
    written = [
        place for place in (ROOT, Path(probe["home"]), Path("/tmp")) if (place / probe["marker"]).exists()
    ]
    assert not written, f"a submission wrote outside its farm sandbox: {written}"


@pytest.mark.slow  # ~1-2 min
@pytest.mark.timeout(900)
def test_a_farm_worker_killed_mid_grade_loses_nothing_and_counts_once(tmp_path, home, no_orphans):
    """RabbitMQ farm, two workers: SIGKILL the one that reports a grade started; the other grades that
    submission again (acks_late + reject_on_worker_lost), one gradebook row each, the expected score.

    The kill is provoked on an event, not timed: the batch prints "<student>: grading on <worker>" when
    the worker reports the grade STARTED, and a grade then takes several real process starts (a sandbox,
    an embedded broker, workers) before it can end. Should a grade still end before the kill lands, the
    log says the first worker graded it and the assertions below fail: the race cannot pass by luck."""
    subs = make_class(tmp_path / "class", {"ada": SOLUTION, "bo": (MUTANTS / "delay.py").read_text()})
    expected = {"ada": str(FULL), "bo": str(FULL - 2)}
    queue = a_queue()
    with farm_workers(RABBITMQ, queue, ["kill1", "kill2"], tmp_path) as workers:
        run = FarmRun(
            "batch", LAB, str(subs), "--out", str(tmp_path / "out"), "--farm", RABBITMQ, "--farm-queue", queue
        )
        try:
            victim = run.wait_line(r"^(\w+): grading on kill1@", timeout=300).group(1)
            processes.kill_group(workers["kill1"], signal.SIGKILL)
            run.wait_line(rf"^{victim}: graded again on kill2@", timeout=300)
            code = run.finish(timeout=600)
        finally:
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGINT)
                run.proc.wait(60)
        assert code == 0, run.output[-3000:]
        assert workers["kill2"].poll() is None
    book = read_gradebook(tmp_path / "out")
    assert {s: row["score"] for s, row in book.items()} == expected, run.output[-3000:]
    with (tmp_path / "out" / "gradebook.csv").open() as f:
        assert [row["student"] for row in csv.DictReader(f)] == ["ada", "bo"]  # one row each
    assert not scratch_folders(workers["kill1"])  # swept by kill2 before it graded the submission again
    log = (tmp_path / "out" / "logs" / f"{victim}.log").read_text()
    assert re.search(r"^graded on kill2@\S+ \(redelivered\)$", log, re.M), log[:500]
    assert "ignored" not in run.output  # nothing arrived twice: the killed grade never reported


@pytest.mark.slow  # ~1 min
@pytest.mark.timeout(600)
def test_ctrl_c_of_a_farm_batch_stops_its_grades_on_the_farm(tmp_path, home, no_orphans):
    """Ctrl-C while a grade runs on the farm: the batch revokes its grades, the running one is killed,
    the queued one is discarded when its turn comes, and nothing of either is left running."""
    subs = make_class(tmp_path / "class", {"ada": SOLUTION, "bo": SOLUTION})
    queue = a_queue()
    with farm_workers(REDIS, queue, ["solo"], tmp_path) as workers:
        run = FarmRun(
            "batch", LAB, str(subs), "--out", str(tmp_path / "out"), "--farm", REDIS, "--farm-queue", queue
        )
        run.wait_line(r"^\w+: grading on solo@", timeout=300)
        wait_until(lambda: grade_processes(workers), "the grade's processes start", 60)
        run.proc.send_signal(signal.SIGINT)
        assert run.finish(timeout=120) == 130, run.output[-3000:]
        log = tmp_path / "solo.log"
        wait_until(lambda: "Discarding revoked task" in log.read_text(), "the queued grade is discarded", 120)
        wait_until(lambda: not grade_processes(workers), "the running grade is killed", 60)
        assert workers["solo"].poll() is None  # the farm worker itself carries on
        assert not (tmp_path / "out" / "gradebook.csv").exists()
        said = log.read_text()
        assert "Terminating" in said and "graded ada" not in said and "graded bo" not in said, said[-3000:]


@pytest.mark.slow  # ~1 min
@pytest.mark.timeout(900)
def test_a_farm_worker_stopped_with_ctrl_c_mid_grade_hands_the_grade_back(tmp_path, home, no_orphans):
    """Ctrl-C twice (Celery's cold shutdown) on the only farm worker while it grades: it exits, nothing of
    its grade is left, and a farm worker started afterwards grades the submission: lost by nobody."""
    subs = make_class(tmp_path / "class", {"ada": SOLUTION})
    queue = a_queue()
    with farm_workers(RABBITMQ, queue, ["first"], tmp_path) as workers:
        run = FarmRun(
            "batch", LAB, str(subs), "--out", str(tmp_path / "out"), "--farm", RABBITMQ, "--farm-queue", queue
        )
        try:
            run.wait_line(r"^ada: grading on first@", timeout=300)
            wait_until(lambda: grade_processes(workers), "the grade's processes start", 60)
            first, log = workers["first"], tmp_path / "first.log"
            os.killpg(first.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
            wait_until(lambda: "Hitting Ctrl+C again" in log.read_text(), "the warm shutdown begins", 60)
            os.killpg(first.pid, signal.SIGINT)
            first.wait(timeout=120)
            wait_until(lambda: not grade_processes(workers), "its grade is stopped", 60)
            assert not list(Path(sandbox.scratch_parent()).glob(f"{farm.SCRATCH_PREFIX}{first.pid}-*"))
            cmd = [sys.executable, "-m", "celerylab.cli", "farm", "worker", "--broker", RABBITMQ]
            cmd += ["--farm-queue", queue, "--name", "second@%h"]
            workers["second"] = processes.spawn(cmd, log_path=tmp_path / "second.log", cwd=ROOT)
            run.wait_line(r"^ada: graded again on second@", timeout=300)
            code = run.finish(timeout=600)
        finally:
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGINT)
                run.proc.wait(60)
    assert code == 0, run.output[-3000:]
    assert read_gradebook(tmp_path / "out")["ada"]["score"] == str(FULL)


@pytest.mark.slow  # ~30 s
@pytest.mark.timeout(600)
def test_a_batch_whose_farm_goes_quiet_says_so_instead_of_hanging(tmp_path, home, no_orphans):
    """The only farm worker is SIGKILLed mid-grade: after --farm-wait seconds without an answer the batch
    stops waiting, gives each outstanding submission a verdict that says why, and exits 1."""
    subs = make_class(tmp_path / "class", {"ada": SOLUTION, "bo": SOLUTION})
    queue = a_queue()
    with farm_workers(REDIS, queue, ["only"], tmp_path) as workers:
        killed = workers["only"]
        run = FarmRun(
            "batch",
            LAB,
            str(subs),
            "--out",
            str(tmp_path / "out"),
            "--farm",
            REDIS,
            "--farm-queue",
            queue,
            "--farm-wait",
            "5",
        )
        try:
            run.wait_line(r"^ada: grading on only@", timeout=300)
            processes.kill_group(killed, signal.SIGKILL)
            code = run.finish(timeout=300)
        finally:
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGINT)
                run.proc.wait(60)
    left = scratch_folders(killed)
    with farm_workers(REDIS, a_queue(), ["sweeper"], tmp_path):  # a SIGKILLed worker's folder: the next
        assert left and not any(folder.exists() for folder in left)  # farm worker started here removes it
    assert code == 1, run.output[-3000:]
    book = read_gradebook(tmp_path / "out")
    assert sorted(book) == ["ada", "bo"]
    for row in book.values():
        assert row["score"] == "0" and row["verdict"].startswith("no grade: no farm worker answered for 5 s")


@pytest.mark.slow  # ~15 s: one farm worker's start
@pytest.mark.timeout(600)
def test_a_batch_refuses_a_farm_worker_on_another_kit(tmp_path, home, no_orphans):
    """A farm worker whose checkout grades the lab otherwise (its lab.toml differs): the batch refuses the
    farm before sending anything, naming the worker and what differs."""
    other = tmp_path / "other-kit"
    for part in ("celerylab", "labs", "tests/labs"):
        shutil.copytree(ROOT / part, other / part, ignore=shutil.ignore_patterns("__pycache__"))
    toml = other / "labs" / LAB / "lab.toml"
    toml.write_text(toml.read_text() + "\n# an older copy of the lab\n")
    make_class(tmp_path / "class", {"ada": SOLUTION})
    queue = a_queue()
    with farm_workers(REDIS, queue, ["old"], tmp_path, env={"CELERYLAB_ROOT": str(other)}):
        done = run_celerylab(
            "batch",
            LAB,
            str(tmp_path / "class"),
            "--out",
            str(tmp_path / "out"),
            "--farm",
            REDIS,
            "--farm-queue",
            queue,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(rf"refusing to grade .* old@\S+: lab {LAB} \w+ \(this batch: \w+\)", done.stdout), (
        done.stdout
    )
    assert not (tmp_path / "out").exists()


# -- fast: no farm worker needed ------------------------------------------------------------------------
def test_a_submission_travels_as_a_zip_and_comes_out_the_same(tmp_path):
    src = tmp_path / "ada"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "tasks.py").write_text(SOLUTION)
    (src / "pkg" / "data.bin").write_bytes(bytes(range(256)))
    (src / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"stale")
    (src / "link.py").symlink_to("/etc/passwd")
    data = farm.pack(src)
    farm.unpack(data, tmp_path / "out")
    got = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert got == ["pkg/data.bin", "tasks.py"]  # no bytecode, no link to the sender's machine
    assert (tmp_path / "out" / "tasks.py").read_text() == SOLUTION
    assert (tmp_path / "out" / "pkg" / "data.bin").read_bytes() == bytes(range(256))


def test_the_size_limit_says_what_to_do(tmp_path):
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "data.bin").write_bytes(os.urandom(300_000))  # random: does not compress
    with pytest.raises(farm.PackError, match=r"over 0.25 MB zipped.*grade it with a local batch"):
        farm.pack(tmp_path / "big", limit=256 * 1024)
    assert farm.pack(tmp_path / "big", limit=1024**2)


def _zip(members: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_zip({"../escape.py": b"x"}), "unsafe file name"),
        (_zip({"/etc/cron.d/x": b"x"}), "unsafe file name"),
        (_zip({"bomb.bin": bytes(2 * 1024**2)}), "unpacks to over 1 MB"),
        ("not base64 at all!", "not a base64 zip"),
        (base64.b64encode(b"plain text").decode(), "not a base64 zip"),
    ],
)
def test_a_farm_worker_refuses_a_message_it_should_not_unpack(tmp_path, data, message):
    with pytest.raises(farm.PackError, match=message):
        farm.unpack(data, tmp_path / "out", limit=1024**2)
    assert not (tmp_path / "escape.py").exists()


def _report(points: float) -> GradeReport:
    return GradeReport(LAB, "x", "b", [TestResult("t", "one", 2, points, "pass" if points == 2 else "fail")])


def test_a_student_is_collected_once_and_a_late_duplicate_is_said(tmp_path):
    job = batch.Batch(labs.find(LAB), tmp_path)
    sub = batch.Submission("ada", tmp_path, 0)
    heard: list[str] = []
    job._on_note = heard.append
    first = job.collect(sub, Graded(_report(2), "full marks", "first log", 5.0, "one@h"))
    assert first is not None and first.score == 2
    assert job.collect(sub, Graded(_report(0), "1 of 1 tests failed", "second log", 6.0, "two@h")) is None
    assert heard == [job.notes[0]] and "ada: another grade arrived from two@h" in heard[0]
    assert "ignored, so they are counted once" in heard[0]
    assert "first log" in (tmp_path / "logs" / "ada.log").read_text()  # the first grade's files stay
    assert GradeReport.read(tmp_path / "reports" / "ada.json").score == 2


def test_a_grade_round_trips_as_the_tasks_json_result():
    graded = Graded(_report(1), "1 of 1 tests failed; first: x", "log", 4.5)
    meta = {"status": "SUCCESS", "result": {**graded.to_dict(), "where": "one@h", "redelivered": True}}
    back = farm.FarmBatch._graded(meta)
    assert (back.report.to_dict(), back.verdict, back.log, back.seconds) == (
        graded.report.to_dict(),
        graded.verdict,
        "log",
        4.5,
    )
    assert back.where == "one@h (redelivered)"
    refused = farm.FarmBatch._graded({"status": "SUCCESS", "result": {"refused": "farm worker w runs"}})
    assert refused.report is None and refused.verdict == "not graded: farm worker w runs"
    failed = {"status": "FAILURE", "result": {"exc_type": "TimeLimitExceeded", "exc_message": ["420"]}}
    assert "task failed (TimeLimitExceeded" in farm.FarmBatch._graded(failed).verdict
    assert "revoked" in farm.FarmBatch._graded({"status": "REVOKED", "result": None}).verdict


def test_the_farm_is_ordinary_celery_isolated_by_its_queue_name():
    conf = farm.settings(REDIS, "celerylab.farm.a")
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["broker_transport_options"]["global_keyprefix"] == "celerylab.farm.a:"
    assert (
        conf["broker_transport_options"]["visibility_timeout"]
        > batch.DEFAULT_TIMEOUT + farm.TIME_LIMIT_MARGIN
    )
    assert {conf["task_default_queue"], conf["control_exchange"]} == {"celerylab.farm.a"}
    assert cli.FARM_QUEUE == farm.DEFAULT_QUEUE  # the CLI's default, not imported there (start-up time)
    amqp = farm.settings(RABBITMQ, "celerylab.farm.b")
    assert amqp["result_backend"] == "rpc://" and "broker_transport_options" not in amqp
    with pytest.raises(farm.FarmError, match="Redis/Valkey or RabbitMQ"):
        farm.settings("sqla+sqlite:///x.db")
    with pytest.raises(farm.FarmError, match="--timeout must stay under"):
        farm.FarmBatch(labs.find(LAB), Path("."), timeout=farm.REDIS_VISIBILITY, farm=REDIS)


def test_a_worker_on_another_kit_is_refused(monkeypatch, tmp_path):
    ours = farm.identity(LAB)
    other = {**ours, "kit": "0123456789ab", "labs": {LAB: ours["labs"][LAB]}}
    assert farm.mismatch(ours, ours, LAB) == ""
    assert "kit 0123456789ab (this batch: " in farm.mismatch(other, ours, LAB)
    assert "no lab first_task" in farm.mismatch({**ours, "labs": {}}, ours, LAB)
    workers = [farm.Hello("good@h", ours, "sandbox: off", 1), farm.Hello("old@h", other, "sandbox: off", 1)]
    monkeypatch.setattr(farm, "check_reachable", lambda app: None)
    monkeypatch.setattr(farm, "wait_for_workers", lambda app, lab, wait: workers)
    job = farm.FarmBatch(labs.find(LAB), tmp_path, farm=REDIS, queue=a_queue())
    with pytest.raises(farm.FarmError, match=r"refusing to grade .* old@h: kit 0123456789ab") as caught:
        job.connect()
    assert "good@h" not in str(caught.value)


def test_an_unreachable_farm_broker_is_said_at_once(tmp_path, home):
    make_class(tmp_path / "class", {"ada": SOLUTION})
    done = run_celerylab(
        "batch", LAB, str(tmp_path / "class"), "--farm", "redis://127.0.0.1:1/0", timeout=120
    )
    assert done.returncode == 2
    assert "the farm broker at redis://127.0.0.1:1/0 cannot be reached" in done.stdout, (
        done.stdout + done.stderr
    )
    worker = run_celerylab("farm", "worker", "--broker", "redis://127.0.0.1:1/0", timeout=120)
    assert worker.returncode == 2 and "cannot be reached" in worker.stdout, worker.stdout + worker.stderr


def test_no_farm_worker_is_said_after_a_bounded_wait(tmp_path, home):
    make_class(tmp_path / "class", {"ada": SOLUTION})
    queue = a_queue()
    try:
        done = run_celerylab(
            "batch",
            LAB,
            str(tmp_path / "class"),
            "--out",
            str(tmp_path / "out"),
            "--farm",
            REDIS,
            "--farm-queue",
            queue,
            "--farm-wait",
            "2",
        )
    finally:
        farm.remove(REDIS, queue)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"no farm worker answered on queue {queue}" in done.stdout
    assert f"celerylab farm worker --broker {REDIS} --farm-queue {queue}" in done.stdout
    assert not (tmp_path / "out").exists()
