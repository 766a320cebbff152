"""Isolation on a shared broker: every grading run (and notebook session) gets its own namespace.

A namespace renames everything two runs could otherwise share: on Redis/Valkey a global key prefix for
broker and results (queues, unacked sets, pub/sub channels, result keys); everywhere the default queue,
the event and remote-control exchanges, and the worker hostnames. So two gradings at once, or a grading
next to a notebook, never see each other's messages, events or results. ``cleanup()`` removes it all.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

import redis
from celery import Celery

from celerylab.brokers import Broker


class Namespace:
    def __init__(self, broker: Broker, label: str = "lab") -> None:
        self.broker = broker
        self.name = f"celerylab.{label}.{secrets.token_hex(3)}"
        self._apps: list[Celery] = []
        self._queues: set[str] = {self.queue}

    @property
    def queue(self) -> str:
        """The default queue; a lab's own queue names come from :meth:`queue_name`."""
        return f"{self.name}.default"

    def queue_name(self, short: str) -> str:
        name = f"{self.name}.{short}"
        self._queues.add(name)
        return name

    def hostname(self, short: str) -> str:
        return f"{short}@{self.name}"

    def config(self) -> dict[str, Any]:
        """Celery settings laid over the learner's app (worker and grader alike)."""
        conf: dict[str, Any] = {
            "broker_url": self.broker.url,
            "result_backend": self.broker.backend_url,
            "task_default_queue": self.queue,
            "task_default_exchange": self.queue,
            "task_default_routing_key": self.queue,
            "event_exchange": f"{self.name}.ev",
            "control_exchange": f"{self.name}.ctl",
            "task_send_sent_event": True,
            "task_track_started": True,
            "worker_send_task_events": True,
            "accept_content": ["json"],
            "task_serializer": "json",
            "result_serializer": "json",
            "broker_connection_retry_on_startup": True,
            "result_expires": 3600,
            "worker_hijack_root_logger": False,
        }
        prefix = {"global_keyprefix": f"{self.name}:"}
        if self.broker.is_redis:
            conf["broker_transport_options"] = dict(prefix)
        if self.broker.backend_url.startswith(("redis://", "rediss://")):
            conf["result_backend_transport_options"] = dict(prefix)
        return conf

    def redelivery_settings(self, visibility_timeout: float = 3) -> dict[str, Any]:
        """Worker settings under which a killed worker's unacked messages come back within seconds.

        Redis only sweeps them back after ``visibility_timeout`` (1 h by default), every 10 x 10 s (see
        FACTS). A worker's transport options merge with the kit's, so the namespace's key prefix stays.
        RabbitMQ redelivers when the dead consumer's channel closes: nothing to set there.
        """
        if not self.broker.is_redis:
            return {}
        return {
            "broker_transport_options": {
                "visibility_timeout": visibility_timeout,
                "unacked_restore_interval": 1,
                "unacked_restore_throttle": 1,
            }
        }

    def queue_depth(self, queue: str | None = None) -> int:
        """Messages waiting on the broker in ``queue`` (default: the namespace's), not yet delivered to a
        worker. On Redis: the lengths of the prefixed list and its priority lists (kombu's own passive
        declare does not apply ``global_keyprefix`` to EXISTS, so it reports every queue missing); on
        RabbitMQ: a passive declare."""
        queue = queue or self.queue
        if self.broker.is_redis:
            client = redis.Redis.from_url(self.broker.url, socket_timeout=2)
            with contextlib.closing(client):
                names = [queue] + [f"{queue}\x06\x16{pri}" for pri in (3, 6, 9)]  # kombu's priority lists
                return sum(client.llen(f"{self.name}:{name}") for name in names)
        with self.app("depth").connection_for_write() as conn:
            try:
                return conn.default_channel.queue_declare(queue, passive=True).message_count
            except conn.channel_errors:
                return 0

    def app(self, main: str = "celerylab") -> Celery:
        """A bare app on this namespace: for sending by task name, remote control and events."""
        app = Celery(main, set_as_current=False)
        app.conf.update(self.config())
        self._apps.append(app)
        return app

    def adopt(self, app: Celery) -> None:
        """Close ``app`` (e.g. the learner's, imported by the grader) along with the namespace's own."""
        self._apps.append(app)

    def cleanup(self) -> None:
        """Delete what the namespace left on the broker and backend; never raises."""
        for app in self._apps:
            with contextlib.suppress(Exception):
                _forget_result_subscriptions(app)
                app.close()
        self._apps.clear()
        for url in {self.broker.url, self.broker.backend_url}:
            if url.startswith(("redis://", "rediss://")):
                with contextlib.suppress(redis.RedisError, OSError):
                    _delete_prefixed(url, f"{self.name}:")
        if self.broker.is_amqp:
            with contextlib.suppress(Exception):
                self._delete_amqp()

    def _delete_amqp(self) -> None:
        from kombu import Connection

        with Connection(self.broker.url, connect_timeout=2) as conn:
            channel = conn.channel()
            for queue in sorted(self._queues):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
            for exchange in (
                self.queue,
                f"{self.name}.ev",
                f"{self.name}.ctl.pidbox",
                f"reply.{self.name}.ctl.pidbox",
            ):
                with contextlib.suppress(Exception):
                    channel = conn.channel()
                    channel.exchange_delete(exchange)


def _forget_result_subscriptions(app: Celery) -> None:
    """Stop the Redis result consumer and forget its channels.

    Otherwise an AsyncResult collected after the broker is gone (an embedded server stops with the grade)
    tries to unsubscribe in ``__del__`` and retries its reconnect for ~20 s before giving up loudly.
    """
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is not None and hasattr(consumer, "subscribed_to"):
        consumer.stop()
        consumer.subscribed_to.clear()
        consumer._pubsub = None


def _delete_prefixed(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2)
    with contextlib.closing(client):
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
