"""Fixtures for end-to-end tests: the session's receiver and worker against its fresh database
and a Redis of the tests' own (helpers in tests/e2e/stack.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from common.settings import Settings
from common.tokens import issue_token
from tests.e2e.stack import (
    IsolatedStack,
    Process,
    queue_idle,
    start_receiver,
    start_worker,
)
from tests.helpers import wait_for
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack-logs")


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def worker(
    stack_env: dict[str, str], log_dir: Path, redis_client: redis.Redis
) -> Iterator[Process]:
    process = start_worker(stack_env, log_dir)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def receiver_process(
    stack_env: dict[str, str], log_dir: Path, redis_client: redis.Redis
) -> Iterator[tuple[Process, str]]:
    process, url = start_receiver(stack_env, log_dir)
    yield process, url
    process.stop()


@pytest.fixture(scope="session")
def receiver(receiver_process: tuple[Process, str]) -> str:
    return receiver_process[1]


@pytest.fixture
def stack(
    receiver: str,
    worker: Process,
    redis_client: redis.Redis,
    superuser_engine: Engine,
) -> Iterator[str]:
    """A quiet stack with empty CRM tables and no idempotency keys: the receiver's base URL."""
    wait_for(lambda: queue_idle(redis_client), timeout=60, message="queue did not drain")
    for key in redis_client.scan_iter("crm:*"):
        redis_client.delete(key)
    with superuser_engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE activities, deals, contacts, companies, webhook_events, dead_letters,"
                " admin_actions"
                " RESTART IDENTITY CASCADE"
            )
        )
    yield receiver
    assert worker.alive(), f"worker died:\n{worker.output()}"


@pytest.fixture(scope="session")
def reader_token(settings: Settings) -> str:
    return issue_token(settings.jwt_secret.get(), sub="tests", role="reader")


@pytest.fixture(scope="session")
def admin_token(settings: Settings) -> str:
    return issue_token(settings.jwt_secret.get(), sub="tests", role="admin")


@pytest.fixture
def isolated(
    stack_env: dict[str, str], log_dir: Path, stack: str, redis_server: RedisServer
) -> Iterator[IsolatedStack]:
    isolated_stack = IsolatedStack(stack_env, log_dir, redis_server.db_url(1))
    yield isolated_stack
    isolated_stack.close()
