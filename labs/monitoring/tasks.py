"""Lab: monitoring. Read README.md in this folder first.

Two tasks that run fine and tell nobody anything: no metrics, and log lines no one can tie to a task.
Export the three signals an on-call alert needs (failures, runtime p95, queue length) from the worker, and
put the task id on every log line; `celerylab grade monitoring` runs a known workload on real workers and
scrapes your endpoint over HTTP.
"""

import logging
import os  # noqa: F401  (METRICS_PORT, PROMETHEUS_MULTIPROC_DIR)
import time

from celery import Celery, signals  # noqa: F401
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server  # noqa: F401
from prometheus_client.core import GaugeMetricFamily  # noqa: F401

app = Celery("monitoring")  # the kit supplies broker and backend; keep this line as it is

logger = logging.getLogger(__name__)  # TODO: every line a task logs must carry the task's id

# TODO: celery_tasks_total{task, state}: tasks that ended, by registered name and final state
# TODO: celery_task_runtime_seconds{task}: a histogram whose buckets let an alert read the 1.5 s SLO and p95
# TODO: celery_queue_length{queue}: messages waiting in the broker, read when Prometheus scrapes
# TODO: serve them at http://127.0.0.1:$METRICS_PORT/metrics from the worker, counting every pool process


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
