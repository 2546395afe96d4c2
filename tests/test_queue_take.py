"""common.queue.take against a Redis that refuses writes: a popped task is never dropped."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from common import queue
from common.queue import QUEUE_NAME, message
from tests.e2e.stack import reply_envelope
from tests.payloads import reply
from tests.redis_server import RedisServer


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    server = RedisServer(tmp_path, "--appendonly", "no", "--maxmemory-policy", "noeviction")
    server.start()
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()


def test_tasks_popped_while_redis_refuses_writes_are_returned_not_lost(
    full_redis: redis.Redis,
) -> None:
    envelopes = [reply_envelope(reply(f"take{i}@take.example.com")) for i in range(5)]
    for envelope in envelopes:
        queue.enqueue(full_redis, envelope, grace_seconds=300)
    full_redis.config_set("maxmemory", "1mb")  # far below what it uses: every write refused

    taken = queue.take(full_redis, 10, hold_seconds=30)

    assert sorted(task.task_id for task in taken) == sorted(e.event_id for e in envelopes)
    assert full_redis.llen(QUEUE_NAME) == 0


def test_a_popped_message_not_for_the_batch_goes_back_once_redis_takes_writes(
    full_redis: redis.Redis,
) -> None:
    later = reply_envelope(reply("later@take.example.com"))
    task = queue.QueuedTask(later.event_id, later.to_dict())
    full_redis.lpush(QUEUE_NAME, message.again(task, retries=1, countdown=3600))  # due later
    full_redis.config_set("maxmemory", "1mb")
    # Redis takes writes again a moment after the take began: the message must still be there.
    timer = threading.Timer(1.0, lambda: full_redis.config_set("maxmemory", 0))
    timer.start()
    try:
        assert queue.take(full_redis, 10, hold_seconds=30) == []
    finally:
        timer.join()
    [raw] = full_redis.lrange(QUEUE_NAME, 0, -1)
    back = message.read(raw)
    assert back.task_id == later.event_id
    assert back.eta is not None and back.eta > datetime.now(UTC) + timedelta(minutes=50)
