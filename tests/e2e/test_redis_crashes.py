"""A worker through Redis crashes and lost connections: it keeps consuming with no supervisor,
and an event a consumer lost with its connection is processed again within about a minute."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from common import queue
from tests.e2e.proxy import TcpProxy
from tests.e2e.stack import IsolatedStack, reply_envelope, wait_processed
from tests.e2e.test_faults import PROCESSED, assert_exactly_once, leads, safe_count, send_all
from tests.helpers import wait_for
from tests.payloads import reply
from tests.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server
    server.stop(signal.SIGKILL)


def test_a_worker_keeps_consuming_through_ten_redis_crashes_with_no_supervisor(
    isolated: IsolatedStack, aof_redis: RedisServer, superuser_engine: Engine
) -> None:
    _, url = isolated.receiver(REDIS_URL=aof_redis.url)
    total = 2000
    assert [r.status_code for r in send_all(url, leads(total, "crash"))] == [202] * total
    # Started as docs/OPERATIONS.md says, on its own: nothing would restart it.
    worker = isolated.worker(REDIS_URL=aof_redis.url, concurrency=2)
    main_pid = worker.popen.pid

    crashes_mid_drain = 0
    for _ in range(10):
        target = min(total, safe_count(superuser_engine, PROCESSED) + 50)
        wait_for(
            lambda target=target: safe_count(superuser_engine, PROCESSED) >= target,
            timeout=120,
            message="the worker made no progress after a Redis crash",
        )
        crashes_mid_drain += safe_count(superuser_engine, PROCESSED) < total
        aof_redis.stop(signal.SIGKILL)
        aof_redis.start()
        assert worker.alive(), f"the worker exited:\n{worker.output()[-3000:]}"

    assert crashes_mid_drain >= 5, "the drain was over before most crashes"
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == total,
        timeout=300,
        message="not every accepted event was processed after the crashes",
    )
    assert worker.alive() and worker.popen.pid == main_pid
    assert "Unrecoverable error" not in worker.output()
    assert_exactly_once(superuser_engine, total)


def test_an_event_lost_with_the_consumers_connection_is_processed_within_a_minute(
    isolated: IsolatedStack, redis_server: RedisServer, superuser_engine: Engine
) -> None:
    # The answer to the consumer's pop is lost on the way: Redis popped the message, the
    # consumer never saw it, and its connection drops. Its record would be due in an hour.
    envelope = reply_envelope(reply("lost.pop@example.org"))
    queue.enqueue(isolated.client, envelope, grace_seconds=3600)
    event_id = envelope.event_id
    proxy = TcpProxy(free_port(), ("127.0.0.1", redis_server.port), cut_reply_to=b"BRPOP")
    proxy.open()
    try:
        worker = isolated.worker(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/1")
        wait_for(lambda: proxy.replies_cut == 1, timeout=30, message="no pop's answer was cut")
        assert isolated.client.llen(queue.QUEUE_NAME) == 0, "the pop did not happen"
        wait_processed(superuser_engine, [event_id], timeout=90)
    finally:
        proxy.close()
    assert "in-flight sweep queued 1 event(s) again" in worker.output()
    assert_exactly_once(superuser_engine, 1)
