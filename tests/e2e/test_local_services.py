"""`make run` on a machine with nothing running: crm-run's private PostgreSQL and Redis
(LOCAL_SERVICES=always here, so the machine's own servers need not be stopped)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from tests.e2e.stack import ROOT
from tests.helpers import wait_for
from tests.payloads import encode, reply, signed_headers
from tests.redis_server import free_port

pytestmark = pytest.mark.e2e

CRM_RUN = str(Path(sys.executable).with_name("crm-run"))
_ADDRESSES = ("PG_HOST", "PG_PORT", "PG_SUPERUSER_URL", "REDIS_URL", "CELERY_BROKER_URL")


@pytest.fixture
def private_dir() -> Iterator[Path]:
    # Outside pytest's own (private to root) temporary tree: as root, the private PostgreSQL
    # runs as an unprivileged account, which must reach its data directory.
    made = Path(tempfile.mkdtemp(prefix="crm-local-"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture
def laptop_env(stack_env: dict[str, str], private_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in stack_env.items() if name not in _ADDRESSES}
    return env | {
        "APP_ENV": "development",
        "LOCAL_SERVICES": "always",
        "LOCAL_SERVICES_DIR": str(private_dir / "run"),
        "INGEST_PORT": str(free_port()),
        "WORKER_CONCURRENCY": "1",
    }


def _processes_using(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


class Run:
    """crm-run started as `make run` starts it; stopped with Ctrl-C (SIGINT)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.url = f"http://127.0.0.1:{env['INGEST_PORT']}"
        self._out = log.open("wb")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            [CRM_RUN], env=env, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> float:
        def ready() -> bool:
            assert self.popen.poll() is None, self.output()
            try:
                healthy = httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
            return healthy and " ready." in self.output()

        wait_for(ready, timeout=120, interval=0.1, message="crm-run did not come up")
        return time.monotonic() - self.started

    def postgres_port(self) -> int:
        found = re.search(r"PostgreSQL private at 127\.0\.0\.1:(\d+), data in (\S+)", self.output())
        assert found, self.output()
        return int(found.group(1))

    def interrupt(self) -> int:
        self.popen.send_signal(signal.SIGINT)
        code = self.popen.wait(timeout=60)
        self._out.close()
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._out.close()


def _contacts(port: int, database: str, email: str) -> int:
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname=database)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM contacts WHERE email = %s", (email,))
            row = cursor.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


def test_crm_run_starts_private_servers_keeps_their_data_and_leaves_nothing_behind(
    laptop_env: dict[str, str], private_dir: Path
) -> None:
    database, email = laptop_env["PG_DATABASE"], "laptop.lead@example.org"
    cold = Run(laptop_env, private_dir / "cold.log")
    try:
        cold_seconds = cold.wait_ready()
        output = cold.output()
        assert f"data in {private_dir / 'run' / 'postgres'} (make reset to start over)" in output
        assert re.search(r"Redis private at 127\.0\.0\.1:\d+, data in .*/run/redis", output)
        port = cold.postgres_port()
        raw = encode(reply(email))
        response = httpx.post(
            f"{cold.url}/webhooks/instantly", content=raw, headers=signed_headers(raw)
        )
        assert response.status_code == 202, response.text
        wait_for(
            lambda: _contacts(port, database, email) == 1,
            timeout=60,
            message="the reply was not processed",
        )
        assert cold.interrupt() == 0, cold.output()
    finally:
        cold.kill()
    assert "stopped the private PostgreSQL and Redis" in cold.output()
    assert _processes_using(private_dir) == []

    warm = Run(laptop_env, private_dir / "warm.log")
    try:
        warm_seconds = warm.wait_ready()
        assert _contacts(warm.postgres_port(), database, email) == 1, "the data did not last"
        assert f"database {database}: kept (already exists)" in warm.output()
        assert warm.interrupt() == 0, warm.output()
    finally:
        warm.kill()
    assert _processes_using(private_dir) == []
    print(f"\nprivate services: cold start {cold_seconds:.1f} s, warm start {warm_seconds:.1f} s")


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("PG_PORT", "PostgreSQL"),
        ("REDIS_URL", "Redis is not answering at 127.0.0.1:"),
    ],
)
def test_a_configured_address_where_nothing_answers_is_refused_not_replaced(
    laptop_env: dict[str, str],
    stack_env: dict[str, str],
    private_dir: Path,
    setting: str,
    said: str,
) -> None:
    nowhere = free_port()
    value = str(nowhere) if setting == "PG_PORT" else f"redis://127.0.0.1:{nowhere}/0"
    # Both configured (localhost is not the default address): nothing may be started for the
    # other either, whatever answers on this machine.
    others = {"PG_HOST": "localhost", "REDIS_URL": stack_env["REDIS_URL"]}
    env = laptop_env | others | {"LOCAL_SERVICES": "auto", setting: value}
    done = subprocess.run(
        [CRM_RUN], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0, done.stderr
    assert said in done.stderr, done.stderr
    assert str(nowhere) in done.stderr, done.stderr
    assert "private" not in done.stderr, done.stderr
    assert _processes_using(private_dir) == []
