"""common.redis_clients: one way to every Redis, plain or named by Sentinels. (A failover
through real Sentinels: tests/e2e/test_failover.py.)"""

from __future__ import annotations

import pytest
import redis

from common.redis_clients import celery_broker, connect
from common.settings import load_settings
from tests.redis_server import RedisServer

SENTINELS = {"REDIS_SENTINELS": "10.0.0.5:26379,10.0.0.6:26379", "REDIS_SENTINEL_MASTER": "crm"}


def test_a_plain_target_is_its_url(redis_server: RedisServer) -> None:
    target = load_settings({"REDIS_URL": redis_server.db_url(3)}).redis
    client = connect(target, timeout=5)
    try:
        client.set("crm:test:plain", "1")
        assert client.connection_pool.connection_kwargs["db"] == 3
        assert client.get("crm:test:plain") == b"1"
    finally:
        client.delete("crm:test:plain")
        client.close()
    assert celery_broker(target) == {
        "broker_url": redis_server.db_url(3),
        "broker_transport_options": {},
    }


def test_kombu_gets_every_sentinel_the_database_and_both_passwords_quoted() -> None:
    env = SENTINELS | {
        "REDIS_URL": "redis://:p%40ss@ignored/4",
        "REDIS_SENTINEL_PASSWORD": "sentinel-pw",
    }
    config = celery_broker(load_settings(env).broker)
    assert config["broker_url"] == (
        "sentinel://:p%40ss@10.0.0.5:26379/4;sentinel://:p%40ss@10.0.0.6:26379/4"
    )
    assert config["broker_transport_options"] == {
        "master_name": "crm",
        "sentinel_kwargs": {"password": "sentinel-pw"},
    }
    assert "broker_use_ssl" not in config


def test_tls_reaches_the_master_and_when_asked_the_sentinels() -> None:
    env = SENTINELS | {
        "REDIS_URL": "rediss://ignored/0?ssl_cert_reqs=required",
        "REDIS_SENTINEL_TLS": "true",
    }
    target = load_settings(env).redis
    config = celery_broker(target)
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": "required"}
    assert config["broker_transport_options"]["sentinel_kwargs"] == {"ssl": True}
    client = connect(target, timeout=1, connect_timeout=1)
    try:
        pool = client.connection_pool
        assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
        assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    finally:
        client.close()


def test_a_sentinel_target_nobody_answers_for_fails_as_a_connection_error() -> None:
    env = SENTINELS | {"REDIS_SENTINELS": "127.0.0.1:1"}
    client = connect(load_settings(env).redis, timeout=1, connect_timeout=1)
    try:
        with pytest.raises(redis.ConnectionError, match="No master found for 'crm'"):
            client.ping()
    finally:
        client.close()
