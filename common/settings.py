"""The one place that reads the environment.

Every setting has a development default so `make run` works on a bare machine; production
refuses to start on a missing or placeholder secret, naming the variable but never its value.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

from common.senders import SENDERS
from common.senders.kit import Option

APP_ENVS = ("development", "test", "production")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
FAULT_POINTS = ("exit_before_enqueue", "exit_after_enqueue")
LOCAL_SERVICES = ("auto", "always", "never")

# Values that mean "nobody chose a secret yet". Checked case-insensitively.
_PLACEHOLDERS = frozenset(
    {"", "changeme", "change-me", "change_me", "secret", "password", "placeholder", "todo", "xxx"}
)
_DEV_PREFIX = "dev-"
_MIN_JWT_SECRET_BYTES = 32
# A shared secret anyone could guess by trying: HMAC keys and bearer secrets need length.
_MIN_WEBHOOK_SECRET_CHARS = 16


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis is and how to reach it; common.redis_clients connects to it. With
    Sentinels, `url` gives only the database, the credentials and TLS (rediss://): the
    Sentinels name the master, found again after every failover."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_password: Secret | None = None
    sentinel_tls: bool = False

    def describe(self) -> str:
        """Where it is, for an error message: no credentials."""
        if self.sentinels:
            where = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"the master {self.master!r} of the Sentinels {where}"
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path


class SettingsError(ValueError):
    """A setting is missing or malformed. The message names the variable, never its value."""


class Secret:
    """A string whose repr and str hide the value, so it cannot leak through a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def is_placeholder(self) -> bool:
        value = self._value.strip().lower()
        return value in _PLACEHOLDERS or value.startswith(_DEV_PREFIX) or "change-me" in value


@dataclass(frozen=True)
class Settings:
    app_env: str = "development"
    log_level: str = "info"
    log_format: str = "json"

    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_database: str = "crm"
    pg_user: str = "app_user"
    pg_password: Secret = field(default_factory=lambda: Secret("dev-app-user-change-me"))
    pg_sslmode: str = "prefer"
    pg_admin_user: str = "app_admin"
    pg_admin_password: Secret = field(default_factory=lambda: Secret("dev-app-admin-change-me"))
    pg_readonly_password: Secret = field(default_factory=lambda: Secret("dev-readonly-change-me"))
    # A statement waiting this long for a lock gives up; the worker retries it later.
    pg_lock_timeout_ms: int = 5000
    # Unset: the postgres superuser on PG_HOST:PG_PORT, so bootstrap and the app meet one server.
    pg_superuser_url: Secret = field(
        default_factory=lambda: Secret("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    # Sentinels to ask where the master is (REDIS_SENTINELS and REDIS_SENTINEL_MASTER, and
    # CELERY_BROKER_SENTINELS... for a broker of its own): targets, built by load_settings.
    redis: RedisTarget = RedisTarget("redis://127.0.0.1:6379/0")
    broker: RedisTarget = RedisTarget("redis://127.0.0.1:6379/0")
    # A 202 (or 409) only once this many replicas hold the claim, within the timeout (WAIT).
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 500

    jwt_secret: Secret = field(
        default_factory=lambda: Secret("dev-jwt-secret-change-me-0123456789abcdef")
    )
    dev_signature_bypass: bool = False
    # Per sender (common.senders): the secrets its deliveries may carry, several during a
    # rotation (its module names the setting); its own options, parsed.
    sender_secrets: dict[str, tuple[Secret, ...]] = field(
        default_factory=lambda: {
            name: (Secret(sender.dev_secret),) for name, sender in SENDERS.items()
        },
        hash=False,
    )
    sender_options: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            name: {key: option.parse(option.default) for key, option in sender.options.items()}
            for name, sender in SENDERS.items()
        },
        hash=False,
    )

    idempotency_ttl_seconds: int = 7 * 24 * 3600
    # How a repeat is answered: 409 (the prototype's), or 200 for a sender that counts every
    # non-2xx as a failed delivery and switches the webhook off after a few (some do).
    duplicate_statuses: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(SENDERS, 409), hash=False
    )
    max_body_bytes: int = 1_048_576
    body_timeout_seconds: int = 10
    # The request line and headers: larger gets 431; not complete this long after they began
    # (or after the connection opened), the connection is closed.
    max_header_bytes: int = 16_384
    header_timeout_seconds: int = 10
    # Deliveries get 503 once Redis uses this fraction of its maxmemory (none when maxmemory
    # is 0), or once this many events wait in the queue (0: no limit), so Redis keeps room
    # for the workers' own bookkeeping.
    redis_memory_high_watermark: float = 0.8
    max_queue_depth: int = 0
    ingest_port: int = 8000
    worker_concurrency: int = 2
    # Most events one task commits together: under a backlog a task takes up to this many
    # queued events and applies them in one transaction (one commit for all); 1 turns it off.
    # 100 from bench part 4b: 1.7 x the drain of 20, end-to-end p99 still under 100 ms.
    worker_batch_size: int = 100
    # Opens, clicks and sends become a note each (high volume), not only a stored event.
    engagement_activities: bool = False
    # 0: the worker serves no /metrics of its own (beside the receiver, the receiver does).
    worker_metrics_port: int = 0
    # Must exceed the longest a task can run plus its longest retry countdown, or the broker
    # redelivers a message a live worker still holds (the durable guard keeps that harmless).
    broker_visibility_timeout: int = 3600
    # With the backoff below (1, 2, 4 … 600 s) this rides out about an hour of outage.
    task_max_retries: int = 15
    task_retry_backoff_max: int = 600
    # An event whose process died this often (OOM kill, a crash in a driver) is dead-lettered
    # as `worker_lost` instead of being handed to the next process.
    task_max_worker_lost: int = 3
    # How long a console session lasts after its sign-in link was used.
    console_session_hours: int = 8
    # Test-only crash points in the receiver, and a lead whose event kills the worker process
    # handling it; both refused outside APP_ENV=test.
    test_fault_injection: str = ""
    test_poison_lead: str = ""
    # `make run` in development: a private PostgreSQL and Redis under LOCAL_SERVICES_DIR when
    # none answers at the default addresses (auto), always, or never (cli/local_services.py).
    local_services: str = "auto"
    local_services_dir: str = ".run"
    # Whether the environment says where each is (then never a private one).
    pg_address_configured: bool = False
    redis_address_configured: bool = False

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    def duplicate_status(self, provider: str) -> int:
        return self.duplicate_statuses[provider]

    def webhook_secrets(self, provider: str) -> tuple[Secret, ...]:
        """The secrets a provider's deliveries may be signed with (several during a rotation)."""
        return self.sender_secrets[provider]

    def sender_option(self, provider: str) -> dict[str, Any]:
        return self.sender_options[provider]

    def pg_url(self, *, admin: bool = False, database: str | None = None) -> str:
        user = self.pg_admin_user if admin else self.pg_user
        password = (self.pg_admin_password if admin else self.pg_password).get()
        return _pg_url(
            user=user,
            password=password,
            host=self.pg_host,
            port=self.pg_port,
            database=database or self.pg_database,
            sslmode=self.pg_sslmode,
        )


def _host_in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _pg_url(*, user: str, password: str, host: str, port: int, database: str, sslmode: str) -> str:
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return (
        f"postgresql+psycopg2://{auth}@{host}:{port}/{quote(database, safe='')}?sslmode={sslmode}"
    )


def _int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false")


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number between 0 and 1, e.g. 0.8") from None
    if not 0 < value <= 1:
        raise SettingsError(f"{name} must be above 0 and at most 1, e.g. 0.8")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}")
    return value


DUPLICATE_STATUSES = ("409", "200")


def _duplicate_status(env: Mapping[str, str], name: str) -> int:
    return int(_choice(env, name, DUPLICATE_STATUSES[0], DUPLICATE_STATUSES))


def _option(env: Mapping[str, str], option: Option) -> Any:
    raw = env.get(option.env, "").strip() or option.default
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{option.env}: {exc}") from None


def _secret(env: Mapping[str, str], name: str, default: Secret) -> Secret:
    return Secret(env[name]) if name in env else default


def _psycopg2_url(secret: Secret) -> Secret:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; we ship psycopg2.
    url = secret.get()
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return Secret("postgresql+psycopg2://" + url.removeprefix(scheme))
    return secret


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(env: Mapping[str, str], name: str, default: str) -> str:
    """A Redis URL, checked now: a malformed one would fail later, far from its cause."""
    url = env.get(name, "").strip() or default
    example = f"e.g. {name}=redis://127.0.0.1:6379/0"
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        raise SettingsError(
            f"{name} must start with redis://, rediss:// or unix:// ({example}); "
            f"it has {f'the scheme {parts.scheme!r}' if parts.scheme else 'none'}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise SettingsError(f"{name} needs a socket path, e.g. unix:///run/redis.sock")
        return url
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise SettingsError(f"{name} has a port that is not a number ({example})") from None
    if not parts.hostname:
        raise SettingsError(f"{name} has no host ({example})")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise SettingsError(f"{name}: the database after the last / must be a number ({example})")
    return url


def _sentinels(env: Mapping[str, str], name: str) -> tuple[tuple[str, int], ...]:
    found = []
    for part in (part.strip() for part in env.get(name, "").split(",")):
        if not part:
            continue
        host, _, port = part.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"{name} takes host:port pairs, e.g. {name}=10.0.0.5:26379,…")
        found.append((host, int(port)))
    return tuple(found)


# Per Redis: its URL's variable, then its Sentinels', their master's name, their password, TLS.
_SENTINEL_SETTINGS = {
    "REDIS_URL": (
        "REDIS_SENTINELS",
        "REDIS_SENTINEL_MASTER",
        "REDIS_SENTINEL_PASSWORD",
        "REDIS_SENTINEL_TLS",
    ),
    "CELERY_BROKER_URL": (
        "CELERY_BROKER_SENTINELS",
        "CELERY_BROKER_SENTINEL_MASTER",
        "CELERY_BROKER_SENTINEL_PASSWORD",
        "CELERY_BROKER_SENTINEL_TLS",
    ),
}


def _redis_target(
    env: Mapping[str, str], url_name: str, url: str, default: RedisTarget | None
) -> RedisTarget:
    """The target of REDIS_URL or CELERY_BROKER_URL, with its Sentinels if it has some. A
    broker with no URL and no Sentinels of its own is `default` (REDIS_URL's)."""
    sentinels_name, master_name, password_name, tls_name = _SENTINEL_SETTINGS[url_name]
    sentinels = _sentinels(env, sentinels_name)
    master = env.get(master_name, "").strip()
    if default is not None and not sentinels and not env.get(url_name, "").strip():
        return default
    if sentinels and not master:
        raise SettingsError(f"{sentinels_name} needs {master_name} (the master's name)")
    if master and not sentinels:
        raise SettingsError(f"{master_name} needs {sentinels_name} (host:port,…)")
    if sentinels and urlsplit(url).scheme == "unix":
        raise SettingsError(f"{url_name} must be redis:// or rediss:// with Sentinels")
    password = env.get(password_name, "")
    return RedisTarget(
        url=url,
        sentinels=sentinels,
        master=master,
        sentinel_password=Secret(password) if password else None,
        sentinel_tls=_bool(env, tls_name, False),
    )


def _configured(env: Mapping[str, str], **defaults: str) -> bool:
    """Whether any of these settings is set to something other than its default address."""
    return any(env.get(name, "").strip() not in ("", default) for name, default in defaults.items())


def _secret_list(
    env: Mapping[str, str], name: str, default: tuple[Secret, ...]
) -> tuple[Secret, ...]:
    if name not in env:
        return default
    return tuple(Secret(part.strip()) for part in env[name].split(",") if part.strip())


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment. Raises SettingsError naming the bad variable."""
    env = os.environ if env is None else env
    base = Settings()
    redis_url = _redis_url(env, "REDIS_URL", base.redis_url)
    redis_target = _redis_target(env, "REDIS_URL", redis_url, None)
    broker_url = _redis_url(env, "CELERY_BROKER_URL", redis_url)
    pg_host = env.get("PG_HOST", "").strip() or base.pg_host
    pg_port = _int(env, "PG_PORT", base.pg_port, minimum=1)
    superuser = env.get("PG_SUPERUSER_URL", "").strip()
    app_env = _choice(env, "APP_ENV", base.app_env, APP_ENVS)
    settings = Settings(
        app_env=app_env,
        log_level=_choice(env, "LOG_LEVEL", base.log_level, LOG_LEVELS),
        # Unset: plain lines for a person at a terminal, JSON for a log collector.
        log_format=_choice(
            env, "LOG_FORMAT", "text" if sys.stdout.isatty() else base.log_format, LOG_FORMATS
        ),
        pg_host=pg_host,
        pg_port=pg_port,
        pg_database=env.get("PG_DATABASE", "").strip() or base.pg_database,
        pg_user=env.get("PG_USER", "").strip() or base.pg_user,
        pg_password=_secret(env, "PG_PASSWORD", base.pg_password),
        pg_sslmode=env.get("PG_SSLMODE", "").strip() or base.pg_sslmode,
        pg_admin_user=env.get("PG_ADMIN_USER", "").strip() or base.pg_admin_user,
        pg_admin_password=_secret(env, "PG_ADMIN_PASSWORD", base.pg_admin_password),
        pg_readonly_password=_secret(env, "PG_READONLY_PASSWORD", base.pg_readonly_password),
        pg_lock_timeout_ms=_int(env, "PG_LOCK_TIMEOUT_MS", base.pg_lock_timeout_ms),
        pg_superuser_url=_psycopg2_url(
            Secret(superuser or f"postgresql://postgres@{_host_in_url(pg_host)}:{pg_port}/postgres")
        ),
        redis_url=redis_url,
        celery_broker_url=broker_url,
        redis=redis_target,
        broker=_redis_target(env, "CELERY_BROKER_URL", broker_url, redis_target),
        redis_wait_replicas=_int(env, "REDIS_WAIT_REPLICAS", base.redis_wait_replicas),
        redis_wait_timeout_ms=_int(
            env, "REDIS_WAIT_TIMEOUT_MS", base.redis_wait_timeout_ms, minimum=1, maximum=10_000
        ),
        jwt_secret=_secret(env, "JWT_SECRET", base.jwt_secret),
        dev_signature_bypass=_bool(env, "DEV_SIGNATURE_BYPASS", base.dev_signature_bypass),
        sender_secrets={
            # In production an unset secret is none (not the development one): a sender that
            # production does not require is then off, and its deliveries get 401.
            name: _secret_list(
                env,
                sender.secret_setting,
                () if app_env == "production" else base.sender_secrets[name],
            )
            for name, sender in SENDERS.items()
        },
        sender_options={
            name: {key: _option(env, option) for key, option in sender.options.items()}
            for name, sender in SENDERS.items()
        },
        duplicate_statuses={
            name: _duplicate_status(env, sender.duplicate_status_setting)
            for name, sender in SENDERS.items()
        },
        idempotency_ttl_seconds=_int(
            env, "IDEMPOTENCY_TTL_SECONDS", base.idempotency_ttl_seconds, minimum=1
        ),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", base.max_body_bytes, minimum=1),
        body_timeout_seconds=_int(
            env, "BODY_TIMEOUT_SECONDS", base.body_timeout_seconds, minimum=1
        ),
        max_header_bytes=_int(env, "MAX_HEADER_BYTES", base.max_header_bytes, minimum=1024),
        header_timeout_seconds=_int(
            env, "HEADER_TIMEOUT_SECONDS", base.header_timeout_seconds, minimum=1
        ),
        redis_memory_high_watermark=_fraction(
            env, "REDIS_MEMORY_HIGH_WATERMARK", base.redis_memory_high_watermark
        ),
        max_queue_depth=_int(env, "MAX_QUEUE_DEPTH", base.max_queue_depth),
        ingest_port=_int(env, "INGEST_PORT", base.ingest_port, minimum=1),
        worker_concurrency=_int(env, "WORKER_CONCURRENCY", base.worker_concurrency, minimum=1),
        worker_batch_size=_int(env, "WORKER_BATCH_SIZE", base.worker_batch_size, minimum=1),
        worker_metrics_port=_int(env, "WORKER_METRICS_PORT", base.worker_metrics_port),
        engagement_activities=_bool(env, "ENGAGEMENT_ACTIVITIES", base.engagement_activities),
        broker_visibility_timeout=_int(
            env, "BROKER_VISIBILITY_TIMEOUT", base.broker_visibility_timeout, minimum=1
        ),
        task_max_retries=_int(env, "TASK_MAX_RETRIES", base.task_max_retries),
        task_retry_backoff_max=_int(
            env, "TASK_RETRY_BACKOFF_MAX", base.task_retry_backoff_max, minimum=1
        ),
        task_max_worker_lost=_int(
            env, "TASK_MAX_WORKER_LOST", base.task_max_worker_lost, minimum=1
        ),
        console_session_hours=_int(
            env, "CONSOLE_SESSION_HOURS", base.console_session_hours, minimum=1
        ),
        test_fault_injection=_choice(env, "TEST_FAULT_INJECTION", "", ("", *FAULT_POINTS)),
        test_poison_lead=env.get("TEST_POISON_LEAD", "").strip().lower(),
        local_services=_choice(
            env, "LOCAL_SERVICES", "auto" if app_env == "development" else "never", LOCAL_SERVICES
        ),
        local_services_dir=env.get("LOCAL_SERVICES_DIR", "").strip() or base.local_services_dir,
        # Set to anything but the default address, `make run` never starts a private one.
        pg_address_configured=_configured(
            env, PG_HOST=base.pg_host, PG_PORT=str(base.pg_port), PG_SUPERUSER_URL=""
        ),
        redis_address_configured=_configured(
            env,
            REDIS_URL=base.redis_url,
            CELERY_BROKER_URL=base.celery_broker_url,
            REDIS_SENTINELS="",
        ),
    )
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if settings.test_fault_injection and settings.app_env != "test":
        raise SettingsError("TEST_FAULT_INJECTION is only honoured when APP_ENV=test")
    if settings.test_poison_lead and settings.app_env != "test":
        raise SettingsError("TEST_POISON_LEAD is only honoured when APP_ENV=test")
    if settings.local_services != "never" and settings.app_env != "development":
        raise SettingsError("LOCAL_SERVICES is only honoured when APP_ENV=development")
    if settings.task_retry_backoff_max >= settings.broker_visibility_timeout:
        raise SettingsError("TASK_RETRY_BACKOFF_MAX must be below BROKER_VISIBILITY_TIMEOUT")
    if not settings.is_production:
        return
    # Every problem at once: one start-up tells the operator all there is to fix.
    problems = []
    if settings.dev_signature_bypass:
        problems.append("DEV_SIGNATURE_BYPASS=true is refused when APP_ENV=production")
    single = {
        "JWT_SECRET": settings.jwt_secret,
        "PG_PASSWORD": settings.pg_password,
        "PG_ADMIN_PASSWORD": settings.pg_admin_password,
        "PG_READONLY_PASSWORD": settings.pg_readonly_password,
    }
    for name, secret in single.items():
        if secret.is_placeholder():
            problems.append(f"{name} is missing or a placeholder; set a real secret")
    # RFC 7518 §3.2: an HS256 key shorter than the hash output weakens every token.
    jwt_secret = settings.jwt_secret
    if not jwt_secret.is_placeholder() and len(jwt_secret.get().encode()) < _MIN_JWT_SECRET_BYTES:
        problems.append(f"JWT_SECRET must be at least {_MIN_JWT_SECRET_BYTES} bytes long")
    for sender in SENDERS.values():
        name, secrets = sender.secret_setting, settings.sender_secrets[sender.name]
        if not secrets and not sender.required_in_production:
            continue  # that sender is off
        if not secrets or any(secret.is_placeholder() for secret in secrets):
            problems.append(f"{name} is missing or holds a placeholder; set a real secret")
        elif any(len(secret.get()) < _MIN_WEBHOOK_SECRET_CHARS for secret in secrets):
            problems.append(
                f"{name}: every secret must be at least {_MIN_WEBHOOK_SECRET_CHARS} characters"
            )
    if problems:
        raise SettingsError("; ".join(problems))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
