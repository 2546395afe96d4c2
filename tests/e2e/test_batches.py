"""A backlog is committed several events per transaction, with the same once-only effects and
the same per-event policy (dead letter, retry) as one event at a time — with real workers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from sqlalchemy import Engine

from common import queue
from common.envelope import Envelope
from common.queue import QUEUE_NAME, TASK_NAME
from tests.e2e.proxy import TcpProxy
from tests.e2e.stack import (
    IsolatedStack,
    free_port,
    queue_reply,
    reply_envelope,
    scalar,
    wait_processed,
)
from tests.helpers import wait_for
from tests.payloads import reply

pytestmark = pytest.mark.e2e


def _replies(count: int, tag: str) -> list[dict[str, object]]:
    return [reply(f"{tag}{index}@example.org") for index in range(count)]


def test_backlog_is_committed_in_batches_each_event_once(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    event_ids = [queue_reply(isolated.client, body) for body in _replies(200, "backlog")]
    isolated.worker(concurrency=2, WORKER_BATCH_SIZE="10")
    wait_processed(superuser_engine, event_ids)

    assert scalar(superuser_engine, "SELECT count(*) FROM webhook_events") == 200
    assert scalar(superuser_engine, "SELECT count(*) FROM contacts") == 200
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 200
    assert scalar(superuser_engine, "SELECT count(*) FROM activities") == 200
    # Rows written by one transaction share its id (xmin): fewer transactions than events,
    # none holding more than the batch size.
    transactions, largest = scalar(
        superuser_engine,
        "SELECT ARRAY[count(*), max(n)] FROM"
        " (SELECT count(*) AS n FROM webhook_events GROUP BY xmin::text::bigint) t",
    )
    assert transactions < 100
    assert largest <= 10
    assert isolated.client.hlen("crm:inflight") == 0
    assert isolated.client.llen(QUEUE_NAME) == 0


def test_bad_events_in_a_backlog_are_dead_lettered_and_the_rest_committed(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    bodies = _replies(30, "mixed")
    bodies[7] = reply(lead_email=None, email=None)  # fails inside the transaction
    event_ids = [queue_reply(isolated.client, body) for body in bodies]
    unknown = Envelope(str(uuid.uuid4()), "hubspot", "x", "k", datetime.now(UTC).isoformat(), {})
    queue.enqueue(isolated.client, unknown, grace_seconds=300)
    isolated.worker(WORKER_BATCH_SIZE="10")
    wait_processed(superuser_engine, event_ids)
    wait_for(
        lambda: scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 2,
        timeout=30,
        message="the unknown provider was not dead-lettered",
    )

    reasons = scalar(superuser_engine, "SELECT array_agg(reason ORDER BY reason) FROM dead_letters")
    assert reasons == ["invalid_payload", "unknown_provider"]
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 29
    assert scalar(superuser_engine, "SELECT count(*) FROM activities") == 29
    statuses = scalar(
        superuser_engine,
        "SELECT array_agg(status || ':' || n ORDER BY status) FROM"
        " (SELECT status, count(*) AS n FROM webhook_events GROUP BY status) s",
    )
    assert statuses == ["dead:2", "processed:29"]
    assert scalar(superuser_engine, "SELECT max(attempts) FROM webhook_events") == 1


def test_backlog_waits_out_postgres_unreachable_and_is_processed_once(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    proxy = TcpProxy(free_port(), ("127.0.0.1", 5432))
    event_ids = [queue_reply(isolated.client, body) for body in _replies(12, "outage")]
    worker = isolated.worker(
        PG_PORT=str(proxy.port), WORKER_BATCH_SIZE="5", TASK_RETRY_BACKOFF_MAX="1",
        TASK_MAX_RETRIES="30",
    )  # fmt: skip
    try:
        wait_for(
            lambda: worker.output().count("retrying in") >= 24,
            timeout=60,
            message="the backlog was not retried while PostgreSQL was unreachable",
        )
        proxy.open()
        wait_processed(superuser_engine, event_ids)
    finally:
        proxy.close()
    assert scalar(superuser_engine, "SELECT count(*) FROM webhook_events") == 12
    assert scalar(superuser_engine, "SELECT min(attempts) FROM webhook_events") >= 2
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 12
    assert scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 0
    wait_for(
        lambda: isolated.client.hlen("crm:inflight") == 0,
        timeout=10,
        message="in-flight records were left behind",
    )


def test_a_message_celery_publishes_for_a_retry_reads_back(isolated: IsolatedStack) -> None:
    envelope = reply_envelope(reply())
    app = Celery("publisher", broker=isolated.env["REDIS_URL"], set_as_current=False)
    before = datetime.now(UTC)
    app.send_task(
        TASK_NAME, args=(envelope.to_dict(),), task_id=envelope.event_id, queue=QUEUE_NAME,
        retries=3, countdown=30,
    )  # fmt: skip
    raw = isolated.client.rpop(QUEUE_NAME)
    assert isinstance(raw, bytes)

    task = queue.message.read(raw)
    assert (task.task_id, task.task_name, task.retries) == (envelope.event_id, TASK_NAME, 3)
    assert task.eta is not None
    assert before + timedelta(seconds=29) < task.eta < before + timedelta(seconds=60)
    assert task.envelope == envelope.to_dict()
