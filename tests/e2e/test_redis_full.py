"""A Redis near its memory limit: the receiver sheds load before it, and nothing accepted is
lost or applied twice. Private redis-servers on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from cli.run import worker_command
from common import queue
from common.queue import QUEUE_NAME
from common.settings import load_settings
from tests.e2e.stack import IsolatedStack, Process, queue_reply, scalar, wait_processed
from tests.e2e.test_faults import PROCESSED, assert_exactly_once, leads, safe_count, send_all
from tests.helpers import wait_for
from tests.payloads import reply
from tests.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]


@pytest.fixture
def limited(
    tmp_path: Path, stack: str, stack_env: dict[str, str], log_dir: Path
) -> Iterator[IsolatedStack]:
    """An isolated stack on a redis-server of its own, with noeviction as compose ships it."""
    server = RedisServer(tmp_path, "--appendonly", "no", "--maxmemory-policy", "noeviction")
    server.start()
    isolated = IsolatedStack(stack_env, log_dir, server.url)
    yield isolated
    isolated.close()
    server.stop()


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def test_the_receiver_sheds_load_before_redis_is_full(
    limited: IsolatedStack, superuser_engine: Engine
) -> None:
    client = limited.client
    client.config_set("maxmemory", "3mb")
    _, url = limited.receiver()
    lead_data = "lead data " * 400  # ~4 KB a delivery, as in the report
    bodies = [reply(f"shed{i}@shed.example.com", notes=lead_data) for i in range(2000)]

    answers = send_all(url, bodies)

    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {202, 503}, sorted(set(statuses))
    accepted = [answer.json()["event_id"] for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code == 503]
    assert accepted and refused
    assert all(answer.headers["retry-after"].isdigit() for answer in refused)
    assert any("full" in answer.json()["error"] for answer in refused)
    # Every 202 is queued and keyed; no refusal left a key behind.
    assert client.llen(QUEUE_NAME) == len(accepted)
    assert len(list(client.scan_iter(f"{queue.IDEMPOTENCY_PREFIX}*"))) == len(accepted)

    client.config_set("maxmemory", 0)
    limited.worker(concurrency=2)
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == len(accepted),
        timeout=120,
        message="the accepted events were not all processed",
    )
    assert_exactly_once(superuser_engine, len(accepted))
    assert scalar(superuser_engine, "SELECT count(*) FROM webhook_events") == len(accepted)


def test_the_receiver_refuses_past_max_queue_depth(limited: IsolatedStack) -> None:
    _, url = limited.receiver(MAX_QUEUE_DEPTH="50")
    statuses = [answer.status_code for answer in send_all(url, leads(400, "depth"), 5)]
    assert set(statuses) <= {202, 503}
    assert 50 <= statuses.count(202) < 400
    assert limited.client.llen(QUEUE_NAME) == statuses.count(202)


def test_the_worker_rides_out_a_full_redis_and_loses_nothing(
    limited: IsolatedStack, superuser_engine: Engine
) -> None:
    client = limited.client
    # One event per task: the consumer's own bookkeeping for each, and a drain slow enough
    # (seconds, not the half second set-based batches of 100 take) to be met mid-way.
    worker = limited.worker(concurrency=2, WORKER_BATCH_SIZE="1")
    event_ids = [queue_reply(client, body) for body in leads(2000, "oom")]
    # Full for good while the worker drains: every write and every MULTI refused, the
    # consumer's own bookkeeping included.
    client.config_set("maxmemory", "1mb")
    wait_for(
        lambda: "Redis refuses writes" in worker.output() or not worker.alive(),
        timeout=60,
        message="the worker never met the full Redis",
    )
    assert worker.alive(), f"the worker exited on a full Redis:\n{worker.output()[-3000:]}"
    assert safe_count(superuser_engine, PROCESSED) < len(event_ids)
    client.config_set("maxmemory", 0)
    wait_processed(superuser_engine, event_ids, timeout=120)
    assert worker.alive(), worker.output()[-3000:]
    assert "Redis takes writes again" in worker.output()
    assert_exactly_once(superuser_engine, len(event_ids))


def test_the_worker_rides_out_a_redis_turned_read_only(
    limited: IsolatedStack, superuser_engine: Engine
) -> None:
    client = limited.client
    worker = limited.worker(concurrency=2)
    event_ids = [queue_reply(client, body) for body in leads(2000, "ro")]
    # A replica of a master that is not there (a failover gone wrong): read-only, data kept.
    client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    wait_for(
        lambda: "Redis refuses writes" in worker.output() or not worker.alive(),
        timeout=60,
        message="the worker never met the read-only Redis",
    )
    assert worker.alive(), f"the worker exited on a read-only Redis:\n{worker.output()[-3000:]}"
    client.execute_command("REPLICAOF", "NO", "ONE")
    wait_processed(superuser_engine, event_ids, timeout=120)
    assert worker.alive(), worker.output()[-3000:]
    assert_exactly_once(superuser_engine, len(event_ids))


def test_a_worker_started_against_a_full_redis_waits_and_then_consumes(
    limited: IsolatedStack, superuser_engine: Engine, log_dir: Path
) -> None:
    client = limited.client
    event_ids = [queue_reply(client, body) for body in leads(50, "oomstart")]
    client.config_set("maxmemory", "1mb")
    command = worker_command(load_settings(limited.env), concurrency=1, name="oomstart@%h")
    worker = Process("worker-oomstart", command, limited.env, log_dir)
    try:
        wait_for(
            lambda: "starting to consume waits" in worker.output() or not worker.alive(),
            timeout=60,
            message="the worker never met the full Redis",
        )
        assert worker.alive(), f"the worker exited on a full Redis:\n{worker.output()[-3000:]}"
        client.config_set("maxmemory", 0)
        wait_processed(superuser_engine, event_ids, timeout=120)
        assert worker.alive()
        assert_exactly_once(superuser_engine, len(event_ids))
    finally:
        worker.stop()
