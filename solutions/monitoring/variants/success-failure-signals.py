"""Variant: counts from task_success/task_failure, times from task_prerun; served as WSGI at worker_ready.

The state comes from which signal fired, not from task_postrun's ``state``; the bounds are a tight ladder
around the SLO; the server is ``start_wsgi_server`` on a registry built for multiprocess mode.
"""

import os
import time

from celery import Celery, signals
from celery.utils.log import get_task_logger
from kombu import Connection
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_wsgi_server
from prometheus_client.core import GaugeMetricFamily

app = Celery("monitoring")
logger = get_task_logger(__name__)

SLO = 1.5
TASKS = Counter("celery_tasks", "Tasks that ended", ["task", "state"])
RUNTIME = Histogram(
    "celery_task_runtime_seconds",
    "Task run time",
    ["task"],
    buckets=(0.05, 0.1, 0.2, 0.4, 0.8, 1.2, SLO, 1.8, 2.4, 3.6),
)


class PaymentDeclined(Exception):
    """The card was declined: the charge fails."""


@app.task
def charge(order_id: str, seconds: float, declined: bool = False) -> str:
    logger.info("charging order %s", order_id)
    time.sleep(seconds)
    if declined:
        logger.warning("card declined for order %s", order_id)
        raise PaymentDeclined("card declined")
    return f"charged {order_id}"


@app.task
def resize(image_id: str, seconds: float) -> str:
    logger.info("resizing image %s", image_id)
    time.sleep(seconds)
    return f"resized {image_id}"


_began: dict[str, float] = {}


@signals.task_prerun.connect
def _began_at(task_id: str, **_: object) -> None:
    _began[task_id] = time.monotonic()


def _ended(task: object, task_id: str, state: str) -> None:
    began = _began.pop(task_id, None)
    if began is not None:
        RUNTIME.labels(task.name).observe(time.monotonic() - began)
    TASKS.labels(task.name, state).inc()


@signals.task_success.connect
def _succeeded(sender: object, **_: object) -> None:
    _ended(sender, sender.request.id, "SUCCESS")


@signals.task_failure.connect
def _failed(sender: object, task_id: str, **_: object) -> None:
    _ended(sender, task_id, "FAILURE")


class QueueLength:
    def collect(self):
        gauge = GaugeMetricFamily("celery_queue_length", "Messages waiting in the queue", labels=["queue"])
        conn: Connection = app.connection_for_read()
        try:
            channel = conn.channel()
            for queue in app.amqp.queues.values():
                _, count, _ = queue.bind(channel).queue_declare()
                gauge.add_metric([queue.name], count)
        finally:
            conn.release()
        yield gauge


@signals.worker_ready.connect
def _serve_metrics(**_: object) -> None:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(QueueLength())
    start_wsgi_server(int(os.environ["METRICS_PORT"]), addr="127.0.0.1", registry=registry)
