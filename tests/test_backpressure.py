"""ingest.backpressure: the watch refuses deliveries past a limit, and ends when it is told to,
even if nobody cancels it (a cancel can be lost inside a redis-py call)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from common import queue
from common.queue import QUEUE_NAME
from ingest.backpressure import Backpressure
from tests.e2e.stack import reply_envelope
from tests.payloads import reply
from tests.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    private = RedisServer(tmp_path, "--appendonly", "no")
    private.start()
    yield private
    private.stop()


async def _until(condition: Callable[[], bool], deadline: float = 10.0) -> None:
    async with asyncio.timeout(deadline):
        while not condition():
            await asyncio.sleep(0.01)


def test_stop_ends_the_watch_without_a_cancel(server: RedisServer) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(server.url)
        watch = Backpressure(client, watermark=0.8, max_depth=0)
        watching = asyncio.create_task(watch.watch())
        await asyncio.sleep(0)  # the first measurement is under way
        watch.stop()
        await asyncio.wait_for(watching, timeout=5)
        await client.aclose()

    asyncio.run(scenario())


def test_a_queue_past_max_queue_depth_refuses_and_a_shorter_one_accepts(
    server: RedisServer,
) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(server.url)
        watch = Backpressure(client, watermark=0.8, max_depth=3)
        watching = asyncio.create_task(watch.watch())
        with redis.Redis.from_url(server.url) as sync:
            for i in range(3):
                envelope = reply_envelope(reply(f"depth{i}@depth.example.com"))
                queue.enqueue(sync, envelope, grace_seconds=300)
        await _until(lambda: watch.reason is not None)
        assert watch.reason == "3 events queued (MAX_QUEUE_DEPTH 3)"
        await client.rpop(QUEUE_NAME)
        await _until(lambda: watch.reason is None)
        watch.stop()
        await asyncio.wait_for(watching, timeout=5)
        await client.aclose()

    asyncio.run(scenario())
