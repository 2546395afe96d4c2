"""The test stack: a fresh PostgreSQL database per session, built by the real `crm-db bootstrap`
and Alembic migrations, with engines for each role and a truncating `clean_db`.

Fixtures other test modules rely on:
  stack_env         the environment a receiver or worker subprocess of this session runs with
  settings          Settings loaded from stack_env
  superuser_engine  postgres superuser, connected to the session's database
  app_engine        as app_user (the runtime role)
  readonly_engine   as readonly
  clean_db          empties every CRM table except pipelines and stages before the test
  scratch_database  factory: another fresh, bootstrapped but unmigrated database, dropped after
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, pool, text
from sqlalchemy.engine import make_url

from common.settings import Settings, load_settings
from db.cli import READONLY_ROLE, bootstrap, migrate, superuser_url
from db.engine import make_engine
from tests.redis_server import RedisServer

# Whatever configures the app or libpq (PGHOST, PGPASSWORD, ...) on the developer's machine
# must not reach the tests: they run against the documented local defaults only.
_STRIPPED_PREFIXES = ("PG", "REDIS_", "CELERY_", "HMAC_", "TASK_", "BROKER_")
_STRIPPED_NAMES = frozenset(
    {
        "APP_ENV",
        "LOG_LEVEL",
        "JWT_SECRET",
        "DEV_SIGNATURE_BYPASS",
        "IDEMPOTENCY_TTL_SECONDS",
        "MAX_BODY_BYTES",
        "INGEST_PORT",
        "WORKER_CONCURRENCY",
        "WORKER_BATCH_SIZE",
        "BODY_TIMEOUT_SECONDS",
        "REDIS_MEMORY_HIGH_WATERMARK",
        "MAX_QUEUE_DEPTH",
        "TEST_FAULT_INJECTION",
        "TEST_POISON_LEAD",
        "WORKER_METRICS_PORT",
        "PROMETHEUS_MULTIPROC_DIR",
    }
)

TEST_SETTINGS = {
    "APP_ENV": "test",
    "LOG_LEVEL": "info",
    "JWT_SECRET": "test-jwt-secret-0123456789abcdef",
    "HMAC_SHARED_SECRET_INSTANTLY": "test-instantly-secret-A,test-instantly-secret-B",
    "HMAC_SHARED_SECRET_CALCOM": "test-calcom-secret",
    "WEBHOOK_SECRET_SMARTLEAD": "test-smartlead-secret-A,test-smartlead-secret-B",
    "WEBHOOK_SECRET_CALENDLY": "test-calendly-signing-key",
}

CRM_TABLES = (
    "activities",
    "deals",
    "contacts",
    "companies",
    "owners",
    "webhook_events",
    "dead_letters",
)


def _quiet(_line: str) -> None:
    """bootstrap() reports each role and database; the tests do not need to see that."""


def _test_env(database: str, **overrides: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_STRIPPED_PREFIXES) and name not in _STRIPPED_NAMES
    }
    env.update(TEST_SETTINGS, PG_DATABASE=database)
    env.update(overrides)
    return env


def _fresh_name() -> str:
    return f"crm_test_{secrets.token_hex(6)}"


def _drop_database(settings: Settings) -> None:
    engine = create_engine(
        superuser_url(settings), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool
    )
    try:
        with engine.connect() as conn:
            name = conn.dialect.identifier_preparer.quote(settings.pg_database)
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), "--appendonly", "no")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack_env(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    # One metrics directory for the session's receiver and workers, as crm-run arranges.
    metrics_dir = str(tmp_path_factory.mktemp("metrics"))
    env = _test_env(_fresh_name(), REDIS_URL=redis_server.url, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    settings = load_settings(env)
    try:
        bootstrap(settings, echo=_quiet, create_database=True)
        migrate(settings)
        yield env
    finally:
        _drop_database(settings)


@pytest.fixture(scope="session")
def settings(stack_env: dict[str, str]) -> Settings:
    return load_settings(stack_env)


@pytest.fixture(scope="session")
def superuser_engine(settings: Settings) -> Iterator[Engine]:
    # pre-ping: the reliability suite restarts PostgreSQL under this pool.
    engine = create_engine(
        superuser_url(settings, database=settings.pg_database), pool_pre_ping=True
    )
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def app_engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.pg_url(), application_name="crm-tests")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def readonly_engine(settings: Settings) -> Iterator[Engine]:
    url = make_url(settings.pg_url()).set(
        username=READONLY_ROLE, password=settings.pg_readonly_password.get()
    )
    engine = make_engine(url.render_as_string(hide_password=False), pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def clean_db(superuser_engine: Engine) -> None:
    with superuser_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(CRM_TABLES)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def scratch_database(stack_env: dict[str, str]) -> Iterator[Callable[..., Settings]]:
    """Make another fresh database (roles and schema owner as `crm-db bootstrap` leaves them,
    no migration run yet); keyword arguments override environment variables. Each one is
    dropped after the test."""
    made: list[Settings] = []

    def make(**overrides: str) -> Settings:
        settings = load_settings(_test_env(_fresh_name(), **overrides))
        made.append(settings)
        bootstrap(settings, echo=_quiet, create_database=True)
        return settings

    try:
        yield make
    finally:
        for settings in made:
            _drop_database(settings)
