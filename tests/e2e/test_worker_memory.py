"""Retries wait in Redis, not in the consumer: a backlog of large events retried while
PostgreSQL is down does not grow the worker's main process."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine

from common import queue
from tests.e2e.proxy import TcpProxy
from tests.e2e.stack import IsolatedStack, Process, reply_envelope, wait_processed
from tests.helpers import wait_for
from tests.payloads import reply
from tests.redis_server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

EVENTS = 400
BODY_BYTES = 1_000_000
DOWN_SECONDS = 40
MAX_MAIN_RSS_MB = 300


def _main_rss_mb(process: Process) -> float:
    """Resident memory of the worker's main process alone (the consumer), in MB."""
    for line in Path(f"/proc/{process.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_retries_of_a_large_backlog_do_not_grow_the_consumer(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    proxy = TcpProxy(free_port(), ("127.0.0.1", 5432))  # closed: PostgreSQL is down
    worker = isolated.worker(
        concurrency=2,
        PG_PORT=str(proxy.port),
        TASK_RETRY_BACKOFF_MAX="60",
        TASK_MAX_RETRIES="50",
    )
    filler = "x" * BODY_BYTES
    envelopes = [
        reply_envelope(
            reply(f"big{i}.{uuid.uuid4().hex[:6]}@memory.example.com", reply_text=filler)
        )
        for i in range(EVENTS)
    ]
    for envelope in envelopes:
        queue.enqueue(isolated.client, envelope, grace_seconds=3600)
    peak = _main_rss_mb(worker)
    try:
        wait_for(
            lambda: worker.output().count("retrying in") >= EVENTS,
            timeout=120,
            message="the backlog was not retried while PostgreSQL was down",
        )
        until = time.monotonic() + DOWN_SECONDS
        while time.monotonic() < until:
            peak = max(peak, _main_rss_mb(worker))
            time.sleep(0.5)  # a sampling interval, not a wait for a condition
        proxy.open()
        wait_processed(superuser_engine, [e.event_id for e in envelopes], timeout=300)
    finally:
        proxy.close()
    peak = max(peak, _main_rss_mb(worker))
    print(f"worker main process: peak {peak:.0f} MB, after {_main_rss_mb(worker):.0f} MB")
    assert peak < MAX_MAIN_RSS_MB
