"""Variant: a base Task class counts and times each run; a filter fed by task_prerun puts the id in logs.

The metrics live on the task class (``__call__`` times the body, ``on_success``/``on_failure`` count), the
server starts from ``worker_init`` (the main process, before the pool forks), and the log format is the
project's own: a ``logging.Filter`` puts the id that ``task_prerun`` recorded on every record.
"""

import logging
import os
import sys
import time

from celery import Celery, Task, signals
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily

app = Celery("monitoring")

TASKS = Counter("celery_tasks", "Tasks that ended, by task name and final state", ["task", "state"])
RUNTIME = Histogram(
    "celery_task_runtime_seconds",
    "Task run time",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 5.0, 10.0),
)

_current: dict[str, str] = {}  # the task running in this pool process (one at a time with prefork)


class TaskIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.task_id = _current.get("id", "-")
        return True


handler = logging.StreamHandler(sys.stderr)  # the worker's output
handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s task_id=%(task_id)s %(name)s: %(message)s"))
handler.addFilter(TaskIdFilter())
logger = logging.getLogger("shop.tasks")
logger.setLevel(logging.INFO)
logger.addHandler(handler)
logger.propagate = False


@signals.task_prerun.connect
def _bind_task_id(task_id: str, **_: object) -> None:
    _current["id"] = task_id


@signals.task_postrun.connect
def _unbind_task_id(**_: object) -> None:
    _current.pop("id", None)


class Monitored(Task):
    def __call__(self, *args, **kwargs):
        began = time.perf_counter()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            RUNTIME.labels(self.name).observe(time.perf_counter() - began)

    def on_success(self, retval, task_id, args, kwargs):
        TASKS.labels(self.name, "SUCCESS").inc()

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        TASKS.labels(self.name, "FAILURE").inc()


class PaymentDeclined(Exception):
    """The card was declined: the charge fails."""


@app.task(base=Monitored)
def charge(order_id: str, seconds: float, declined: bool = False) -> str:
    logger.info("charging order %s", order_id)
    time.sleep(seconds)
    if declined:
        logger.warning("card declined for order %s", order_id)
        raise PaymentDeclined("card declined")
    return f"charged {order_id}"


@app.task(base=Monitored)
def resize(image_id: str, seconds: float) -> str:
    logger.info("resizing image %s", image_id)
    time.sleep(seconds)
    return f"resized {image_id}"


class QueueLength:
    def collect(self):
        gauge = GaugeMetricFamily("celery_queue_length", "Messages waiting in the queue", labels=["queue"])
        with app.connection_for_read() as conn:
            for queue in app.amqp.queues.values():
                gauge.add_metric([queue.name], queue(conn.default_channel).queue_declare().message_count)
        yield gauge


@signals.worker_init.connect
def _serve_metrics(**_: object) -> None:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(QueueLength())
    start_http_server(int(os.environ["METRICS_PORT"]), addr="127.0.0.1", registry=registry)
