"""The loss of the Redis machine under a burst: a master, a replica and three Sentinels, the
master kill -9ed mid-burst. With REDIS_WAIT_REPLICAS=1 every delivery that got a 202 or a 409
is processed exactly once; without it, a 202 can be lost with the master (counted, printed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine

from common import queue
from common.redis_clients import connect
from common.settings import load_settings
from tests.e2e.stack import Process, scalar, start_receiver, start_worker
from tests.e2e.test_faults import assert_exactly_once, leads
from tests.helpers import wait_for
from tests.payloads import encode, signed_headers
from tests.redis_sentinel import MASTER_NAME, SentinelCluster
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

TOTAL = 2000
KILL_AFTER = 800  # answered deliveries before the master dies: mid-burst
RECOVERY_BOUND_SECONDS = 15


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    made = SentinelCluster(tmp_path / "redis")
    made.start()
    yield made
    made.stop()


@dataclass
class Burst:
    """What the senders saw: each lead's final answer, the 503s on the way, and the times."""

    answers: dict[int, int] = field(default_factory=dict)
    unavailable: int = 0
    killed_at: float | None = None
    recovered_at: float | None = None  # the first 2xx or 409 to a request sent after the kill

    @property
    def recovery_seconds(self) -> float | None:
        if self.killed_at is None or self.recovered_at is None:
            return None
        return self.recovered_at - self.killed_at


async def _deliver(url: str, cluster: SentinelCluster, restart_after_failover: bool) -> Burst:
    burst = Burst()
    bodies = leads(TOTAL, "failover")
    gate = asyncio.Semaphore(50)

    async def kill_and_restart() -> None:
        dead, burst.killed_at = cluster.kill_master()
        await asyncio.to_thread(
            wait_for,
            lambda: cluster.master_port() not in (None, dead.port),
            timeout=30,
            message="the Sentinels did not fail over",
        )
        if restart_after_failover:
            # As docs/OPERATIONS.md has a supervisor do: once the Sentinels moved on, back as
            # a replica of the master they name (a master without persistence restarted as a
            # master would hand its replica an empty dataset).
            await asyncio.to_thread(
                dead.start, "--replicaof", "127.0.0.1", str(cluster.master_port())
            )

    async def one(client: httpx.AsyncClient, index: int) -> None:
        raw = encode(bodies[index])
        deadline = time.monotonic() + 120
        async with gate:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    response = await client.post(
                        "/webhooks/instantly", content=raw, headers=signed_headers(raw)
                    )
                    status = response.status_code
                except httpx.TransportError:
                    status = 0
                if status in (202, 409):
                    burst.answers[index] = status
                    killed = burst.killed_at
                    if killed is not None and sent > killed and burst.recovered_at is None:
                        burst.recovered_at = time.monotonic()
                    if len(burst.answers) == KILL_AFTER:
                        tasks.append(asyncio.create_task(kill_and_restart()))
                    return
                assert status in (0, 503), f"a delivery got {status}: {response.text}"
                burst.unavailable += status == 503
                await asyncio.sleep(0.2)  # a sender's retry, quicker than most

    tasks: list[asyncio.Task[None]] = []
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(TOTAL)))
        await asyncio.gather(*tasks)
    return burst


def _run_burst(
    cluster: SentinelCluster,
    stack_env: dict[str, str],
    log_dir: Path,
    engine: Engine,
    wait_replicas: int,
) -> tuple[Burst, redis.Redis]:
    env = stack_env | {
        "REDIS_URL": "redis://sentinel-named-master/0",  # with Sentinels: the database only
        "REDIS_SENTINELS": cluster.sentinels,
        "REDIS_SENTINEL_MASTER": MASTER_NAME,
        "REDIS_WAIT_REPLICAS": str(wait_replicas),
        "REDIS_WAIT_TIMEOUT_MS": "500",
    }
    processes: list[Process] = []
    try:
        receiver, url = start_receiver(env, log_dir, f"receiver-failover-{wait_replicas}")
        processes.append(receiver)
        for n in (1, 2):
            processes.append(start_worker(env, log_dir, f"worker-failover-{wait_replicas}-{n}", 1))
        pids = [process.popen.pid for process in processes]

        burst = asyncio.run(_deliver(url, cluster, restart_after_failover=True))

        client = connect(load_settings(env).redis, timeout=5)
        wait_for(
            lambda: _settled(client),
            timeout=240,
            message="the queue and the in-flight record did not empty after the failover",
        )
        # The operators' views found the new master too: the receiver's and crm-status, which
        # sees both workers once their consumers reconnected (Celery retries 2 s, then 4 s…).
        details = httpx.get(f"{url}/healthz/details", timeout=30).json()
        assert details["dependencies"]["redis"] == "ok", details
        wait_for(
            lambda: _status_sees_workers(env, 2),
            timeout=60,
            interval=1,
            message="crm-status did not see both workers on the new master",
        )
        for process in processes:
            assert process.alive(), f"{process.name} exited:\n{process.output()[-3000:]}"
            assert "Unrecoverable error" not in process.output(), process.output()[-3000:]
        assert [process.popen.pid for process in processes] == pids
        return burst, client
    finally:
        for process in processes:
            process.stop()


def _status_sees_workers(env: dict[str, str], count: int) -> bool:
    status = subprocess.run(
        [str(Path(sys.executable).with_name("crm-status")), "--json", "--ping-timeout", "3"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    shown = json.loads(status.stdout)
    assert shown["dependencies"] == {"redis": "ok", "postgresql": "ok"}, shown
    return status.returncode == 0 and len(shown["workers"]) == count


def _settled(client: redis.Redis) -> bool:
    try:
        flight = queue.in_flight(client)
        return client.llen(queue.QUEUE_NAME) == 0 and flight.count == 0
    except redis.RedisError:
        return False


def _lost(engine: Engine, burst: Burst) -> int:
    """Deliveries answered 202 or 409 whose event never became rows."""
    stored = {
        row
        for row in scalar(
            engine,
            "SELECT coalesce(array_agg(lower(email)), '{}') FROM contacts",
        )
    }
    return sum(
        1 for index in burst.answers if f"failover{index}@failover{index}.example.com" not in stored
    )


def test_a_master_lost_mid_burst_loses_no_202_when_replicas_acknowledge(
    cluster: SentinelCluster,
    stack: str,
    stack_env: dict[str, str],
    log_dir: Path,
    superuser_engine: Engine,
) -> None:
    burst, client = _run_burst(cluster, stack_env, log_dir, superuser_engine, wait_replicas=1)
    client.close()
    recovery = burst.recovery_seconds
    print(
        f"\nREDIS_WAIT_REPLICAS=1: recovered {recovery:.1f} s after the kill;"
        f" {burst.unavailable} answers of 503; 202s lost: {_lost(superuser_engine, burst)}"
    )
    assert len(burst.answers) == TOTAL, "a delivery never got a 202 or a 409"
    assert recovery is not None and recovery < RECOVERY_BOUND_SECONDS, recovery
    assert burst.unavailable > 0, "the kill did not reach the senders: the test proved nothing"
    assert_exactly_once(superuser_engine, TOTAL)


def test_without_replica_acknowledgement_a_lost_master_may_take_202s_with_it(
    cluster: SentinelCluster,
    stack: str,
    stack_env: dict[str, str],
    log_dir: Path,
    superuser_engine: Engine,
) -> None:
    burst, client = _run_burst(cluster, stack_env, log_dir, superuser_engine, wait_replicas=0)
    client.close()
    recovery = burst.recovery_seconds
    lost = _lost(superuser_engine, burst)
    print(
        f"\nREDIS_WAIT_REPLICAS=0: recovered {recovery:.1f} s after the kill;"
        f" {burst.unavailable} answers of 503; 202s lost: {lost}"
    )
    assert len(burst.answers) == TOTAL
    assert recovery is not None and recovery < RECOVERY_BOUND_SECONDS, recovery
    # Whatever was lost, nothing was applied twice.
    processed = scalar(superuser_engine, "SELECT count(*) FROM webhook_events")
    assert scalar(superuser_engine, "SELECT count(*) FROM contacts") == processed
    assert processed == TOTAL - lost


def test_a_repeat_is_answered_409_only_once_the_claim_it_found_is_on_a_replica(
    tmp_path: Path, stack: str, stack_env: dict[str, str], log_dir: Path
) -> None:
    master, replica = RedisServer(tmp_path / "a"), RedisServer(tmp_path / "b")
    master.start()
    replica.start("--replicaof", "127.0.0.1", str(master.port))
    env = stack_env | {
        "REDIS_URL": master.url,
        "REDIS_WAIT_REPLICAS": "1",
        "REDIS_WAIT_TIMEOUT_MS": "200",
    }
    # Two receivers, as behind a load balancer: the repeat reaches one that never wrote the
    # claim (a connection's own earlier write would give WAIT something to wait for anyway).
    receiver, url = start_receiver(env, log_dir, "receiver-wait")
    other, other_url = start_receiver(env, log_dir, "receiver-wait-other")
    client = redis.Redis.from_url(master.url)
    raw, earlier = (encode(body) for body in leads(2, "waited"))
    try:
        replica_client = redis.Redis.from_url(replica.url)
        wait_for(
            lambda: replica_client.info("replication")["master_link_status"] == "up", timeout=30
        )
        # The other receiver's connection wrote before, and that write is on the replica: a
        # WAIT after a mere read there would answer at once.
        response = httpx.post(
            f"{other_url}/webhooks/instantly", content=earlier, headers=signed_headers(earlier)
        )
        assert response.status_code == 202, response.text
        replica.pause()
        # Claimed and queued on the master alone: not a 202.
        first = httpx.post(f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw))
        assert first.status_code == 503, first.text
        assert first.headers["Retry-After"]
        assert client.llen(queue.QUEUE_NAME) == 2
        # The retry finds that claim; a 409 would tell the sender it is done, and it is not
        # on a replica yet.
        headers = signed_headers(raw)
        again = httpx.post(f"{other_url}/webhooks/instantly", content=raw, headers=headers)
        assert again.status_code == 503, again.text
        replica.resume()

        def repeat_answered() -> int | None:
            response = httpx.post(
                f"{other_url}/webhooks/instantly", content=raw, headers=signed_headers(raw)
            )
            assert response.status_code in (409, 503), response.text
            return response.status_code if response.status_code == 409 else None

        wait_for(repeat_answered, timeout=30, interval=0.2, message="no 409 once replicated")
        assert client.llen(queue.QUEUE_NAME) == 2, "a repeat was queued"
        assert replica_client.llen(queue.QUEUE_NAME) == 2, "the 409 came before the replica had it"
        replica_client.close()
    finally:
        replica.resume()
        receiver.stop()
        other.stop()
        client.close()
        master.stop()
        replica.stop()
