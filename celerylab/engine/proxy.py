"""A TCP proxy the grader owns, between one worker and its broker: the fault a network can be.

    with Proxy("127.0.0.1", 6379) as proxy:
        url = proxy.url_for("redis://127.0.0.1:6379/0")  # the worker's broker_url
        proxy.cut()          # every connection dropped now (the worker sees a reset, reconnects)
        proxy.stall(5)       # bytes held both ways for 5 s (or until resume()): a link that hangs
        proxy.refuse()       # new connections reset at once, until accept(): a broker that is down
        with proxy.down():   # both: cut, and refused until the block ends
            ...

It listens on a free loopback port only, relays with two threads per connection, and holds at most
``max_connections`` at a time (more are reset). A cut closes both sides with a reset (SO_LINGER 0), so the
worker learns at once, as when a broker restarts, rather than after a keepalive timeout; a stall sends
nothing at all, as a dead link or a paused VM does, and the worker only notices if a heartbeat says so.
The counters (``accepted``, ``refused``, ``cut_connections``, ``active``) tell a test what the worker did.
Nothing here knows about timelines: celerylab.grading.session marks what it does with a proxy.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

CHUNK = 65536


class Proxy:
    def __init__(self, host: str, port: int, *, max_connections: int = 64) -> None:
        self.target = (host, port)
        self.max_connections = max_connections
        self.accepted = 0  # connections relayed since the start
        self.refused = 0  # connections reset on arrival (refuse mode, or over the bound)
        self.cut_connections = 0  # connections dropped by cut()
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._closed = False
        self._timer: threading.Timer | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="celerylab-proxy", daemon=True)
        self._thread.start()

    @classmethod
    def to(cls, url: str, **options: int) -> Proxy:
        """A proxy in front of the server of ``url`` (``redis://...``, ``amqp://...``)."""
        parts = urlsplit(url)
        default = 5672 if parts.scheme.startswith(("amqp", "pyamqp")) else 6379
        return cls(parts.hostname or "127.0.0.1", parts.port or default, **options)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (credentials, vhost, db kept)."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._pairs)

    @property
    def refusing(self) -> bool:
        return self._refusing

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def cut(self) -> int:
        """Drop every relayed connection now (both ends reset); returns how many were dropped."""
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            pair.close(reset=True)
        self.cut_connections += len(pairs)
        return len(pairs)

    def refuse(self) -> None:
        """New connections are reset on arrival until :meth:`accept` (existing ones stay: :meth:`cut`)."""
        self._refusing = True

    def accept(self) -> None:
        self._refusing = False

    @contextlib.contextmanager
    def down(self) -> Iterator[Proxy]:
        """Inside the block the broker is gone to this proxy's clients: their connections are cut and new
        ones refused; on exit they may connect again."""
        self.refuse()
        self.cut()
        try:
            yield self
        finally:
            self.accept()

    def stall(self, seconds: float | None = None) -> None:
        """Hold every byte both ways (nothing is lost: it flows again on :meth:`resume`, or after
        ``seconds``). The connections stay open, so neither end sees an error."""
        self._flowing.clear()
        self._cancel_timer()
        if seconds is not None:
            self._timer = threading.Timer(seconds, self.resume)
            self._timer.daemon = True
            self._timer.start()

    def resume(self) -> None:
        self._cancel_timer()
        self._flowing.set()

    def wait_connections(self, count: int, timeout: float) -> bool:
        """Until ``count`` connections have been accepted in total (a reconnect shows as a new one)."""
        deadline = time.monotonic() + timeout
        while self.accepted < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)  # polling a counter, bounded by the deadline above
        return True

    def close(self) -> None:
        """Stop listening and drop everything; the proxy's threads end."""
        self._closed = True
        self._cancel_timer()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()
        self._thread.join(timeout=2.0)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)  # to notice close()
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._refusing or self.active >= self.max_connections:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5.0)
            except OSError:  # the broker itself is down: so is the connection
                self.refused += 1
                _reset(client)
                continue
            pair = _Pair(self, client, upstream)
            with self._lock:
                self._pairs.add(pair)
            self.accepted += 1
            pair.start()

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)


class _Pair:
    """One relayed connection: a thread per direction."""

    def __init__(self, proxy: Proxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self._closed = False
        for sock in (client, upstream):
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> None:
        for src, dst in ((self.client, self.upstream), (self.upstream, self.client)):
            threading.Thread(
                target=self._pump, args=(src, dst), name="celerylab-proxy-pump", daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        flowing = self.proxy._flowing
        try:
            while not self._closed:
                data = src.recv(CHUNK)
                if not data:
                    break
                while not flowing.wait(0.1):  # stalled: hold these bytes (and, behind them, the sender)
                    if self._closed:
                        return
                dst.sendall(data)
        except OSError:
            pass
        self.close(reset=False)

    def close(self, reset: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self.proxy._forget(self)
        for sock in (self.client, self.upstream):
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with an RST, not a FIN: the peer's next read or write fails at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
