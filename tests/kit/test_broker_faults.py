"""Broker faults on real parts: the embedded Valkey stopped and started (with and without ``appendonly``),
and one worker's link to Redis or RabbitMQ cut, refused or stalled by the grader's TCP proxy.

What is counted is counted outside Celery: the task below counts its runs and completions in a Redis the
fault does not touch (``GATE_URL``), and waits for the test to open its gate, so a fault always finds it
running (provoked, not hoped for).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import redis

from celerylab.engine.brokers import Broker, embedded_valkey, open_broker
from celerylab.engine.namespaces import Namespace
from celerylab.engine.proxy import Proxy
from celerylab.grading.session import LabRun, LabSession
from tests.kit.conftest import is_gone, wait_until

TASKS = '''
import os
import time

import redis
from celery import Celery

app = Celery("faults")
gate = redis.Redis.from_url(os.environ.get("GATE_URL", "redis://127.0.0.1:6379/0"))


@app.task
def add(x, y):
    return x + y


@app.task(acks_late=True)
def gated(key):
    """Counts its runs, waits (bounded) for the test to open its gate, counts its completions."""
    gate.incr(f"{key}:runs")
    deadline = time.monotonic() + 60
    while not gate.exists(f"{key}:open") and time.monotonic() < deadline:
        time.sleep(0.02)
    gate.incr(f"{key}:done")
    return int(gate.get(f"{key}:runs"))
'''
BUDGET = 60.0  # seconds a test may wait on workers before it fails with what it last saw


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults")
    (path / "tasks.py").write_text(TASKS)
    return path


def _session(broker: Broker, folder, tmp_path_factory) -> Iterator[LabSession]:
    session = LabSession("broker-faults", folder, broker, tmp_path_factory.mktemp("logs"))
    try:
        yield session
    finally:
        pids = [w.pid for w in session._started if w.proc is not None]
        session.close()
        assert all(is_gone(pid) for pid in pids), "a worker outlived its session"
        assert not [t for t in threading.enumerate() if t.name.startswith("celerylab-proxy")], "proxy threads"


@pytest.fixture(scope="module")
def embedded(folder, tmp_path_factory) -> Iterator[LabSession]:
    with embedded_valkey() as broker:
        yield from _session(broker, folder, tmp_path_factory)


@pytest.fixture(scope="module", params=["redis", pytest.param("rabbitmq", marks=pytest.mark.slow)])
def shared(request, folder, tmp_path_factory) -> Iterator[LabSession]:
    """A session on a broker the kit may not restart: faults go through the proxy (RabbitMQ's in the slow
    suite: the default one stays fast)."""
    with open_broker(request.param) as broker:
        yield from _session(broker, folder, tmp_path_factory)


def _gate(session: LabSession) -> redis.Redis:
    return redis.Redis.from_url(session.broker.backend_url, socket_timeout=5)


def _faults(run: LabRun) -> list[tuple[str, str]]:
    return [(life.detail, life.hostname) for life in run.timeline.lifecycle() if life.kind == "broker"]


# -- the proxy on its own -------------------------------------------------------------------------------


def _ping(sock: socket.socket) -> bytes:
    """One PING over a raw socket: b"+PONG\\r\\n", or b"" when the proxy dropped the connection."""
    try:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)
    except OSError:  # a reset
        return b""


def test_the_proxy_relays_cuts_refuses_and_holds_bytes():
    with open_broker("redis") as broker, Proxy.to(broker.url) as proxy:
        url = proxy.url_for("amqp://guest:pw@127.0.0.1:5672//")
        assert url == f"amqp://guest:pw@127.0.0.1:{proxy.port}//"  # credentials and vhost kept
        first = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert _ping(first) == b"+PONG\r\n" and proxy.accepted == 1
        assert proxy.cut() == 1 and proxy.cut_connections == 1
        assert _ping(first) == b""  # the cut connection fails at once, it does not hang
        proxy.refuse()
        try:
            refused = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        except ConnectionError:  # the reset can beat connect() back on loopback: refused all the same
            refused = None
        else:
            assert _ping(refused) == b""
        wait_until(lambda: proxy.refused == 1, "refusal counted", 5)
        proxy.accept()
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert _ping(held) == b"+PONG\r\n" and proxy.accepted == 2
        proxy.stall()
        held.sendall(b"PING\r\n")
        held.settimeout(0.5)
        with pytest.raises(TimeoutError):
            held.recv(64)  # held in the proxy, not lost
        proxy.resume()
        held.settimeout(5)
        assert (
            held.recv(64) == b"+PONG\r\n" and proxy.cut_connections == 1
        )  # same connection, nothing dropped
        for sock in (first, refused, held):
            if sock is not None:
                sock.close()
    assert proxy.active == 0


# -- the embedded Valkey, restarted for real --------------------------------------------------------------


@pytest.mark.parametrize("appendonly", [False, True])
def test_a_restart_keeps_queued_messages_only_with_appendonly(appendonly, no_orphans):
    with embedded_valkey(appendonly=appendonly) as broker:
        ns = Namespace(broker, "restart")
        for n in range(3):
            ns.app().send_task("tasks.add", (n, n))
        assert ns.queue_depth() == 3
        port, folder = broker.server.port, broker.server.dir
        broker.server.stop()
        assert not broker.server.running
        broker.server.start()
        assert (broker.server.port, broker.server.dir) == (port, folder)  # same address, same data folder
        assert ns.queue_depth() == (3 if appendonly else 0)
        ns.cleanup()


def test_keep_data_turns_persistence_on_then_a_plain_restart_empties_it(no_orphans):
    with embedded_valkey() as broker:
        ns = Namespace(broker, "restart")
        for n in range(3):
            ns.app().send_task("tasks.add", (n, n))
        broker.restart(keep_data=True)  # appendonly switched on while it runs, then stopped gracefully
        assert broker.server.appendonly and ns.queue_depth() == 3
        broker.restart(keep_data=False)  # a crash and its files gone: what a fresh container starts with
        assert ns.queue_depth() == 0 and broker.server.restarts == 2


def test_a_shared_broker_is_never_restarted():
    with open_broker("redis") as broker:
        assert not broker.restartable
        with pytest.raises(RuntimeError, match="never restarts"):
            broker.restart()


def test_queued_work_survives_keep_data_and_a_worker_reconnects_after_a_restart(embedded):
    run = LabRun(embedded, BUDGET)
    queued = [run.send("add", n, 1) for n in range(3)]  # no worker yet: they wait on the broker
    run.restart_broker(keep_data=True)
    worker = embedded.start_worker("w1", concurrency=1)
    assert [run.result(r) for r in queued] == [1, 2, 3]  # nothing the contract promises was lost

    run.restart_broker()  # without persistence: the running worker's connection dies with the server
    run.wait_reconnected(worker)
    assert run.result(run.send("add", 2, 3)) == 5
    assert worker.alive and run.timeline.lifecycle(worker.hostname)  # the same process, reconnected
    assert [what for what, _ in _faults(run)] == ["broker-down", "broker-up"] * 2


def test_broker_down_in_a_block_refuses_the_worker_until_it_ends(embedded):
    run = LabRun(embedded, BUDGET)
    worker = embedded.start_worker("w2", concurrency=1)
    with run.broker_down():
        assert not embedded.broker.server.running
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(embedded.broker.url, socket_connect_timeout=1).ping()
    run.wait_reconnected(worker)
    assert run.result(run.send("add", 1, 1)) == 2


# -- a worker's link to Redis / RabbitMQ, through the grader's proxy -------------------------------------


def test_a_cut_connection_is_re_established(shared):
    run = LabRun(shared, BUDGET)
    worker = shared.start_worker("cut", through_proxy=True, concurrency=1)
    proxy = shared.proxy_of(worker)
    before = proxy.accepted
    assert run.cut_connection(worker) >= 1
    run.wait_reconnected(worker)  # broker_connection_retry (on by default): same process, new connections
    assert proxy.accepted > before and worker.alive
    assert run.result(run.send("add", 2, 2)) == 4
    assert _faults(run) == [("connection-cut", worker.hostname)]
    worker.stop()


def test_a_down_link_is_refused_while_others_reach_the_broker(shared):
    run = LabRun(shared, BUDGET)
    worker = shared.start_worker("down", through_proxy=True, concurrency=1)
    proxy = shared.proxy_of(worker)
    with run.connection_down(worker):
        wait_until(
            lambda: proxy.refused >= 1, "reconnection attempt refused", BUDGET
        )  # it kept trying (2 s, 4 s, ...)
        assert not worker.ping(0.5)  # the grader still reaches the broker; the worker does not
    run.wait_reconnected(worker)
    assert run.result(run.send("add", 3, 3)) == 6
    assert [what for what, _ in _faults(run)] == ["connection-down", "connection-up"]
    worker.stop()


def test_broker_down_on_a_shared_broker_takes_it_from_the_proxied_workers_only(shared):
    """What an autograder gets on a broker the kit must not restart: the same block, played by the proxy."""
    run = LabRun(shared, BUDGET)
    worker = shared.start_worker("relay", through_proxy=True, concurrency=1)
    with run.broker_down(keep_data=True):
        sent = [run.send("add", n, n) for n in range(3)]  # the grader still reaches the broker
        assert not worker.ping(0.5)  # the proxied worker does not
    run.wait_reconnected(worker)
    assert [run.result(r) for r in sent] == [0, 2, 4]  # kept: nothing was restarted
    assert [what for what, _ in _faults(run)] == ["broker-down", "broker-up"]
    assert {e.get("how") for e in run.timeline.events("celerylab-broker")} == {"proxy"}
    worker.stop()


@pytest.mark.slow
def test_a_stalled_link_drops_nothing(shared):
    run = LabRun(shared, BUDGET)
    worker = shared.start_worker("stall", through_proxy=True, concurrency=1)
    proxy = shared.proxy_of(worker)
    with run.stall_connection(worker):
        result = run.send("add", 4, 4)
        assert not worker.ping(1.0)  # its replies are held in the proxy
    assert run.result(result) == 8  # the held bytes flowed on the same connections
    assert proxy.cut_connections == 0 and "Connection to broker lost" not in worker.log()  # never noticed
    worker.stop()


@pytest.mark.slow
@pytest.mark.parametrize("cancel", [False, True], ids=["default", "cancel_on_loss"])
def test_acks_late_task_running_during_a_cut_is_delivered_again(shared, cancel):
    """At-least-once: the broker gets the unacked message back (RabbitMQ: the channel closed; Redis: the
    worker's channel restores its unacked messages as it closes) and delivers it again at once. With
    ``worker_cancel_long_running_tasks_on_connection_loss`` the first run is terminated: one completion;
    without it (Celery 5's default) both runs complete: a duplicate."""
    run = LabRun(shared, BUDGET)
    settings = {"worker_cancel_long_running_tasks_on_connection_loss": cancel}
    gate_url = shared.broker.backend_url  # not through the proxy: the cut never touches the counting
    worker = shared.start_worker(
        f"dup{int(cancel)}", through_proxy=True, concurrency=2, settings=settings, env={"GATE_URL": gate_url}
    )
    gate, key = _gate(shared), f"{shared.ns.name}:{cancel}"
    try:
        result = run.send("gated", key)
        wait_until(lambda: gate.get(f"{key}:runs"), "first run", BUDGET)  # running, held at the gate
        worker.settle()
        run.cut_connection(worker)
        wait_until(
            lambda: int(gate.get(f"{key}:runs") or 0) >= 2, "second delivery", BUDGET
        )  # while the first holds
        gate.set(f"{key}:open", 1)
        run.wait(result)
        tries = run.timeline.attempts(result.id)
        assert len(tries) == 2 and tries[1].redelivered and tries[1].outcome == "success"
        if cancel:
            wait_until(
                lambda: run.timeline.attempts(result.id)[0].outcome != "running",
                "end of the first run",
                BUDGET,
            )
            first = run.timeline.attempts(result.id)[0]
            assert int(gate.get(f"{key}:done")) == 1 and first.outcome != "success"  # terminated
        else:
            wait_until(lambda: int(gate.get(f"{key}:done") or 0) == 2, "second completion", BUDGET)
            both = lambda _: [t.outcome for t in run.timeline.attempts(result.id)] == ["success"] * 2  # noqa: E731
            run.wait_until(both, "both runs reported a success")  # the duplicate ran to its end too
    finally:
        gate.delete(f"{key}:runs", f"{key}:done", f"{key}:open")
        worker.stop()
