"""Variant: an exporter fed by the worker's own events, in its main process: no multiprocess mode needed.

A thread started at ``worker_ready`` consumes the task events this worker sends (it runs with ``-E``) and
keeps the counter and the histogram in the main process, which serves prometheus_client's default registry.
Runtimes come from the events (``task-succeeded`` carries ``runtime``; a failure's is from its
``task-started``). Queue length reads Redis' list with LLEN and RabbitMQ with a passive declare.
"""

import os
import threading
import time

from celery import Celery, signals
from celery.utils.log import get_task_logger
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

app = Celery("monitoring")
logger = get_task_logger(__name__)

TASKS = Counter("celery_tasks", "Tasks that ended, by task name and final state", ["task", "state"])
RUNTIME = Histogram(
    "celery_task_runtime_seconds",
    "Task run time",
    ["task"],
    buckets=(0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 6.0),
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


def export_events(hostname: str) -> None:
    """Count this worker's task events (other workers export their own)."""
    names: dict[str, str] = {}
    started: dict[str, float] = {}

    def on_event(event: dict) -> None:
        if event.get("hostname") != hostname:
            return
        uuid, kind = event.get("uuid"), event["type"]
        if kind == "task-received":
            names[uuid] = event["name"]
        elif kind == "task-started":
            started[uuid] = event["timestamp"]
        elif kind in ("task-succeeded", "task-failed") and uuid in names:
            name, began = names.pop(uuid), started.pop(uuid, None)
            runtime = event.get("runtime") if kind == "task-succeeded" else None
            if runtime is None and began is not None:
                runtime = event["timestamp"] - began
            if runtime is not None:
                RUNTIME.labels(name).observe(runtime)
            TASKS.labels(name, "SUCCESS" if kind == "task-succeeded" else "FAILURE").inc()

    while True:  # reconnect if the broker goes away
        try:
            with app.connection() as conn:
                app.events.Receiver(conn, handlers={"*": on_event}).capture(
                    limit=None, timeout=None, wakeup=False
                )
        except Exception:
            logger.exception("event exporter: reconnecting")
            time.sleep(1)


def waiting(conn, name: str) -> int:
    channel = conn.default_channel
    if conn.transport.driver_type == "redis":
        return channel.client.llen(name)  # the channel's client adds the key prefix, if any
    return channel.queue_declare(queue=name, passive=True).message_count


class QueueLength:
    def collect(self):
        gauge = GaugeMetricFamily("celery_queue_length", "Messages waiting in the queue", labels=["queue"])
        with app.connection_for_read() as conn:
            for name in app.amqp.queues:
                gauge.add_metric([name], waiting(conn, name))
        yield gauge


@signals.worker_ready.connect
def _serve_metrics(sender, **_: object) -> None:
    threading.Thread(target=export_events, args=(sender.hostname,), daemon=True, name="exporter").start()
    REGISTRY.register(QueueLength())
    start_http_server(int(os.environ["METRICS_PORT"]), addr="127.0.0.1")
