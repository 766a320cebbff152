"""A class graded at once, against the bound: 30 submissions take at most 1.2 x (30 x one grade / jobs).

    python benchmarks/batch.py [--lab first_task] [--students 30] [--jobs 2] [--singles 3] [--sandbox auto]
    python benchmarks/batch.py --farm amqp://guest:guest@127.0.0.1:5672// [--farm-queue celerylab.farm]

"One grade" is the mean of ``--singles`` grades of the reference solution run alone, each as the batch
runs it (its own sandbox and embedded broker): so the bound is what perfect parallelism over ``--jobs``
would give, and the ratio is what grading N at a time costs beyond it (start-up, contention). The class is
the lab's reference solution, its variants, its skeleton and its mutants, in turn.

With ``--farm``, the class goes to the farm workers already running there (``celerylab farm worker``) and
``jobs`` is their grade slots in all: what the farm adds beyond a local batch is the message round trips.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celerylab.grading import batch, farm, gradejob, labs, sandbox  # noqa: E402


def make_class(lab: labs.Lab, students: int, folder: Path) -> list[batch.Submission]:
    pool = [lab.solution / "tasks.py", *lab.variants, lab.folder / "tasks.py", *lab.mutants]
    pool = [p if p.is_file() else p / "tasks.py" for p in pool]
    for n in range(students):
        (folder / f"s{n:02d}").mkdir(parents=True)
        shutil.copyfile(pool[n % len(pool)], folder / f"s{n:02d}" / "tasks.py")
    return batch.plan(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="first_task")
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--singles", type=int, default=3)
    parser.add_argument("--sandbox", choices=["auto", "off"], default="auto")
    parser.add_argument("--farm", metavar="BROKER_URL", help="grade the class on this farm")
    parser.add_argument("--farm-queue", default=farm.DEFAULT_QUEUE)
    args = parser.parse_args()
    lab = labs.find(args.lab)
    support = sandbox.detect() if args.sandbox == "auto" else None
    print(support.statement if support else "sandbox: off")
    hidden = tuple(gradejob.hidden_tests(lab, kit=True))
    with tempfile.TemporaryDirectory(prefix="celerylab-bench-") as scratch:
        root = Path(scratch)
        one = batch.Batch(lab, root / "single-out", 1, "embedded", support, hidden)
        single_sub = make_class(lab, 1, root / "single")
        singles = []
        for _ in range(args.singles):
            begun = time.monotonic()
            one.run(single_sub)
            singles.append(time.monotonic() - begun)
        grade = statistics.mean(singles)
        subs = make_class(lab, args.students, root / "class")
        job = batch.Batch(lab, root / "out", args.jobs, "embedded", support, hidden)
        if args.farm:
            job = farm.FarmBatch(lab, root / "out", hidden=hidden, farm=args.farm, queue=args.farm_queue)
            job.connect().close()
            args.jobs = sum(w.jobs for w in job.workers)
            print(f"farm: {len(job.workers)} worker(s), {args.jobs} grade slots")
        begun = time.monotonic()
        outcomes = job.run(subs)
        total = time.monotonic() - begun
    bound = args.students * grade / args.jobs
    ungraded = sum(not o.graded for o in outcomes)
    print(f"one grade alone ({lab.name}, solution, mean of {args.singles}): {grade:.1f} s")
    print(f"{args.students} submissions, {args.jobs} at a time: {total:.1f} s")
    print(
        f"bound {args.students} x {grade:.1f} / {args.jobs} = {bound:.1f} s; "
        f"ratio {total / bound:.2f} (target <= 1.2)"
    )
    print(f"ungraded: {ungraded}")
    return 0 if total <= 1.2 * bound and not ungraded else 1


if __name__ == "__main__":
    sys.exit(main())
