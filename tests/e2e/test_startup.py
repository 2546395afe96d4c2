"""What the receiver and the worker say at start-up in production about the Redis they use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e.stack import start_receiver, start_worker
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

PRODUCTION = {
    "APP_ENV": "production",
    "JWT_SECRET": "Zq4mW8rT1vX7nB3kL9pS2dF6hJ0gY5cE",
    "PG_PASSWORD": "Vn7Qe2Lr9Tx4Mb8Kc1Wz",
    "PG_ADMIN_PASSWORD": "Hs3Jd8Pf1Ga6Ry0Ut5Io",
    "PG_READONLY_PASSWORD": "Rb4Nc8Vm2Xk6Lq0Wt3Ez",
    "HMAC_SHARED_SECRET_INSTANTLY": "Kf82hsQm1Lz0Xc7Vb4Nw",
    "HMAC_SHARED_SECRET_CALCOM": "Pt5Yr9Ue3Wq7Io1As6Df",
}
NO_PERSISTENCE = "Redis has no persistence"
EVICTION = "maxmemory-policy is allkeys-lru"


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server
    server.stop()


def _start_both(env: dict[str, str], log_dir: Path, name: str) -> str:
    receiver, _ = start_receiver(env, log_dir, name=f"receiver-{name}")
    worker = start_worker(env, log_dir, name=f"worker-{name}", concurrency=1)
    try:
        # Both are up: the receiver checks before it answers, the worker before it logs ready.
        return receiver.output() + worker.output()
    finally:
        receiver.stop()
        worker.stop()


def test_production_warns_about_a_redis_without_persistence(
    stack_env: dict[str, str], log_dir: Path, redis_server: RedisServer
) -> None:
    env = stack_env | PRODUCTION | {"REDIS_URL": redis_server.db_url(4)}
    output = _start_both(env, log_dir, "no-persistence")
    # One line from each process, naming the setting.
    assert output.count(NO_PERSISTENCE) == 2, output
    assert "appendonly" in output


def test_production_warns_about_an_evicting_redis_and_not_about_a_durable_one(
    stack_env: dict[str, str], log_dir: Path, durable_redis: RedisServer
) -> None:
    env = stack_env | PRODUCTION | {"REDIS_URL": durable_redis.url}
    quiet = _start_both(env, log_dir, "durable")
    assert NO_PERSISTENCE not in quiet
    assert "maxmemory-policy" not in quiet

    client = redis.Redis.from_url(durable_redis.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    evicting = _start_both(env, log_dir, "evicting")
    assert evicting.count(EVICTION) == 2, evicting


def test_development_does_not_warn(
    stack_env: dict[str, str], log_dir: Path, redis_server: RedisServer
) -> None:
    output = _start_both(stack_env | {"REDIS_URL": redis_server.db_url(4)}, log_dir, "dev")
    assert NO_PERSISTENCE not in output
