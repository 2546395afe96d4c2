"""Batches that touch the same leads lock their rows in one order: two worker nodes draining a
backlog of events for a few hot leads do not deadlock each other."""

from __future__ import annotations

import time

import pytest
import redis
from sqlalchemy import Engine

from common import queue
from tests.e2e.stack import IsolatedStack, reply_envelope, scalar, wait_processed
from tests.payloads import reply

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

TOTAL = 2000


def _deadlocks(engine: Engine) -> int:
    return int(
        scalar(
            engine,
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        )
    )


def _drain(isolated: IsolatedStack, engine: Engine, leads: int) -> tuple[float, int]:
    """Queue TOTAL replies over `leads` leads at once; seconds to drain, deadlocks meanwhile."""
    envelopes = [
        reply_envelope(reply(f"hot{i % leads}@lead{i % leads}.example.com")) for i in range(TOTAL)
    ]
    before = _deadlocks(engine)
    client: redis.Redis = isolated.client
    started = time.monotonic()
    for envelope in envelopes:
        queue.enqueue(client, envelope, grace_seconds=3600)
    wait_processed(engine, [envelope.event_id for envelope in envelopes], timeout=300)
    return time.monotonic() - started, _deadlocks(engine) - before


def test_two_nodes_draining_hot_leads_do_not_deadlock(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    isolated.worker(concurrency=4)
    isolated.worker(concurrency=4)
    hot_seconds, deadlocks = _drain(isolated, superuser_engine, leads=20)
    assert deadlocks == 0, f"{deadlocks} deadlocks between batches"
    assert scalar(superuser_engine, "SELECT count(*) FROM contacts") == 20
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 20
    assert scalar(superuser_engine, "SELECT count(*) FROM activities") == TOTAL
    assert scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 0
    spread_seconds, _ = _drain(isolated, superuser_engine, leads=TOTAL)
    # For the record (bench/README.md compares them); a unit test asserts no timing.
    print(
        f"hot leads: {hot_seconds:.1f} s, {deadlocks} deadlocks; distinct: {spread_seconds:.1f} s"
    )
