"""common.queue.take: a popped task is never dropped — not by a Redis that refuses writes, not by
a taker that dies right after the pop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from common import queue
from common.queue import QUEUE_NAME, message
from tests.e2e.proxy import TcpProxy
from tests.e2e.stack import reply_envelope
from tests.helpers import wait_for
from tests.payloads import reply
from tests.redis_server import RedisServer, free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    private = RedisServer(tmp_path, "--appendonly", "no", "--maxmemory-policy", "noeviction")
    private.start()
    yield private
    private.stop()


@pytest.fixture
def full_redis(server: RedisServer) -> Iterator[redis.Redis]:
    """A Redis of the test's own, which the test fills by lowering its maxmemory."""
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


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


def test_events_popped_by_a_taker_that_never_saw_them_come_back_after_the_lease(
    server: RedisServer,
) -> None:
    """Found by killing a worker's pool mid-burst: a process gone right after its batch left
    the list (the pop answered, nothing after it done) left 19 events off the list and due
    only a visibility timeout after they were queued — an hour. Here the answer to the pop is
    lost on the way, as to a process killed at that moment (redis-py then pops again and
    finds nothing): the events must be leased all the same, and come back after the lease."""
    client = redis.Redis.from_url(server.url)
    envelopes = [reply_envelope(reply(f"cut{i}@take.example.com")) for i in range(5)]
    for envelope in envelopes:
        queue.enqueue(client, envelope, grace_seconds=3600)
    proxy = TcpProxy(free_port(), ("127.0.0.1", server.port), cut_reply_to=QUEUE_NAME.encode())
    proxy.open()
    taker = redis.Redis(port=proxy.port, socket_timeout=5)
    try:
        assert queue.take(taker, 10, hold_seconds=1) == []
        assert proxy.replies_cut == 1
        assert client.llen(QUEUE_NAME) == 0, "the pop did not happen"
        swept: list[int] = []

        def came_back() -> bool:
            swept.append(queue.sweep(client, grace_seconds=3600))
            return sum(swept) == len(envelopes)

        wait_for(came_back, timeout=10, message="the popped events did not come back: no lease")
        back = {message.read(raw).task_id for raw in client.lrange(QUEUE_NAME, 0, -1)}
        assert back == {envelope.event_id for envelope in envelopes}
    finally:
        taker.close()
        proxy.close()
        client.close()


def test_a_message_given_back_keeps_its_due_time_and_is_not_leased(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    ready = reply_envelope(reply("ready@take.example.com"))
    queue.enqueue(client, ready, grace_seconds=3600)
    later = reply_envelope(reply("later@take.example.com"))
    task = queue.QueuedTask(later.event_id, later.to_dict())
    queued_at = time.time()
    queue.requeue(client, task, retries=1, countdown=0, grace_seconds=3600)
    # A retry as Celery itself queues one (or a worker before retries waited in Redis): an ETA.
    client.lset(QUEUE_NAME, 0, message.again(task, retries=1, countdown=600))
    try:
        before = time.time()
        [taken] = queue.take(client, 10, hold_seconds=30)
        assert taken.task_id == ready.event_id
        due = dict(client.zrange(queue.DUE_KEY, 0, -1, withscores=True))
        assert before + 30 <= due[ready.event_id.encode()] <= time.time() + 30
        # As it was on the list: the list stays in the order of its due times.
        assert queued_at + 3600 <= due[later.event_id.encode()] <= before + 3600
        assert [message.read(raw).task_id for raw in client.lrange(QUEUE_NAME, 0, -1)] == [
            later.event_id
        ]
    finally:
        client.close()


def test_a_retry_waits_in_redis_and_is_queued_when_due(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    envelope = reply_envelope(reply("retry@take.example.com"))
    task = queue.QueuedTask(envelope.event_id, envelope.to_dict())
    try:
        queue.requeue(client, task, retries=2, countdown=0.5, grace_seconds=3600)
        assert client.llen(QUEUE_NAME) == 0, "a waiting retry must not be on the list"
        assert queue.release(client, grace_seconds=3600) == 0, "released before it was due"
        wait_for(
            lambda: queue.release(client, grace_seconds=3600) == 1,
            timeout=5,
            message="the retry was not released once due",
        )
        [raw] = client.lrange(QUEUE_NAME, 0, -1)
        queued = message.read(raw)
        assert (queued.task_id, queued.retries, queued.eta) == (envelope.event_id, 2, None)
        assert client.zcard(queue.SCHEDULED_KEY) == 0
        assert client.zscore(queue.DUE_KEY, envelope.event_id) > time.time() + 3000
    finally:
        client.close()


def test_a_message_popped_and_never_leased_is_queued_again_by_the_sweep(
    server: RedisServer,
) -> None:
    """A consumer whose connection dropped with the pop's reply lost the message: off the list,
    never leased. The list is first in, first out, so once a younger message is at the
    consuming end (or the list is empty) and a lease has passed, the sweep queues it again,
    without waiting for its visibility timeout; what still waits on the list stays put."""
    client = redis.Redis.from_url(server.url)
    lost, waiting = (reply_envelope(reply(f"{n}@sweep.example.com")) for n in ("lost", "waiting"))
    try:
        queue.enqueue(client, lost, grace_seconds=3600)
        queue.enqueue(client, waiting, grace_seconds=3600)
        assert message.read(client.rpop(QUEUE_NAME)).task_id == lost.event_id  # dropped
        pushed_long_ago = time.time() - 2 * queue.LEASE_SECONDS + 3600
        client.zadd(queue.DUE_KEY, {lost.event_id: pushed_long_ago})
        client.zadd(queue.DUE_KEY, {waiting.event_id: pushed_long_ago + 1})
        assert queue.sweep(client, grace_seconds=3600) == 1
        queued = [message.read(raw).task_id for raw in client.lrange(QUEUE_NAME, 0, -1)]
        assert queued == [lost.event_id, waiting.event_id]
        # A held one (leased) and a scheduled retry are not lost.
        client.delete(QUEUE_NAME)
        queue.hold(client, [lost.event_id], seconds=queue.LEASE_SECONDS)
        task = queue.QueuedTask(waiting.event_id, waiting.to_dict())
        queue.requeue(client, task, retries=1, countdown=60, grace_seconds=3600)
        assert queue.sweep(client, grace_seconds=3600) == 0
    finally:
        client.close()
