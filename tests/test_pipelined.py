"""PipelinedScript against a real redis-server: concurrent calls travel together, each gets its
own reply or error, a flushed script cache is reloaded without running any call twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from common.queue.pipelined import PipelinedScript
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.reliability
T = TypeVar("T")

# Counts its runs, and fails on request: ARGV[1] == 'fail'.
COUNTING = """
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
return {redis.call('INCR', KEYS[1]), ARGV[1]}
"""
DB = 9


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.db_url(DB))
    client.flushdb()
    client.close()
    return redis_server.db_url(DB)


def _run(url: str, body: Callable[[aioredis.Redis, PipelinedScript], Awaitable[T]]) -> T:
    async def main() -> T:
        client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return await body(client, PipelinedScript(client, COUNTING))
        finally:
            await client.aclose()

    return asyncio.run(main())


def _reads(client: redis.Redis) -> int:
    return int(client.info("stats")["total_reads_processed"])


def test_concurrent_calls_each_get_their_own_reply_from_one_pipeline(url: str) -> None:
    observer = redis.Redis.from_url(url)

    async def body(_: aioredis.Redis, script: PipelinedScript) -> tuple[list[Any], int]:
        await script(["runs"], ["warm"])  # loads the script, opens and sets up a connection
        before = _reads(observer)
        replies = await asyncio.gather(*(script(["runs"], [f"call-{i}"]) for i in range(50)))
        return replies, _reads(observer) - before

    replies, reads = _run(url, body)
    observer.close()

    assert sorted(int(count) for count, _ in replies) == list(range(2, 52))
    assert [tag.decode() for _, tag in replies] == [f"call-{i}" for i in range(50)]
    # A round trip per call would be 50 reads on the server at least; together the calls are
    # one write, read at once (the second read is the INFO that counts them).
    assert reads <= 3, reads


def test_a_flushed_script_cache_is_reloaded_and_no_call_runs_twice(url: str) -> None:
    observer = redis.Redis.from_url(url)

    async def body(client: aioredis.Redis, script: PipelinedScript) -> list[Any]:
        first = await asyncio.gather(*(script(["runs"], ["a"]) for _ in range(10)))
        await client.script_flush()  # as after a Redis restart without persistence
        second = await asyncio.gather(*(script(["runs"], ["b"]) for _ in range(10)))
        return [*first, *second]

    replies = _run(url, body)
    runs = int(observer.get("runs") or 0)
    observer.close()

    assert len(replies) == 20
    assert runs == 20


def test_an_error_reply_fails_only_its_own_call(url: str) -> None:
    async def body(_: aioredis.Redis, script: PipelinedScript) -> list[Any]:
        calls = [script(["runs"], ["ok"]), script(["runs"], ["fail"]), script(["runs"], ["ok"])]
        return await asyncio.gather(*calls, return_exceptions=True)

    ok, failed, ok_too = _run(url, body)

    assert isinstance(failed, ResponseError)
    assert "asked to fail" in str(failed)
    assert [ok[1], ok_too[1]] == [b"ok", b"ok"]


def test_a_caller_cancelled_before_its_call_left_is_not_sent(url: str) -> None:
    observer = redis.Redis.from_url(url)

    async def body(_: aioredis.Redis, script: PipelinedScript) -> tuple[list[Any], bool]:
        doomed = asyncio.ensure_future(script(["runs"], ["doomed"]))
        others = [asyncio.ensure_future(script(["runs"], [f"kept-{i}"])) for i in range(3)]
        await asyncio.sleep(0)  # every call is queued, the batch has not left yet
        doomed.cancel()
        replies = await asyncio.gather(*others)
        return replies, doomed.cancelled()

    replies, cancelled = _run(url, body)
    runs = int(observer.get("runs") or 0)
    observer.close()

    assert cancelled
    assert [tag for _, tag in replies] == [b"kept-0", b"kept-1", b"kept-2"]
    assert runs == 3  # the request given up on claimed nothing


def test_a_failed_reload_keeps_the_replies_of_the_calls_that_did_run(
    url: str, redis_server: RedisServer
) -> None:
    # A SCRIPT FLUSH from another client lands between two calls of one batch: the first ran,
    # the second finds no script; reloading it then fails (this user may not SCRIPT LOAD).
    admin = redis.Redis.from_url(url)
    admin.acl_setuser(
        "no-script-load", enabled=True, passwords=["+pw"], keys=["*"],
        commands=["+@all", "-script|load"],
    )  # fmt: skip
    admin.script_load(COUNTING)
    limited = url.replace("redis://", "redis://no-script-load:pw@")

    class FlushedMidway(PipelinedScript):
        async def pipeline(self, calls: list[Any]) -> list[Any]:
            if len(calls) < 2:
                return await super().pipeline(calls)
            first = await super().pipeline(calls[:1])
            admin.script_flush()
            return [*first, *await super().pipeline(calls[1:])]

    async def main() -> list[Any]:
        client = aioredis.Redis.from_url(limited, socket_timeout=2)
        try:
            script = FlushedMidway(client, COUNTING)
            calls = [script(["runs"], ["ran"]), script(["runs"], ["flushed"])]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.aclose()

    try:
        ran, flushed = asyncio.run(main())
        runs = int(admin.get("runs") or 0)
    finally:
        admin.acl_deluser("no-script-load")
        admin.close()

    assert ran == [1, b"ran"]
    assert isinstance(flushed, ResponseError)
    assert "NOPERM" in str(flushed) or "permission" in str(flushed).lower(), flushed
    assert runs == 1


def test_an_unreachable_redis_fails_every_call_with_a_connection_error() -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"

    async def body(_: aioredis.Redis, script: PipelinedScript) -> list[Any]:
        calls = [script(["runs"], [str(i)]) for i in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = _run(nobody, body)

    assert len(outcomes) == 3
    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes


def test_short_of_replicas_every_call_of_the_trip_fails_not_replicated_but_keeps_its_error(
    url: str,
) -> None:
    # This Redis has no replica: a WAIT for one times out, and no reply may stand.
    async def body(client: aioredis.Redis, _: PipelinedScript) -> list[Any]:
        waiting = PipelinedScript(client, COUNTING, wait_replicas=1, wait_ms=50)
        calls = [waiting(["runs"], [f"call-{i}"]) for i in range(5)]
        return await asyncio.gather(*calls, waiting(["runs"], ["fail"]), return_exceptions=True)

    replies = _run(url, body)
    assert [type(reply).__name__ for reply in replies[:5]] == ["NotReplicated"] * 5
    assert "0 of 1 replica(s) acknowledged within 50 ms" in str(replies[0])
    assert isinstance(replies[5], ResponseError) and "asked to fail" in str(replies[5])
    # The writes happened on the master: the caller answers 503, and a retry finds them.
    observer = redis.Redis.from_url(url)
    assert int(observer.get("runs") or 0) == 5
    observer.close()
