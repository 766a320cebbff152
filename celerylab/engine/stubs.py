"""Servers the grader owns and the learner's tasks talk to, so the grade sees every call they made.

:class:`ScriptedHTTPServer` answers each path from a script: a list of steps, one per request, the last
one repeated. A step is a status code (``503``), ``"reset"`` (close the connection with no reply),
``"hang"`` (hold the request open until the server stops), ``("json", status, body)`` or
``("trickle", seconds)`` (a 200 whose body arrives a byte every 0.2 s for ``seconds``: every read returns
well within a client's read timeout, so the call lasts ``seconds`` whatever timeout the client set).
A handler (``handle(path, fn)``) answers ``(status, body)`` or any of those steps. Every request is
recorded with its arrival time.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = int | str | tuple
TRICKLE_EVERY = 0.2  # seconds between the bytes of a ("trickle", seconds) reply


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    time: float
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class ScriptedHTTPServer:
    """A loopback HTTP server on a free port; use as a context manager."""

    def __init__(self) -> None:
        self._scripts: dict[str, list[Step]] = {}
        self._handlers: dict[str, Any] = {}
        self.requests: list[Request] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="celerylab-stub", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ScriptedHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def script(self, path: str, steps: Sequence[Step]) -> str:
        """Answer ``path`` with ``steps`` in turn (the last repeats); returns the full URL."""
        if not steps:
            raise ValueError("a script needs at least one step")
        with self._cond:
            self._scripts[path] = list(steps)
        return self.base_url + path

    def handle(self, path: str, handler: Any) -> str:
        """Answer ``path`` with ``handler(request) -> (status, body_dict)``; returns the full URL."""
        with self._cond:
            self._handlers[path] = handler
        return self.base_url + path

    def hits(self, path: str) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.path == path]

    def wait_hits(self, path: str, count: int, timeout: float) -> list[Request]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(hits := [r for r in self.requests if r.path == path]) < count:
                if not self._cond.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() > deadline:
                    break
            return hits

    def _next_step(self, path: str, seen: int) -> Step:
        steps = self._scripts.get(path, [404])
        return steps[min(seen, len(steps) - 1)]

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep the grader's output clean
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                req = Request(self.command, path, time.time(), body, dict(self.headers))
                with stub._cond:
                    seen = sum(1 for r in stub.requests if r.path == path)
                    stub.requests.append(req)
                    stub._cond.notify_all()
                    handler = stub._handlers.get(path)
                if handler is not None:
                    answer = handler(req)  # (status, body), or a script step such as "reset"
                    if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], int):
                        return self._reply(*answer)
                    step = answer
                else:
                    step = stub._next_step(path, seen)
                if step == "reset":
                    linger = struct.pack("ii", 1, 0)  # RST instead of FIN: a connection error for the client
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.close_connection = True
                    return
                if step == "hang":
                    stub._stopping.wait()
                    self.close_connection = True
                    return
                if isinstance(step, tuple) and step[0] == "trickle":
                    return self._trickle(float(step[1]))
                if isinstance(step, tuple):
                    _, status, payload = step
                    return self._reply(status, payload)
                self._reply(int(step), {"path": path, "attempt": seen + 1, "status": int(step)})

            def _trickle(self, seconds: float) -> None:
                size = max(1, int(seconds / TRICKLE_EVERY))
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    self.wfile.flush()
                    for _ in range(size):
                        if stub._stopping.wait(TRICKLE_EVERY):
                            break
                        self.wfile.write(b".")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # a time limit killed the client
                    pass
                self.close_connection = True

            def _reply(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client died first (a killed worker):
                    self.close_connection = True  # a scenario the grader set up, not an error to print

            do_GET = do_POST = _serve  # noqa: N815

        return Handler
