"""worker.broker: the transport's consumer survives the close that follows a Redis crash."""

from __future__ import annotations

import logging

import kombu
import pytest

from tests.redis_server import RedisServer


def test_closing_a_channel_whose_connection_is_gone_does_not_raise(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """After Redis crashes, Celery closes the lost connection and kombu's channel then restores
    what it delivered and not acknowledged — needing the connection its transport has already
    let go of: stock kombu raises AttributeError ('NoneType' object has no attribute
    'hostname'), which ended the worker's main process. Ours logs it and goes on; the
    in-flight sweep brings those messages back."""
    connection = kombu.Connection(redis_server.db_url(3), transport="worker.broker:Transport")
    try:
        channel = connection.channel()
        queue = kombu.Queue("broker-test", channel=channel)
        queue.declare()
        kombu.Producer(channel).publish({"n": 1}, routing_key="broker-test")
        assert queue.get(no_ack=False) is not None  # delivered, not acknowledged
        channel.connection.client = None  # as the kombu Connection leaves its transport
        with caplog.at_level(logging.WARNING, logger="crm.worker"):
            channel.close()
        assert "unacknowledged messages not restored" in caplog.text
    finally:
        connection.release()
