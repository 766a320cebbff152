"""Where a grade's time goes, against the floor no grader can beat.

    python benchmarks/grade_latency.py [--lab retries ...] [--broker redis] [--runs 3]

For each lab it times `celerylab grade <lab> --solutions` end to end (a fresh process, as a learner runs
it) and splits it with the phases the grade report records: broker start, session setup (import probe,
event recorder), worker start, the tests themselves, teardown, and the rest (Python and pytest start-up).
The floor, measured in the same run: one bare `celery worker` (plain app, no kit) from spawn to its first
ping reply, plus one task round trip. The target: a grade costs at most 2 x (floor + the waiting the
lab's own rules impose: the backoff, countdown and interval waits the report counts as `backoff_wait`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celerylab.engine.brokers import open_broker  # noqa: E402
from celerylab.grading import labs  # noqa: E402


def floor(broker_url: str, backend_url: str) -> float:
    """Seconds from spawning a bare prefork worker to its first ping reply, plus one task round trip."""
    queue = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "tasks.py").write_text(
            textwrap.dedent(f"""
            from celery import Celery
            app = Celery("bench", broker={broker_url!r}, backend={backend_url!r})
            app.conf.task_default_queue = {queue!r}
            @app.task
            def add(x, y):
                return x + y
        """)
        )
        client = Celery("bench", broker=broker_url, backend=backend_url, set_as_current=False)
        client.conf.task_default_queue = queue
        host = f"bench@{queue}"
        begun = time.monotonic()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "-P",
                "prefork",
                "-c",
                "1",
                "-n",
                host,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while not client.control.ping(destination=[host], timeout=0.1):
                if proc.poll() is not None:
                    raise SystemExit("the bare worker died; is the broker up?")
            assert client.send_task("tasks.add", (1, 2)).get(timeout=10) == 3
            return time.monotonic() - begun
        finally:
            os.killpg(proc.pid, 9)
            proc.wait()
            client.close()


def grade(lab: str, broker: str) -> dict:
    with tempfile.TemporaryDirectory() as reports:
        env = {**os.environ, "CELERYLAB_HOME": reports}
        begun = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "celerylab.cli",
                "grade",
                lab,
                "--solutions",
                "--broker",
                broker,
                "--report-dir",
                reports,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        total = time.monotonic() - begun
        report = json.loads(Path(reports, f"{lab}.json").read_text())
    if report["score"] != report["max_score"]:
        print(done.stdout[-3000:])
        raise SystemExit(f"the {lab} solution did not get full marks; fix that before benchmarking")
    phases = report["phases"]
    inside = sum(phases.get(f"in_{when}", 0.0) for when in ("setup", "call", "teardown"))
    return {
        "total": total,
        "startup": total - inside,  # Python, imports, pytest collection, the CLI around it
        "setup": phases.get("in_setup", 0.0),  # broker, import probe, event recorder, first workers
        "tests": phases.get("in_call", 0.0),
        "teardown": phases.get("in_teardown", 0.0),
        "worker starts": phases.get("worker_start", 0.0),  # wherever they happened
        "waiting": report["backoff_wait"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", action="append", help="lab to time (default: every lab)")
    parser.add_argument("--broker", default="redis", help="embedded | redis | rabbitmq (default redis)")
    parser.add_argument("--runs", type=int, default=1, help="runs per lab; the median is shown")
    args = parser.parse_args()
    names = args.lab or [lab.name for lab in labs.catalogue()]
    with open_broker(args.broker) as broker:
        floors = [floor(broker.url, broker.backend_url) for _ in range(3)]
    base = statistics.median(floors)
    print(f"broker: {args.broker}; floor (bare worker start to first ping + one round trip): {base:.2f} s")
    cols = ("total", "startup", "setup", "tests", "teardown", "worker starts", "waiting")
    print(f"{'lab':<12} " + " ".join(f"{c:>13}" for c in cols) + f" {'ratio':>6}")
    for name in names:
        runs = sorted((grade(name, args.broker) for _ in range(args.runs)), key=lambda r: r["total"])
        run = runs[len(runs) // 2]
        # Only labs whose report counts the waits their rules impose (retries: the backoff) get a ratio.
        ratio = f"{run['total'] / (base + run['waiting']):6.2f}" if run["waiting"] >= 1 else "     -"
        print(f"{name:<12} " + " ".join(f"{run[c]:13.2f}" for c in cols) + f" {ratio}")


if __name__ == "__main__":
    main()
