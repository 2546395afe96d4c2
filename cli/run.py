"""`crm-run`: what `make run` does after installing. Checks PostgreSQL and Redis, bootstraps
and migrates the database, then runs the receiver and a worker until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import redis

from cli import local_services, ports
from common.queue import QUEUE_NAME
from common.redis_clients import connect
from common.senders import SENDERS
from common.settings import Settings, SettingsError, load_settings
from db import cli as db_cli

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_SECONDS = 20
# A process that exits sooner than this after its first start failed to start.
_STARTUP_SECONDS = 15.0
_RESTART_PAUSES = (1, 2, 4, 8, 16, 30)


def _die_with_parent() -> None:
    # Children get SIGTERM if crm-run itself is killed, so nothing is left orphaned.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def receiver_command(
    settings: Settings,
    host: str,
    *,
    port: int | None = None,
    app: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """How the receiver is started (`crm-ingest`): here, by the tests and by the benchmark."""
    command = [
        sys.executable, "-m", "ingest.serve",
        "--host", host, "--port", str(port or settings.ingest_port),
    ]  # fmt: skip
    if app is not None:
        command += ["--app", app]
    return [*command, *extra]


def worker_command(
    settings: Settings,
    *,
    concurrency: int | None = None,
    name: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """How a worker is started: here, by the tests and by the benchmark alike."""
    # --quiet: no banner; what it says is in the first log lines, in the log format.
    command = [
        sys.executable, "-m", "celery", "-A", "worker.app", "--quiet", "worker", "-Q", QUEUE_NAME,
        "--concurrency", str(concurrency or settings.worker_concurrency),
        "--loglevel", settings.log_level.upper(), "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if name is not None:
        command += ["-n", name]
    return [*command, *extra]


def check_redis(settings: Settings) -> str | None:
    """None when Redis answers; otherwise the one line that tells the operator what to do."""
    for name, target in {"REDIS_URL": settings.redis, "CELERY_BROKER_URL": settings.broker}.items():
        where = target.describe()
        try:
            connect(target, timeout=5, connect_timeout=3).ping()
        except redis.AuthenticationError as exc:  # a ConnectionError to redis-py, yet an answer
            return f"Redis at {where} ({name}) answered: {exc}"
        except (redis.ConnectionError, redis.TimeoutError):
            return (
                f"Redis is not answering at {where} ({name}). Start it with "
                "`redis-server --daemonize yes` or `docker compose up -d postgres redis`."
            )
        except redis.RedisError as exc:
            # It runs and said no (a database index out of range, a wrong password): its words.
            return f"Redis at {where} ({name}) answered: {exc}"
    return None


@dataclass
class _Child:
    """One supervised process: how to start it, and how its runs went."""

    name: str
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ever_up: bool = False  # it once outlived the start-up window
    crashes: int = 0
    restart_at: float | None = None

    def start(self) -> None:
        # A group of its own: a terminal's Ctrl-C reaches crm-run alone, which then stops each
        # child once (else each would get the SIGINT and then crm-run's SIGTERM as well).
        self.process = subprocess.Popen(
            self.command, env=self.env, preexec_fn=_die_with_parent, process_group=0
        )
        self.started = time.monotonic()
        self.restart_at = None


def _watch(child: _Child, now: float) -> str | None:
    """Restart an exited child after a backoff; a reason to stop everything, if there is one."""
    assert child.process is not None
    if child.restart_at is not None:
        if now >= child.restart_at:
            child.start()
        return None
    code = child.process.poll()
    uptime = now - child.started
    if code is None:
        if uptime > _STARTUP_SECONDS:
            child.ever_up, child.crashes = True, 0
        return None
    # Killed by a signal (negative code), it did not fail by itself: that is no start-up error.
    if not child.ever_up and uptime <= _STARTUP_SECONDS and code > 0:
        return f"{child.name} failed to start (exit code {code}); stopping"
    pause = _RESTART_PAUSES[min(child.crashes, len(_RESTART_PAUSES) - 1)]
    child.crashes += 1
    child.restart_at = now + pause
    print(
        f"crm-run: {child.name} exited with code {code} after {uptime:.0f} s; "
        f"restarting it in {pause} s (the other keeps running)",
        file=sys.stderr,
    )
    return None


def _supervise(children: list[_Child]) -> int:
    """Run the children until Ctrl-C or SIGTERM. One that exits after start-up is restarted
    with backoff while the others keep serving; one that fails at start-up (a port taken, bad
    settings) stops everything."""
    stopping = False

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    for child in children:
        child.start()
    exit_code = 0
    while not stopping:
        for child in children:
            problem = _watch(child, time.monotonic())
            if problem is not None:
                print(f"crm-run: {problem}", file=sys.stderr)
                exit_code, stopping = 1, True
        time.sleep(0.2)
    running = [c.process for c in children if c.process and c.process.poll() is None]
    print(f"crm-run: stopping {' and '.join(c.name for c in children)}", file=sys.stderr)
    for process in running:
        process.terminate()
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return exit_code


def welcome(settings: Settings, host: str, concurrency: int) -> str:
    """What a developer needs once, at start: where to point senders, and with what. A secret
    is shown only outside production, where the development defaults are no secret anyway."""
    base = f"http://{host}:{settings.ingest_port}"
    lines = [f"crm-run: receiver on {base}, worker concurrency {concurrency}; Ctrl-C stops both"]
    labels = {name: f"{sender.title} webhook:" for name, sender in SENDERS.items()}
    width = max(len(label) for label in labels.values())
    for name, label in labels.items():
        lines.append(f"  {label:<{width}} {base}/webhooks/{name}")
    if settings.is_production:
        names = ", ".join(sender.secret_setting for sender in SENDERS.values())
        lines.append(f"  secrets: {names} (not shown)")
    else:
        for sender in SENDERS.values():
            shown = ",".join(secret.get() for secret in settings.webhook_secrets(sender.name))
            lines.append(f"  {settings.app_env} secret {sender.secret_setting}={shown}")
    lines.append("  a token for /events and /admin: .venv/bin/crm-token --sub $USER --role admin")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-run",
        description="Bootstrap and migrate the database, then run the receiver and a worker "
        "until Ctrl-C or SIGTERM. In development, a PostgreSQL or Redis that is neither "
        "configured nor answering at its default address is started privately under "
        "LOCAL_SERVICES_DIR (.run/) first (LOCAL_SERVICES=auto|always|never). Settings come "
        "from the environment (see .env.example).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="receiver bind address")
    parser.add_argument(
        "--skip-migrate", action="store_true", help="do not bootstrap or migrate first"
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes for this run (default WORKER_CONCURRENCY, 2)",
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"crm-run: {exc}", file=sys.stderr)
        return 2
    if ports.in_use(args.host, settings.ingest_port):
        by = ports.holder(settings.ingest_port)
        print(
            f"crm-run: port {settings.ingest_port} on {args.host} is in use"
            f"{f' by {by}' if by else ''}: is crm-run already running? (or set INGEST_PORT)",
            file=sys.stderr,
        )
        return 1
    privates: list[local_services.Private] = []
    try:
        settings = _with_private_services(settings, privates)
        # A private server is ours: any database name may be created in it.
        ours = any(private.name == "PostgreSQL" for private in privates)
        return _run(settings, args, create_database=ours)
    except local_services.LocalServiceError as exc:
        print(f"crm-run: {exc}", file=sys.stderr)
        return 1
    finally:
        local_services.stop_all(privates)


def _answers_at_default(name: str) -> bool:
    port = 5432 if name == "postgresql" else 6379
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _with_private_services(settings: Settings, privates: list[local_services.Private]) -> Settings:
    """Start what LOCAL_SERVICES asks for, point this process and its children at it, and say
    where each server is: the settings to run with."""
    wanted = local_services.wanted(settings, _answers_at_default)
    base = local_services.directory(settings)
    starters = {"postgresql": local_services.start_postgres, "redis": local_services.start_redis}
    for name in wanted:
        private = starters[name](base, _die_with_parent)
        privates.append(private)
        os.environ.update(private.env)
        print(f"crm-run: {local_services.describe(private, base)}", file=sys.stderr)
    settings = load_settings()
    if "postgresql" not in wanted:
        print(
            f"crm-run: PostgreSQL at {settings.pg_host}:{settings.pg_port} (yours)", file=sys.stderr
        )
    if "redis" not in wanted:
        print(f"crm-run: Redis at {settings.redis.describe()} (yours)", file=sys.stderr)
    return settings


def _run(settings: Settings, args: argparse.Namespace, *, create_database: bool) -> int:
    problem = check_redis(settings)
    if problem:
        print(f"crm-run: {problem}", file=sys.stderr)
        return 1
    if not args.skip_migrate:
        bootstrap = ["bootstrap", "--create-database"] if create_database else ["bootstrap"]
        for step in (bootstrap, ["migrate"]):
            code = db_cli.main(step)
            if code != 0:
                return code
    concurrency = args.workers or settings.worker_concurrency
    # One metrics directory for both: the receiver's /metrics then includes the worker pool's.
    metrics_dir = tempfile.mkdtemp(prefix="crm-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    children = [
        _Child("receiver", receiver_command(settings, args.host), env),
        _Child("worker", worker_command(settings, concurrency=concurrency), env),
    ]
    print(welcome(settings, args.host, concurrency), file=sys.stderr)
    try:
        return _supervise(children)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
