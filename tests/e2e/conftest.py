"""The real stack for end-to-end tests: a uvicorn receiver and a Celery worker, each its own
process, against the session's fresh database and a Redis DB of the tests' own."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, text

from common.envelope import QUEUE_NAME, Envelope
from common.queue import TaskMessageBuilder, enqueue
from common.settings import Settings
from common.tokens import issue_token
from tests.helpers import wait_for
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


class Process:
    """A child process whose output goes to a file the test can read and assert on."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def rss_mb(self) -> float:
        """Resident memory of the process and its direct children (a worker's pool), in MB."""
        pid = self.popen.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total_kb = 0
        for each in [str(pid), *children]:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        return round(total_kb / 1024, 1)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def start_receiver(
    env: dict[str, str], log_dir: Path, name: str = "receiver"
) -> tuple[Process, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "ingest.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
        "--timeout-keep-alive", "5",
    ]  # fmt: skip
    process = Process(name, command, env, log_dir)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not process.alive():
            raise AssertionError(f"{name} exited early:\n{process.output()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout=30, message=f"{name} did not become healthy")
    return process, url


def start_worker(
    env: dict[str, str], log_dir: Path, name: str = "worker", concurrency: int = 2
) -> Process:
    command = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", QUEUE_NAME,
        "--concurrency", str(concurrency), "--loglevel", "INFO", "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    process = Process(name, command, env, log_dir)

    def ready() -> bool:
        if not process.alive():
            raise AssertionError(f"{name} exited early:\n{process.output()}")
        return " ready." in process.output()

    wait_for(ready, timeout=60, message=f"{name} did not become ready")
    return process


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


def queue_idle(client: redis.Redis) -> bool:
    """Nothing waiting in the queue and nothing delivered but unacknowledged."""
    return client.llen(QUEUE_NAME) == 0 and client.hlen("unacked") == 0


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
                "TRUNCATE activities, deals, contacts, companies, webhook_events, dead_letters"
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


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def event_status(engine: Engine, event_id: str) -> str | None:
    return scalar(engine, "SELECT status FROM webhook_events WHERE id = :id", id=event_id)


def wait_processed(engine: Engine, event_ids: list[str], timeout: float = 60) -> None:
    def done() -> bool:
        count = scalar(
            engine,
            "SELECT count(*) FROM webhook_events WHERE id = ANY(CAST(:ids AS uuid[]))"
            " AND status IN ('processed', 'ignored', 'dead')",
            ids=event_ids,
        )
        return bool(count == len(event_ids))

    wait_for(done, timeout=timeout, message=f"{len(event_ids)} events were not all processed")


class IsolatedStack:
    """Workers and receivers of a test's own, on a Redis DB of their own (the session's stack
    never sees their messages), with settings the test chooses."""

    def __init__(self, env: dict[str, str], log_dir: Path, redis_url: str) -> None:
        self.env = env | {"REDIS_URL": redis_url}
        self.client = redis.Redis.from_url(redis_url)
        self.client.flushdb()
        self._log_dir = log_dir
        self._processes: list[Process] = []

    def worker(self, concurrency: int = 1, **overrides: str) -> Process:
        name = f"worker-{uuid.uuid4().hex[:6]}"
        process = start_worker(self.env | overrides, self._log_dir, name, concurrency)
        self._processes.append(process)
        return process

    def receiver(self, **overrides: str) -> tuple[Process, str]:
        name = f"receiver-{uuid.uuid4().hex[:6]}"
        process, url = start_receiver(self.env | overrides, self._log_dir, name)
        self._processes.append(process)
        return process, url

    def close(self) -> None:
        for process in self._processes:
            process.stop()
        self.client.flushdb()
        self.client.close()


@pytest.fixture
def isolated(
    stack_env: dict[str, str], log_dir: Path, stack: str, redis_server: RedisServer
) -> Iterator[IsolatedStack]:
    isolated_stack = IsolatedStack(stack_env, log_dir, redis_server.db_url(1))
    yield isolated_stack
    isolated_stack.close()


def reply_envelope(body: dict[str, Any], key_prefix: str = "test") -> Envelope:
    """The envelope the receiver would have built for an Instantly body, with a fresh key."""
    return Envelope(
        event_id=str(uuid.uuid4()),
        provider="instantly",
        event_type=str(body["event_type"]),
        idempotency_key=f"{key_prefix}:{uuid.uuid4()}",
        received_at=datetime.now(UTC).isoformat(),
        payload=body,
    )


def queue_reply(client: redis.Redis, body: dict[str, Any]) -> str:
    envelope = reply_envelope(body)
    enqueue(client, TaskMessageBuilder(), envelope, grace=300)
    return envelope.event_id
