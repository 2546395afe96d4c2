"""Processes and scratch state for the benchmark: a scratch database and Redis DB it drops
afterwards, the receiver and workers as real processes, their peak memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.naive import NAIVE_QUEUE
from cli.run import receiver_command, worker_command
from common.envelope import Envelope
from common.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "instantly" / "reply_received.json"


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: timed out waiting for {what}")
        time.sleep(interval)


class Child:
    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def peak_rss_mb(self) -> list[float]:
        """VmHWM of the process and of each direct child (a prefork worker's pool)."""
        pids = [self.popen.pid]
        children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        peaks = []
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(round(int(line.split()[1]) / 1024, 1))
        return peaks

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def start_receiver(env: dict[str, str], port: int, log_dir: Path, name: str = "receiver") -> Child:
    command = receiver_command(
        load_settings(env), "127.0.0.1", port=port, app="bench.app:create_bench_app"
    )
    child = Child(name, command, env, log_dir)

    def healthy() -> bool:
        if not child.alive():
            raise RuntimeError(f"bench: receiver exited; see {child.log_path}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, 30, "the receiver")
    return child


def start_redis(name: str, port: int, log_dir: Path, *options: str) -> Child:
    """A redis-server of the bench's own on loopback, without persistence, answering."""
    directory = log_dir / name
    directory.mkdir(exist_ok=True)
    command = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--save", "", "--appendonly", "no", *options,
    ]  # fmt: skip
    child = Child(name, command, os.environ.copy(), log_dir)

    def answers() -> bool:
        if not child.alive():
            raise RuntimeError(f"bench: {name} exited; see {child.log_path}")
        done = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() == "PONG"

    wait_until(answers, 30, name, interval=0.1)
    return child


def start_worker(env: dict[str, str], concurrency: int, log_dir: Path) -> Child:
    command = worker_command(
        load_settings(env),
        concurrency=concurrency,
        name=f"bench{concurrency}@%h",
        extra=["--without-heartbeat"],
    )
    return Child(f"worker-c{concurrency}", command, env, log_dir)


def start_naive_worker(env: dict[str, str], concurrency: int, log_dir: Path) -> Child:
    """The peer's worker (bench.naive): a stock Celery worker, default settings."""
    command = [
        sys.executable, "-m", "celery", "-A", "bench.naive", "worker", "-Q", NAIVE_QUEUE,
        "--concurrency", str(concurrency), "--loglevel", "WARNING", "-n", f"naive{concurrency}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    return Child(f"naive-c{concurrency}", command, env, log_dir)


def sample_payload(index: int, tag: str) -> dict[str, Any]:
    """A realistic reply from a lead of its own, at a company of its own."""
    payload: dict[str, Any] = json.loads(FIXTURE.read_text())
    email = f"lead{index}.{tag}@co{index}-{tag}.example.com"
    payload.update(
        lead_email=email,
        email=email,
        email_id=f"{tag}-{index}",
        companyName=f"Company {index} {tag}",
        website=None,
    )
    payload.pop("website")
    return payload


def envelope_for(payload: dict[str, Any], key: str) -> Envelope:
    return Envelope(
        event_id=str(uuid.uuid4()),
        provider="instantly",
        event_type=str(payload["event_type"]),
        idempotency_key=key,
        received_at=datetime.now(UTC).isoformat(),
        payload=payload,
    )


def bench_env(database: str, redis_db: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "REDIS_", "CELERY_"))}
    env.update(
        APP_ENV="development",
        LOG_LEVEL="warning",
        PG_DATABASE=database,
        REDIS_URL=f"redis://127.0.0.1:6379/{redis_db}",
        HMAC_SHARED_SECRET_INSTANTLY="bench-instantly-secret",  # noqa: S106 - scratch stack
    )
    return env
