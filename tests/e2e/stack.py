"""The real stack for end-to-end tests, as helpers: receivers and workers as processes of
their own, an isolated stack on a Redis DB of a test's own, and queries on the results."""

from __future__ import annotations

import signal
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, text

from cli.run import receiver_command, worker_command
from common import queue
from common.envelope import Envelope
from common.queue import QUEUE_NAME
from common.settings import load_settings
from tests.helpers import wait_for
from tests.redis_server import free_port

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
    command = receiver_command(
        load_settings(env), "127.0.0.1", port=port, extra=["--timeout-keep-alive", "5"]
    )
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
    command = worker_command(
        load_settings(env),
        concurrency=concurrency,
        name=f"{name}@%h",
        extra=["--without-heartbeat"],
    )
    process = Process(name, command, env, log_dir)

    def ready() -> bool:
        if not process.alive():
            raise AssertionError(f"{name} exited early:\n{process.output()}")
        return " ready." in process.output()

    wait_for(ready, timeout=60, message=f"{name} did not become ready")
    return process


def queue_idle(client: redis.Redis) -> bool:
    """Nothing waiting in the queue and nothing delivered but unacknowledged."""
    return client.llen(QUEUE_NAME) == 0 and client.hlen("unacked") == 0


def delivery_keys(client: redis.Redis) -> set[bytes]:
    """The crm:* keys a delivery could have left. Every worker notes the queue's depth once a
    minute whatever arrives, and the run's first note can land mid-test, so that key is not
    one of them."""
    return set(client.scan_iter("crm:*")) - {queue.DEPTH_HISTORY_KEY.encode()}


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
    queue.enqueue(client, envelope, grace_seconds=300)
    return envelope.event_id
