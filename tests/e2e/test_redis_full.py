"""A Redis near its memory limit: the receiver sheds load before it, and nothing accepted is
lost or applied twice. Private redis-servers on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from common import queue
from common.queue import QUEUE_NAME
from tests.e2e.stack import IsolatedStack, scalar
from tests.e2e.test_faults import PROCESSED, assert_exactly_once, leads, safe_count, send_all
from tests.helpers import wait_for
from tests.payloads import reply
from tests.redis_server import RedisServer

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
