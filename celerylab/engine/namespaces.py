"""Isolation on a shared broker: every grading run (and notebook session) gets its own namespace.

A namespace renames everything two runs could otherwise share: on Redis/Valkey a global key prefix for
broker and results (queues, unacked sets, pub/sub channels, result keys); everywhere the default queue,
the event and remote-control exchanges, the worker hostnames, and every queue the learner's own code names
(``task_queues``, ``task_routes``, ``apply_async(queue=...)``, a worker's ``-Q``: see
:class:`NamespacedQueues`). So two gradings at once, or a grading next to a notebook, never see each
other's messages, events or results, on RabbitMQ (which has no key prefix) as on Redis. ``cleanup()``
removes it all.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from celery.app.amqp import Queues
from celery.app.routes import Router
from celery.utils.text import str_to_list
from kombu import Queue

from celerylab.engine.brokers import Broker

NAMESPACE = "celerylab_namespace"  # a setting: the namespace the learner's queue names are renamed into
DEFAULT_QUEUE = "celery"  # Celery's default task_default_queue


class Namespace:
    def __init__(self, broker: Broker, label: str = "lab") -> None:
        self.broker = broker
        self.name = f"celerylab.{label}.{secrets.token_hex(3)}"
        self._apps: list[Celery] = []
        self._queues: set[str] = {self.queue}
        # What the kit's own apps (remote control, results) accept. A lab that judges the learner's serializer
        # (lab.toml own_settings) widens it: a worker's control replies use its task_serializer.
        self.accept: list[str] = ["json"]

    @property
    def queue(self) -> str:
        """The default queue; a lab's own queue names come from :meth:`queue_name`."""
        return f"{self.name}.default"

    def queue_name(self, short: str) -> str:
        name = f"{self.name}.{short}"
        self.owns_queue(name)
        return name

    def owns_queue(self, name: str) -> None:
        """Remember a queue (and its exchange of the same name) for :meth:`cleanup` to delete."""
        self._queues.add(name)

    def short_queue(self, name: str | None) -> str | None:
        """The learner's name for a queue the namespace renamed (``images``; the default queue is shown
        as the kit's default, Celery's ``celery``), for verdicts that speak the learner's language."""
        if name is None:
            return None
        if name == self.queue:
            return DEFAULT_QUEUE
        return name.removeprefix(f"{self.name}.")

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
            "accept_content": list(self.accept),
            "task_serializer": "json",
            "result_serializer": "json",
            "broker_connection_retry_on_startup": True,
            "result_expires": 3600,
            "worker_hijack_root_logger": False,
            # read by celerylab.engine.runtime: the learner's queue names are renamed into it
            NAMESPACE: self.name,
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
        The sweep's lock lives 300 s by default: a worker killed while holding it (the sweep is
        milliseconds, once a second) would stall every other worker's sweep for five minutes.
        """
        if not self.broker.is_redis:
            return {}
        return {
            "broker_transport_options": {
                "visibility_timeout": visibility_timeout,
                "unacked_restore_interval": 1,
                "unacked_restore_throttle": 1,
                "unacked_mutex_expire": 3,
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
        return self._amqp_depths([queue]).get(queue, 0)

    def waiting(self) -> dict[str, int]:
        """Messages the broker still holds for this namespace, by queue, only those with any: waiting in a
        queue, or (Redis) delivered but unacknowledged, which kombu restores after the visibility timeout
        (shown as ``unacked``). RabbitMQ returns a dead consumer's unacked messages to their queue."""
        if self.broker.is_redis:
            client = redis.Redis.from_url(self.broker.url, socket_timeout=2)
            with contextlib.closing(client):
                prefix = f"{self.name}:"
                keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                pipe = client.pipeline()
                for key in keys:
                    pipe.type(key)
                kinds = pipe.execute()
                sizes = {}
                for key, kind in zip(keys, kinds, strict=True):
                    name = key.decode(errors="replace").removeprefix(prefix)
                    if kind == b"list":
                        sizes[name] = client.llen(key)
                    elif kind == b"hash" and name == "unacked":
                        sizes[name] = client.hlen(key)
                return {name: n for name, n in sizes.items() if n}
        return {name: n for name, n in self._amqp_depths(sorted(self._queues)).items() if n}

    def _amqp_depths(self, queues: list[str]) -> dict[str, int]:
        """Messages ready in each queue, by a passive declare on one connection; a queue never declared is
        left out (its failed declare closes only its own channel)."""
        counts = {}
        with self.app("depth").connection_for_write() as conn:
            for queue in queues:
                try:
                    counts[queue] = conn.channel().queue_declare(queue, passive=True).message_count
                except conn.channel_errors:
                    continue
        return counts

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
                *sorted(self._queues),  # a learner's queue's own exchange has its name (Celery's default)
                f"{self.name}.ev",
                f"{self.name}.ctl.pidbox",
                f"reply.{self.name}.ctl.pidbox",
            ):
                with contextlib.suppress(Exception):
                    channel = conn.channel()
                    channel.exchange_delete(exchange)


class NamespacedQueues(Queues):
    """Celery's queue table with every name the learner's code uses renamed into the namespace.

    Laid in by :func:`rename_queues` under the learner's app, so ``images`` in their ``task_queues``,
    ``task_routes``, ``apply_async(queue="images")`` or a worker's ``-Q images`` is the broker's
    ``<namespace>.images``: the learner's code keeps its names, and on RabbitMQ, which has no key prefix,
    two gradings never share a queue. The learner's own default queue (``task_default_queue`` before the
    kit's settings, ``celery`` unless they changed it) is the namespace's default queue. Exchanges are
    renamed the same way; a routing key is renamed where it is a queue's name (direct routing).
    """

    def __init__(
        self,
        *args: Any,
        namespace: str,
        own_default: str,
        kit_default: str,
        on_add: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.namespace, self.own_default, self.kit_default = namespace, own_default, kit_default
        self.on_add = on_add
        super().__init__(*args, **kwargs)

    def real(self, name: str) -> str:
        """The broker's name for the learner's queue (or exchange) ``name``."""
        if not name or name.startswith(f"{self.namespace}.") or name.startswith("reply."):
            return name
        if name == self.own_default:
            return self.kit_default
        return f"{self.namespace}.{name}"

    def __getitem__(self, name: str) -> Queue:
        return super().__getitem__(self.real(name))

    def __contains__(self, name: object) -> bool:
        return super().__contains__(self.real(name) if isinstance(name, str) else name)

    def _add(self, queue: Queue) -> Queue:
        real = self.real(queue.name)
        if real != queue.name:
            old, queue = queue.name, copy.copy(queue)
            queue.name = real
            if queue.routing_key in (old, None, ""):
                queue.routing_key = real
            if queue.exchange is not None and queue.exchange.name:
                queue.exchange = copy.copy(queue.exchange)
                queue.exchange.name = self.real(queue.exchange.name)
        if self.on_add is not None:
            self.on_add(queue.name)
        return super()._add(queue)

    def deselect(self, exclude: Any) -> None:
        super().deselect([self.real(name) for name in str_to_list(exclude)] if exclude else exclude)


class NamespacedRouter(Router):
    """Celery's router, with a kombu ``Queue`` object the learner's code routes to (``{"queue":
    Queue("images")}`` in ``task_routes``, ``apply_async(queue=Queue("urgent"))``) renamed like a name:
    Celery sends to such an object as it is, past the queue table."""

    def expand_destination(self, route: Any) -> Any:
        route = super().expand_destination(route)
        queue = route.get("queue") if isinstance(route, dict) else None
        queues = self.queues
        if isinstance(queue, Queue) and isinstance(queues, NamespacedQueues):
            if queue.name != queues.real(queue.name):
                route["queue"] = queues[queue.name] if queue.name in queues else queues.add(queue)
        return route


def rename_queues(
    app: Celery, namespace: str, own_default: str, on_add: Callable[[str], None] | None = None
) -> None:
    """Give ``app`` (the learner's, already configured with the kit's settings) a :class:`NamespacedQueues`
    table and a :class:`NamespacedRouter`. Call before anything reads ``app.amqp.queues``; its cached
    table and router are dropped."""
    amqp = app.amqp
    amqp.queues_cls = lambda *args, **kwargs: NamespacedQueues(
        *args,
        namespace=namespace,
        own_default=own_default,
        kit_default=app.conf.task_default_queue,
        on_add=on_add,
        **kwargs,
    )
    amqp.Router = lambda queues=None, create_missing=None: NamespacedRouter(
        amqp.routes,
        queues or amqp.queues,
        app.either("task_create_missing_queues", create_missing),
        app=app,
    )
    for cached in ("queues", "default_queue", "router"):
        amqp.__dict__.pop(cached, None)


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
