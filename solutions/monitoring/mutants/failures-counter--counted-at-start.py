"""Mutant: counts a task when it starts (task_prerun, state STARTED), not when it ends."""

import os
import time

from celery import Celery, signals
from celery.utils.log import get_task_logger
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily

app = Celery("monitoring")  # the kit supplies broker and backend; keep this line as it is

# Why: the worker's task logger prefixes every line with the task's name and id ("tasks.charge[<id>]: ...").
logger = get_task_logger(__name__)

SLO = 1.5  # seconds: 95% of charges must be done within this
# Why: labels from small fixed sets only (task name, final state): every distinct value is a time series.
TASKS = Counter("celery_tasks", "Tasks that ended, by task name and final state", ["task", "state"])
# Why: a bound exactly at the SLO makes "share of runs within 1.5 s" exact, and bounds close around it
# keep histogram_quantile(0.95, ...) near the truth; the default buckets jump from 1.0 to 2.5.
RUNTIME = Histogram(
    "celery_task_runtime_seconds",
    "Time a task ran, successes and failures alike",
    ["task"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, SLO, 2.0, 3.0, 5.0, 10.0),
)


class PaymentDeclined(Exception):
    """The card was declined: the charge fails."""


@app.task
def charge(order_id: str, seconds: float, declined: bool = False) -> str:
    logger.info("charging order %s", order_id)
    time.sleep(seconds)  # the payment provider
    if declined:
        logger.warning("card declined for order %s", order_id)
        raise PaymentDeclined("card declined")
    return f"charged {order_id}"


@app.task
def resize(image_id: str, seconds: float) -> str:
    logger.info("resizing image %s", image_id)
    time.sleep(seconds)
    return f"resized {image_id}"


_started: dict[str, float] = {}  # task id -> when it started, in the pool process that runs it


def _task_started(task_id: str, **kwargs: object) -> None:
    _started[task_id] = time.perf_counter()
    TASKS.labels(kwargs["task"].name, "STARTED").inc()


def _task_ended(task_id: str, task: object, state: str | None = None, **_: object) -> None:
    began = _started.pop(task_id, None)
    if began is not None:
        RUNTIME.labels(task.name).observe(time.perf_counter() - began)


# Why: these run in the pool process. With $PROMETHEUS_MULTIPROC_DIR set, each process writes its values to
# a file of its own there, and the worker's main process sums the files when it is scraped.
signals.task_prerun.connect(_task_started)
signals.task_postrun.connect(_task_ended)


class QueueLength:
    """celery_queue_length, read from the broker at each scrape: what waits, not what a worker holds."""

    def collect(self):
        gauge = GaugeMetricFamily("celery_queue_length", "Messages waiting in the queue", labels=["queue"])
        with app.connection_for_read() as conn:
            for name, queue in app.amqp.queues.items():  # the queues this worker consumes
                # Why: a declare with the queue's own arguments answers message_count on both brokers
                # (Redis: the list's length; RabbitMQ: messages ready); kombu's passive declare on Redis
                # misses a queue under a global_keyprefix.
                gauge.add_metric([name], queue(conn.default_channel).queue_declare().message_count)
        yield gauge


# Why: the worker's main process serves what every pool process wrote (MultiProcessCollector); started from
# worker_ready so importing tasks.py elsewhere (python tasks.py, the kit's import check) serves nothing.
@signals.worker_ready.connect
def _serve_metrics(**_: object) -> None:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(QueueLength())
    start_http_server(int(os.environ["METRICS_PORT"]), addr="127.0.0.1", registry=registry)
