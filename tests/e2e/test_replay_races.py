"""Concurrent replays and copies of one event: claiming a dead letter for replay is one atomic
transition only one caller wins (API, CLI and console share it), and copies of one event
applied at the same moment never add up to a death."""

from __future__ import annotations

import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, insert

from common import queue
from db.tables import dead_letters
from tests.e2e.stack import (
    ROOT,
    IsolatedStack,
    reply_envelope,
    scalar,
    wait_processed,
)
from tests.e2e.test_dead_letters import CRM_DLQ, auth
from tests.e2e.test_faults import _blocked_workers
from tests.helpers import wait_for
from tests.payloads import reply

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

LETTERS = 500


def _dead_letters(engine: Engine, count: int) -> list[str]:
    """`count` open config_error dead letters of ordinary replies; their event ids."""
    rows: list[dict[str, Any]] = []
    for i in range(count):
        envelope = reply_envelope(reply(f"race{i}.{uuid.uuid4().hex[:6]}@replay.example.com"))
        rows.append(
            {
                "event_id": uuid.UUID(envelope.event_id),
                "provider": "instantly",
                "event_type": envelope.event_type,
                "envelope": envelope.to_dict(),
                "reason": "config_error",
                "error_class": "ConfigError",
                "error_message": "no default pipeline",
                "attempts": 1,
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(dead_letters), rows)
    return [str(row["event_id"]) for row in rows]


def _api_replay_all(url: str, token: str) -> int:
    answer = httpx.post(
        f"{url}/admin/dead-letters/replay",
        json={"reason": "config_error", "limit": 1000},
        headers=auth(token),
        timeout=300,
    )
    assert answer.status_code == 202, answer.text
    return int(answer.json()["replayed"])


def _cli_replay_all(env: dict[str, str]) -> int:
    done = subprocess.run(
        [CRM_DLQ, "replay", "--all", "--reason", "config_error", "--limit", "1000"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]  # "replayed N, skipped M, failed 0"
    return int(summary.split(",")[0].split()[-1])


@pytest.mark.parametrize("replayers", [2, 10])
def test_concurrent_replay_alls_replay_each_dead_letter_exactly_once(
    stack: str,
    stack_env: dict[str, str],
    admin_token: str,
    superuser_engine: Engine,
    replayers: int,
) -> None:
    event_ids = _dead_letters(superuser_engine, LETTERS)
    start = threading.Barrier(replayers)

    def one(index: int) -> int:
        start.wait()
        # Every other one is the CLI: the API and crm-dlq claim the same way.
        return _cli_replay_all(stack_env) if index % 2 else _api_replay_all(stack, admin_token)

    with ThreadPoolExecutor(replayers) as pool:
        replayed = list(pool.map(one, range(replayers)))

    assert sum(replayed) == LETTERS, replayed
    counts = scalar(superuser_engine, "SELECT array_agg(DISTINCT replay_count) FROM dead_letters")
    assert counts == [1]
    audited = scalar(
        superuser_engine,
        "SELECT sum(replayed) FROM admin_actions WHERE action = 'replay_matching'",
    )
    assert audited == LETTERS
    wait_processed(superuser_engine, event_ids, timeout=180)
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == LETTERS
    assert (
        scalar(superuser_engine, "SELECT count(*) FROM dead_letters WHERE reason = 'worker_lost'")
        == 0
    )


def test_copies_of_one_event_applied_at_the_same_moment_count_no_death(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    # One death would dead-letter it: copies counted as deaths would show at once.
    isolated.worker(concurrency=2, TASK_MAX_WORKER_LOST="1")
    envelope = reply_envelope(reply("two.copies@example.org"), "copies")
    client = isolated.client
    with superuser_engine.connect() as blocker:
        # The first copy's transaction stops at its activity insert, holding its event row.
        blocker.exec_driver_sql("LOCK TABLE activities IN ACCESS EXCLUSIVE MODE")
        queue.enqueue(client, envelope, grace_seconds=300)
        wait_for(lambda: _blocked_workers(superuser_engine) == 1, timeout=30, message="no block")
        queue.enqueue(client, envelope, grace_seconds=300)  # a sweep's or a replay's copy
        wait_for(lambda: _blocked_workers(superuser_engine) == 2, timeout=30, message="no race")
        blocker.rollback()
    wait_processed(superuser_engine, [envelope.event_id])
    wait_for(lambda: client.hlen(queue.INFLIGHT_KEY) == 0, message="left in flight")
    assert scalar(superuser_engine, "SELECT status FROM webhook_events") == "processed"
    assert scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 0
    assert scalar(superuser_engine, "SELECT count(*) FROM activities") == 1
