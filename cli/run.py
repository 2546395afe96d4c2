"""`crm-run`: what `make run` does after installing. Checks PostgreSQL and Redis, bootstraps
and migrates the database, then runs the receiver and a worker until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType
from urllib.parse import urlsplit

import redis

from common.queue import QUEUE_NAME
from common.settings import Settings, SettingsError, load_settings
from db import cli as db_cli

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_SECONDS = 20


def _die_with_parent() -> None:
    # Children get SIGTERM if crm-run itself is killed, so nothing is left orphaned.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def receiver_command(
    settings: Settings,
    host: str,
    *,
    port: int | None = None,
    app: str = "ingest.app:create_app",
    extra: Sequence[str] = (),
) -> list[str]:
    """How the receiver is started: here, by the tests and by the benchmark alike."""
    return [
        sys.executable, "-m", "uvicorn", app, "--factory",
        "--host", host, "--port", str(port or settings.ingest_port),
        "--log-level", settings.log_level, "--no-access-log", *extra,
    ]  # fmt: skip


def worker_command(
    settings: Settings,
    *,
    concurrency: int | None = None,
    name: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """How a worker is started: here, by the tests and by the benchmark alike."""
    command = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", QUEUE_NAME,
        "--concurrency", str(concurrency or settings.worker_concurrency),
        "--loglevel", settings.log_level.upper(), "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if name is not None:
        command += ["-n", name]
    return [*command, *extra]


def check_redis(settings: Settings) -> str | None:
    """None when Redis answers; otherwise the one line that tells the operator what to do."""
    for url in dict.fromkeys((settings.redis_url, settings.celery_broker_url)):
        parts = urlsplit(url)
        try:
            redis.Redis.from_url(url, socket_connect_timeout=3).ping()
        except redis.RedisError:
            return (
                f"Redis is not answering at {parts.hostname}:{parts.port or 6379} "
                "(REDIS_URL / CELERY_BROKER_URL). Start it with `redis-server --daemonize yes` "
                "or `docker compose up -d postgres redis`."
            )
    return None


def _supervise(processes: dict[str, subprocess.Popen[bytes]]) -> int:
    stopping = False

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(
                    f"crm-run: {name} exited with {process.returncode}; stopping", file=sys.stderr
                )
                exit_code = 1
                stopping = True
        time.sleep(0.2)
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-run",
        description="Bootstrap and migrate the database, then run the receiver and a worker "
        "until Ctrl-C or SIGTERM. Settings come from the environment (see .env.example).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="receiver bind address")
    parser.add_argument(
        "--skip-migrate", action="store_true", help="do not bootstrap or migrate first"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"crm-run: {exc}", file=sys.stderr)
        return 2
    problem = check_redis(settings)
    if problem:
        print(f"crm-run: {problem}", file=sys.stderr)
        return 1
    if not args.skip_migrate:
        for step in (["bootstrap"], ["migrate"]):
            code = db_cli.main(step)
            if code != 0:
                return code
    # One metrics directory for both: the receiver's /metrics then includes the worker pool's.
    metrics_dir = tempfile.mkdtemp(prefix="crm-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    processes = {
        "receiver": subprocess.Popen(
            receiver_command(settings, args.host), env=env, preexec_fn=_die_with_parent
        ),
        "worker": subprocess.Popen(worker_command(settings), env=env, preexec_fn=_die_with_parent),
    }
    print(
        f"crm-run: receiver on http://{args.host}:{settings.ingest_port}, "
        f"worker concurrency {settings.worker_concurrency}; Ctrl-C stops both",
        file=sys.stderr,
    )
    try:
        return _supervise(processes)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
