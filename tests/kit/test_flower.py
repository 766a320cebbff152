"""Flower against a real worker: its REST API reports the workload the worker ran, the same counts the
monitoring lab's Prometheus endpoint shows, and it answers nobody without credentials.

``celery flower`` runs as the kit runs workers (``celery -A celerylab.engine.runtime``, on a kit
namespace), on a
free loopback port, with basic auth from ``FLOWER_BASIC_AUTH`` as docker-compose.yml passes it. Every wait
is bounded and polls what Flower reports. A worker and Flower start side by side: ~5-10 s.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter

import httpx

from celerylab.engine import metrics
from celerylab.engine.workers import Flower, start_worker
from tests.kit.conftest import ROOT

SOLUTION = ROOT / "solutions" / "monitoring"  # its tasks (charge, resize) and its /metrics endpoint
FINAL = {"SUCCESS", "FAILURE"}


def test_flower_api_reports_the_workload(ns, tmp_path, no_orphans):
    env = metrics.worker_env(tmp_path)
    flower = Flower(
        ns, SOLUTION, metrics.free_port(), f"kit:{secrets.token_hex(8)}", log_path=tmp_path / "f.log"
    )
    with start_worker(ns, SOLUTION, concurrency=2, env=env, log_path=tmp_path / "w.log") as worker:
        try:
            flower.start()  # before the workload: Flower knows only the events it heard
            app = ns.app("client")
            # Flower's HTTP answers before its event consumer listens, and events sent before that are lost
            # (a task without its name): a first task Flower reports whole, named and done, says it hears
            # them now. Done means the worker's main process heard back from the pool process, so the task
            # is counted on the endpoint too before the "before" scrape.
            warm = app.send_task("tasks.resize", args=("warm-up", 0.0))
            deadline = time.monotonic() + 20
            while (flower.get("/api/tasks").json().get(warm.id) or {}).get("name") is None:
                assert time.monotonic() < deadline, "Flower never heard the worker's events"
                if warm.ready():  # it ran while Flower was still joining the event stream: send another
                    warm = app.send_task("tasks.resize", args=("warm-up", 0.0))
                time.sleep(0.2)  # polling Flower's state, bounded by the deadline above
            while flower.get("/api/tasks").json()[warm.id]["state"] != "SUCCESS":
                assert time.monotonic() < deadline, "Flower never saw the warm-up task succeed"
                time.sleep(0.1)
            before = metrics.wait_scrape(metrics.endpoint(env), 10)
            sent = [app.send_task("tasks.charge", args=(f"order-{n}", 0.05)) for n in range(4)]
            sent += [app.send_task("tasks.charge", args=(f"order-d{n}", 0.05, True)) for n in range(2)]
            sent += [app.send_task("tasks.resize", args=(f"img-{n}", 0.05)) for n in range(3)]
            for result in sent:
                result.get(timeout=30, propagate=False)
            ids = {r.id for r in sent}

            deadline = time.monotonic() + 20
            while True:  # Flower's state trails the workers' events a little
                tasks = flower.get("/api/tasks").json()
                ours = {uuid: t for uuid, t in tasks.items() if uuid in ids}
                if (len(ours) == len(ids) and all(t["state"] in FINAL for t in ours.values())) or (
                    time.monotonic() > deadline
                ):
                    break
                time.sleep(0.1)
            seen = Counter((t["name"], t["state"]) for t in ours.values())
            assert seen == {
                ("tasks.charge", "SUCCESS"): 4,
                ("tasks.charge", "FAILURE"): 2,
                ("tasks.resize", "SUCCESS"): 3,
            }
            assert {t["worker"] for t in ours.values()} == {worker.hostname}

            scraped = metrics.scrape(metrics.endpoint(env)) - before  # the lab's endpoint agrees
            assert {
                k: int(v) for k, v in scraped.by("celery_tasks_total", "task", "state").items() if v
            } == seen

            workers = flower.get("/api/workers", refresh="true").json()  # remote control, through Flower
            assert worker.hostname in workers
            assert len(workers[worker.hostname]["stats"]["pool"]["processes"]) == 2

            assert httpx.get(f"{flower.url}/api/workers", timeout=5).status_code == 401  # no credentials
            assert flower.get("/api/workers", auth=("kit", "wrong")).status_code == 401
        finally:
            flower.stop()
    assert not flower.alive
