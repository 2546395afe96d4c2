"""docker-compose.yml, checked the way `docker compose up` reads it: rendered by Debian's
docker-compose (`make tools` installs it) with `config`, which needs no Docker engine. The
environment of each run is built here, so neither the developer's shell nor a local .env can
make a test pass or fail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.run import receiver_command, worker_command
from common.queue import QUEUE_NAME
from common.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_SERVICES = ("migrate", "ingest", "worker")

REQUIRED_SECRETS = {
    "JWT_SECRET": "compose-test-jwt-0123456789abcdef0123456789",
    "HMAC_SHARED_SECRET_INSTANTLY": "compose-test-instantly-a,compose-test-instantly-b",
    "HMAC_SHARED_SECRET_CALCOM": "compose-test-calcom-0123",
    "PG_PASSWORD": "compose-test-app-user-0123",
    "PG_ADMIN_PASSWORD": "compose-test-app-admin-0123",
    "PG_READONLY_PASSWORD": "compose-test-readonly-0123",
    "POSTGRES_PASSWORD": "compose-test-superuser-0123",
}

# .env.example variables that deliberately do not reach the containers' environment.
NOT_PASSED = {
    "INGEST_PORT": "the host port the receiver is published on; inside it listens on 8000",
    "LOCAL_SERVICES": "make run's private servers, for development; compose runs its own",
    "LOCAL_SERVICES_DIR": "where make run keeps its private servers' data",
    "TEST_FAULT_INJECTION": "crash points for the test suite only; never in a deployment",
    "TEST_POISON_LEAD": "a worker crash point for the test suite only; never in a deployment",
    "POSTGRES_PASSWORD": "the superuser's: the postgres service and migrate's PG_SUPERUSER_URL",
}


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail("docker-compose is not installed; `make tools` installs it (apt-get)")
    return path


def compose_config(
    tmp_path: Path, *, environ: dict[str, str], dotenv: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with exactly `environ` as the shell and `dotenv` (or nothing)
    as the .env file."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in (dotenv or {}).items()))
    shell = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **environ}
    return subprocess.run(
        [_docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        env=shell,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rendered(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    result = compose_config(tmp_path, **kwargs)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The rendered services, secrets from the shell's environment and no .env file."""
    tmp_path = tmp_path_factory.mktemp("compose")
    config: dict[str, Any] = rendered(tmp_path, environ=REQUIRED_SECRETS)["services"]
    return config


def option(command: list[str], name: str) -> str:
    """The value after `name` in a command line."""
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def flags(command: list[str]) -> set[str]:
    return {token for token in command if token.startswith("-")}


def program(command: list[str]) -> list[str]:
    """A cli/run.py command without the interpreter and `-m`: what a container runs."""
    assert command[:2] == [sys.executable, "-m"], command
    return command[2:]


def test_the_stack_has_its_services_and_secrets_come_from_the_environment(
    services: dict[str, Any],
) -> None:
    assert {"postgres", "redis", "migrate", "ingest", "worker"} <= set(services)
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert environment["APP_ENV"] == "production"
        assert environment["JWT_SECRET"] == REQUIRED_SECRETS["JWT_SECRET"]
        assert environment["PG_HOST"] == "postgres"
        assert environment["REDIS_URL"] == environment["CELERY_BROKER_URL"]
        assert environment["REDIS_URL"].startswith("redis://redis:")
    superuser_password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert superuser_password == REQUIRED_SECRETS["POSTGRES_PASSWORD"]


def test_secrets_from_a_dotenv_file_render_the_same(
    tmp_path: Path, services: dict[str, Any]
) -> None:
    from_file = rendered(tmp_path, environ={}, dotenv=REQUIRED_SECRETS)["services"]
    assert from_file == services


@pytest.mark.parametrize("missing", sorted(REQUIRED_SECRETS))
def test_a_missing_secret_stops_compose_and_is_named(tmp_path: Path, missing: str) -> None:
    environ = {name: value for name, value in REQUIRED_SECRETS.items() if name != missing}
    result = compose_config(tmp_path, environ=environ)
    assert result.returncode != 0
    assert f"{missing} must be set" in result.stderr


def test_an_empty_secret_counts_as_missing(tmp_path: Path) -> None:
    result = compose_config(tmp_path, environ={**REQUIRED_SECRETS, "JWT_SECRET": ""})
    assert result.returncode != 0
    assert "JWT_SECRET must be set" in result.stderr


def test_redis_persists_every_accepted_event_and_never_evicts(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--appendfsync") == "always"
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert any(volume.endswith(":/data:rw") for volume in services["redis"]["volumes"])


def test_workers_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["healthcheck"]["test"] == ["CMD", "crm-worker-health"]


def test_ingest_and_worker_run_what_make_run_runs(services: dict[str, Any]) -> None:
    settings = load_settings({})
    ingest_command = services["ingest"]["command"]
    receiver = program(receiver_command(settings, option(ingest_command, "--host")))
    worker = program(worker_command(settings))

    # crm-ingest is the console script of the module crm-run starts.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["crm-ingest"] == "ingest.serve:main"
    assert ingest_command[0] == "crm-ingest" and receiver[0] == "ingest.serve"
    assert flags(receiver) <= flags(ingest_command)
    assert option(ingest_command, "--port") == "8000"

    worker_command_line = services["worker"]["command"]
    assert worker_command_line[:7] == worker[:7] == [
        "celery", "-A", "worker.app", "--quiet", "worker", "-Q", QUEUE_NAME,
    ]  # fmt: skip
    assert flags(worker) <= flags(worker_command_line)


def test_migrations_run_before_the_app_and_never_through_the_pool(
    services: dict[str, Any],
) -> None:
    migrate = services["migrate"]
    script = migrate["command"][-1]
    assert script.index("crm-db bootstrap") < script.index("crm-db migrate")
    assert migrate["environment"]["PG_HOST"] == "postgres"
    superuser = migrate["environment"]["PG_SUPERUSER_URL"]
    assert superuser.endswith("@postgres:5432/postgres")
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("ingest", "worker"):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully"
        assert depends_on["redis"]["condition"] == "service_healthy"
        # Only the one-shot knows the superuser.
        assert "PG_SUPERUSER_URL" not in services[name]["environment"]


def test_the_receiver_is_published_and_checked_on_readyz(services: dict[str, Any]) -> None:
    ingest = services["ingest"]
    targets = [str(port).rsplit(":", 1)[-1].split("/")[0] for port in ingest["ports"]]
    assert targets == ["8000"]
    assert "/readyz" in " ".join(ingest["healthcheck"]["test"])


def test_every_setting_in_env_example_reaches_the_app_containers(
    services: dict[str, Any],
) -> None:
    example = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    passed = set().union(*(services[name]["environment"] for name in APP_SERVICES))
    missing = sorted(names - passed - set(NOT_PASSED))
    assert not missing, f"add these to docker-compose.yml's x-app-env: {missing}"
    assert "TEST_FAULT_INJECTION" not in passed
    assert "TEST_POISON_LEAD" not in passed


def test_the_sentinel_profile_has_a_durable_replica_and_three_sentinels_watching_redis(
    services: dict[str, Any],
) -> None:
    replica = services["redis-replica"]["command"]
    assert option(replica, "--replicaof") == "redis"
    assert option(replica, "--appendfsync") == "always"
    assert option(replica, "--maxmemory-policy") == "noeviction"
    sentinels = [services[f"sentinel-{n}"] for n in (1, 2, 3)]
    for sentinel in sentinels:
        assert sentinel["profiles"] == ["sentinel"]
        script = sentinel["command"][-1]
        assert "sentinel monitor crm redis 6379 2" in script  # a quorum of two of three
        assert script.endswith("--sentinel")
