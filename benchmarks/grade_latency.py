"""A grade's time against the floor no grader can beat, lab by lab.

    python benchmarks/grade_latency.py [--lab retries ...] [--broker redis] [--runs 1] [--serial]
                                       [--save-durations]

For each lab it times `celerylab grade <lab> --solutions` end to end (a fresh process, as a learner runs it)
and divides it by that lab's floor, measured in the same run:

    floor = broker start + one bare worker start + one round trip + the longest scenario's inherent wait

- broker start: what the grade's report records (0 for a Redis or RabbitMQ that is already running), and for
  a lab with a database (django), making the grade's database and its tables, which the report records too;
- one bare worker start + one round trip: a plain `celery worker` (no kit) from spawn to its first answered
  ping, then one task there and back (median of three);
- the longest scenario's inherent wait: every test's report records what its scenario waited on Celery (the
  time its tasks were in flight: countdowns, backoff, run time, redelivery; `waited`, from the timeline), and
  the floor takes the longest, since even side by side a grade lasts that long.

It prints one ratio (grade / floor) per lab and the median over labs. The targets: median <= 1.5, no lab
above 2.0. `--serial` grades with the tests one after the other (`CELERYLAB_SERIAL=1`): the figures before.
`--save-durations` writes what each test took to tests/labs/durations.json, from which a grade's shards take
the longest tests first (run it after adding or changing a lab's tests).
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
from celerylab.grading.plugin import DURATIONS, measured_durations  # noqa: E402

MEDIAN_TARGET, MAX_TARGET = 1.5, 2.0


def bare_worker(broker_url: str, backend_url: str | None = None, concurrency: int = 1) -> float:
    """Seconds from spawning a bare prefork worker (a plain app, no kit) to its first ping reply, plus one
    task round trip when there is a result backend to bring the answer back."""
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
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
        ]
        argv += ["-n", host, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
        begun = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            while not client.control.ping(destination=[host], timeout=0.1):
                if proc.poll() is not None:
                    raise SystemExit("the bare worker died; is the broker up?")
            if backend_url:
                assert client.send_task("tasks.add", (1, 2)).get(timeout=10) == 3
            return time.monotonic() - begun
        finally:
            os.killpg(proc.pid, 9)
            proc.wait()
            client.close()


def grade(lab: str, broker: str, serial: bool) -> dict:
    """One `celerylab grade LAB --solutions`: its wall time and the report's per-test waits."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "CELERYLAB_HOME": home}
        if serial:
            env["CELERYLAB_SERIAL"] = "1"
        command = ["celerylab.cli", "grade", lab, "--solutions", "--broker", broker, "--report-dir", home]
        begun = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", *command], cwd=ROOT, env=env, capture_output=True, text=True
        )
        total = time.monotonic() - begun
        report = json.loads(Path(home, f"{lab}.json").read_text())
    if report["score"] != report["max_score"]:
        print(done.stdout[-3000:])
        raise SystemExit(f"the {lab} solution did not get full marks; fix that before benchmarking")
    longest = max(report["tests"], key=lambda t: t.get("waited", 0.0))
    return {
        "total": total,
        "broker": report["phases"].get("broker_start", 0.0) + report["phases"].get("database_setup", 0.0),
        "waited": longest.get("waited", 0.0),
        "scenario": longest["id"].rsplit("::", 1)[-1],
        "rules": ",".join(longest.get("rules", [])),
        "sum_of_tests": sum(t["duration"] for t in report["tests"]),
        "durations": {t["id"]: t["duration"] for t in report["tests"]},
    }


def save_durations(measured: dict[str, list[float]]) -> None:
    """Each test's median duration into tests/labs/durations.json, which orders a grade's tests (the
    longest start first); tests of labs not graded this time keep their figures."""
    durations = measured_durations()
    durations.update({test: round(statistics.median(seconds), 2) for test, seconds in measured.items()})
    DURATIONS.write_text(json.dumps(dict(sorted(durations.items())), indent=1) + "\n")
    print(f"wrote {len(measured)} tests' durations to {DURATIONS.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", action="append", help="lab to time (default: every lab)")
    parser.add_argument("--broker", default="redis", help="embedded | redis | rabbitmq (default redis)")
    parser.add_argument("--runs", type=int, default=1, help="grades per lab; the median is shown")
    parser.add_argument("--serial", action="store_true", help="grade with the tests one after the other")
    parser.add_argument(
        "--save-durations",
        action="store_true",
        help=f"write each test's median duration to {DURATIONS.relative_to(ROOT)} (the order tests start in)",
    )
    args = parser.parse_args()
    measured: dict[str, list[float]] = {}
    names = args.lab or [lab.name for lab in labs.catalogue()]
    with open_broker(args.broker) as broker:
        start = statistics.median(bare_worker(broker.url, broker.backend_url) for _ in range(3))
    mode = "serial" if args.serial else "side by side"
    print(
        f"broker: {args.broker}; tests {mode}; "
        f"a bare worker's start to first ping + one round trip: {start:.2f} s"
    )
    header = (
        f"{'lab':<12} {'grade':>6} {'tests':>6} {'floor':>6} {'ratio':>6}  longest scenario (its wait, rules)"
    )
    print(header)
    ratios = []
    for name in names:
        runs = sorted(
            (grade(name, args.broker, args.serial) for _ in range(args.runs)), key=lambda r: r["total"]
        )
        run = runs[len(runs) // 2]
        for each in runs:
            for test, seconds in each["durations"].items():
                measured.setdefault(test, []).append(seconds)
        floor = run["broker"] + start + run["waited"]
        ratio = run["total"] / floor
        ratios.append(ratio)
        print(
            f"{name:<12} {run['total']:6.2f} {run['sum_of_tests']:6.2f} {floor:6.2f} {ratio:6.2f}  "
            f"{run['scenario']} ({run['waited']:.2f} s; {run['rules']})",
            flush=True,
        )
    if args.save_durations:
        save_durations(measured)
    median, worst = statistics.median(ratios), max(ratios)
    verdict = "met" if median <= MEDIAN_TARGET and worst <= MAX_TARGET else "NOT met"
    print(
        f"median ratio {median:.2f} (target <= {MEDIAN_TARGET}), "
        f"highest {worst:.2f} (target <= {MAX_TARGET}): targets {verdict}"
    )


if __name__ == "__main__":
    main()
