"""Broker resolution: explicit choice, environment, local Redis, embedded fallback; and its cleanup."""

from __future__ import annotations

import os

import pytest
import redis

from celerylab.engine import brokers
from celerylab.engine.brokers import BrokerUnavailable, open_broker
from tests.kit.conftest import children_of, is_gone, process_name

DEAD = f"redis://127.0.0.1:{brokers.free_port()}/0"  # nothing listens there


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in (
        "CELERYLAB_BROKER_URL",
        "CELERYLAB_REDIS_URL",
        "CELERYLAB_RABBITMQ_URL",
        "CELERYLAB_BACKEND_URL",
    ):
        monkeypatch.delenv(var, raising=False)


def test_auto_uses_local_redis_when_it_answers():
    with open_broker() as broker:
        assert broker.kind == "redis" and broker.url == brokers.LOCAL_REDIS
        assert broker.version.startswith(("redis", "valkey"))


def test_auto_falls_back_to_embedded_valkey_and_stops_it(monkeypatch, no_orphans):
    monkeypatch.setenv("CELERYLAB_REDIS_URL", DEAD)
    with open_broker() as broker:
        assert broker.kind == "embedded" and broker.origin.startswith("no Redis answered")
        assert broker.version.startswith("valkey")
        assert redis.Redis.from_url(broker.url).ping()
        assert broker.url.startswith("redis://127.0.0.1:")  # loopback only
        servers = [pid for pid in children_of(os.getpid()) if "valkey" in process_name(pid)]
    assert servers, "the embedded server should have been a real child process"
    assert all(is_gone(pid) for pid in servers)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(broker.url, socket_connect_timeout=0.5).ping()


def test_environment_variable_wins_over_auto(monkeypatch):
    monkeypatch.setenv("CELERYLAB_BROKER_URL", brokers.LOCAL_RABBITMQ)
    with open_broker() as broker:
        assert broker.kind == "url" and broker.is_amqp and broker.origin.startswith("$CELERYLAB_BROKER_URL")


def test_rabbitmq_keeps_a_redis_result_backend():
    with open_broker("rabbitmq") as broker:
        assert broker.is_amqp and broker.backend_url.startswith("redis://")
        assert "rabbitmq" in broker.version


def test_explicit_redis_that_does_not_answer_says_what_to_do(monkeypatch):
    monkeypatch.setenv("CELERYLAB_REDIS_URL", DEAD)
    with pytest.raises(BrokerUnavailable, match="--broker embedded"), open_broker("redis"):
        pass


@pytest.mark.parametrize("choice, message", [("sqs://x", "not supported"), ("kafka", "unknown broker")])
def test_unsupported_choices_are_refused_clearly(choice, message):
    with pytest.raises(BrokerUnavailable, match=message), open_broker(choice):
        pass


def test_passwords_are_not_shown():
    broker = brokers.Broker("url", "amqp://user:secret@host//", "redis://h/0", "x", "test")
    assert "secret" not in broker.describe()
