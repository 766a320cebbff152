"""How long a worker takes from spawn to its first answered ping, forked by the fork server or exec'd.

    python benchmarks/worker_start.py [--broker redis] [--runs 7]

(a) a bare `celery worker` subprocess (plain app, no kit), pinged every 0.1 s until it answers;
(b) the kit's Worker (`celerylab.engine.workers.start_worker`) with the fork server, launched once before
    the runs (`ForkServer.launch`, what a process with threads gets) and, as (b'), forked from this process
    (`ForkServer.fork_here`, what a pytest shard gets);
(c) the kit's Worker with CELERYLAB_FORKSERVER=0 (an exec'd `python -m celery ... worker`).
Runs are interleaved (a, b, b', c, a, ...) so that load from other work on the machine hits every kind
alike; the medians are the result. Target: (b) <= 0.3 s on Redis.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celerylab.engine import forkserver  # noqa: E402
from celerylab.engine.brokers import open_broker  # noqa: E402
from celerylab.engine.namespaces import Namespace  # noqa: E402
from celerylab.engine.workers import start_worker  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grade_latency  # noqa: E402  (the bare worker, measured the same way in both benchmarks)

TARGET = 0.3
TASKS = """
from celery import Celery
app = Celery("bench")

@app.task
def add(x, y):
    return x + y
"""


def bare_worker(broker_url: str, run: int) -> float:
    """Seconds from spawning a plain `celery worker` (no kit, two pool processes) to its first ping reply."""
    return grade_latency.bare_worker(broker_url, None, concurrency=2)


def kit_worker(ns: Namespace, folder: Path, run: int, served: bool) -> float:
    """Seconds from creating the kit's Worker to its first answered ping (what ``start()`` waits for)."""
    before = os.environ.get(forkserver.ENV)
    if not served:
        os.environ[forkserver.ENV] = "0"
    try:
        begun = time.monotonic()
        with start_worker(ns, folder, name=f"b{run}", concurrency=2) as worker:
            took = time.monotonic() - begun
            kind = type(worker.proc).__name__
            if (kind == "ServedProcess") != served:
                raise SystemExit(f"expected a {'forked' if served else 'spawned'} worker, got a {kind}")
            return took
    finally:
        if before is None:
            os.environ.pop(forkserver.ENV, None)
        else:
            os.environ[forkserver.ENV] = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="redis", help="embedded | redis | rabbitmq (default redis)")
    parser.add_argument("--runs", type=int, default=7, help="runs of each kind; medians are shown")
    args = parser.parse_args()
    with open_broker(args.broker) as broker, tempfile.TemporaryDirectory() as folder:
        Path(folder, "tasks.py").write_text(TASKS)
        ns = Namespace(broker, "bench")
        try:
            forked_here = forkserver.ForkServer.fork_here()  # while this process is single-threaded
            launched = forkserver.ForkServer.launch()

            def with_server(server: forkserver.ForkServer) -> Callable[[int], float]:
                def run(n: int) -> float:
                    forkserver.install(server)
                    return kit_worker(ns, Path(folder), n, served=True)

                return run

            kinds: dict[str, Callable[[int], float]] = {
                "(a)  bare `celery worker` subprocess": lambda n: bare_worker(broker.url, n),
                "(b)  kit Worker, fork server (launched)": with_server(launched),
                "(b') kit Worker, fork server (fork_here)": with_server(forked_here),
                "(c)  kit Worker, CELERYLAB_FORKSERVER=0": lambda n: kit_worker(ns, Path(folder), n, False),
            }
            for warm_up in kinds.values():  # zygotes preloaded, files cached: not part of any run
                warm_up(-1)
            times: dict[str, list[float]] = {name: [] for name in kinds}
            for n in range(args.runs):
                for name, run in kinds.items():
                    times[name].append(run(n))
        finally:
            ns.cleanup()
    print(f"broker: {args.broker} ({broker.url.split('@')[-1]}); {args.runs} runs each, interleaved")
    print(f"{'spawn -> first answered ping':<42} {'median':>7} {'min':>6} {'max':>6}")
    for name, values in times.items():
        print(f"{name:<42} {statistics.median(values):7.3f} {min(values):6.3f} {max(values):6.3f}")
    served = statistics.median(times["(b)  kit Worker, fork server (launched)"])
    verdict = "met" if served <= TARGET else "NOT met"
    print(f"target: (b) <= {TARGET} s: {verdict}")


if __name__ == "__main__":
    main()
