"""common.settings: defaults that run locally, production that refuses to start unsafe, and
errors that name the variable but never show its value."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import Secret, Settings, SettingsError, load_settings

PRODUCTION = {
    "APP_ENV": "production",
    "JWT_SECRET": "Zq4mW8rT1vX7nB3kL9pS2dF6hJ0gY5cE",
    "PG_PASSWORD": "Vn7Qe2Lr9Tx4Mb8Kc1Wz",
    "PG_ADMIN_PASSWORD": "Hs3Jd8Pf1Ga6Ry0Ut5Io",
    "PG_READONLY_PASSWORD": "Rb4Nc8Vm2Xk6Lq0Wt3Ez",
    "HMAC_SHARED_SECRET_INSTANTLY": "Kf82hsQm1Lz0Xc7Vb4Nw,Mz6Rt2Yw9Qa3Ls7Dp",
    "HMAC_SHARED_SECRET_CALCOM": "Pt5Yr9Ue3Wq7Io1As6Df",
}


def _refused(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    return str(caught.value)


def test_defaults_load_in_development() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.app_env == "development"
    assert not settings.is_production
    assert (settings.pg_database, settings.pg_user, settings.pg_admin_user) == (
        "crm",
        "app_user",
        "app_admin",
    )
    assert settings.max_body_bytes == 1_048_576
    assert settings.ingest_port == 8000
    assert settings.dev_signature_bypass is False
    assert settings.celery_broker_url == settings.redis_url


def test_a_real_production_environment_loads() -> None:
    settings = load_settings(PRODUCTION)
    assert settings.is_production
    assert [secret.get() for secret in settings.webhook_secrets("instantly")] == [
        "Kf82hsQm1Lz0Xc7Vb4Nw",
        "Mz6Rt2Yw9Qa3Ls7Dp",
    ]


def test_broker_url_follows_redis_url_unless_set() -> None:
    assert load_settings({"REDIS_URL": "redis://cache:6379/3"}).celery_broker_url == (
        "redis://cache:6379/3"
    )
    explicit = load_settings({"REDIS_URL": "redis://a/0", "CELERY_BROKER_URL": "redis://b/1"})
    assert explicit.celery_broker_url == "redis://b/1"


def test_production_refuses_the_signature_bypass() -> None:
    message = _refused({**PRODUCTION, "DEV_SIGNATURE_BYPASS": "true"})
    assert "DEV_SIGNATURE_BYPASS" in message


def test_development_allows_the_signature_bypass() -> None:
    assert load_settings({"DEV_SIGNATURE_BYPASS": "true"}).dev_signature_bypass is True


@pytest.mark.parametrize("placeholder", ["changeme", "dev-jwt-secret-q7", "my-change-me-key", ""])
def test_production_refuses_a_placeholder_jwt_secret(placeholder: str) -> None:
    message = _refused({**PRODUCTION, "JWT_SECRET": placeholder})
    assert "JWT_SECRET" in message
    if placeholder:
        assert placeholder not in message


def test_production_refuses_the_default_jwt_secret_when_unset() -> None:
    env = {name: value for name, value in PRODUCTION.items() if name != "JWT_SECRET"}
    assert "JWT_SECRET" in _refused(env)


@pytest.mark.parametrize("name", ["HMAC_SHARED_SECRET_INSTANTLY", "HMAC_SHARED_SECRET_CALCOM"])
def test_production_refuses_a_missing_hmac_secret(name: str) -> None:
    unset = {key: value for key, value in PRODUCTION.items() if key != name}
    assert name in _refused(unset)
    assert name in _refused({**PRODUCTION, name: " , "})


def test_production_refuses_a_placeholder_among_rotated_hmac_secrets() -> None:
    message = _refused(
        {**PRODUCTION, "HMAC_SHARED_SECRET_INSTANTLY": "Kf82hsQm1Lz0Xc7Vb4Nw,secret"}
    )
    assert "HMAC_SHARED_SECRET_INSTANTLY" in message
    assert "Kf82hsQm1Lz0Xc7Vb4Nw" not in message


@pytest.mark.parametrize("name", ["PG_PASSWORD", "PG_ADMIN_PASSWORD", "PG_READONLY_PASSWORD"])
def test_production_refuses_placeholder_database_passwords(name: str) -> None:
    message = _refused({**PRODUCTION, name: "password"})
    assert name in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PG_PORT", "54x32"),
        ("MAX_BODY_BYTES", "1MB"),
        ("INGEST_PORT", "0"),
        ("WORKER_CONCURRENCY", "-2"),
        ("WORKER_BATCH_SIZE", "0"),
        ("IDEMPOTENCY_TTL_SECONDS", "1.5"),
    ],
)
def test_bad_whole_numbers_are_rejected_naming_the_variable(name: str, value: str) -> None:
    message = _refused({name: value})
    assert name in message
    assert value not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("APP_ENV", "staging"), ("LOG_LEVEL", "verbose"), ("DEV_SIGNATURE_BYPASS", "maybe")],
)
def test_bad_choices_are_rejected_naming_the_variable(name: str, value: str) -> None:
    assert name in _refused({name: value})


def test_secret_repr_and_str_hide_the_value() -> None:
    secret = Secret("hunter2-value")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert f"{secret}" == str(secret)
    assert secret.get() == "hunter2-value"


def test_settings_repr_shows_no_secret() -> None:
    settings = load_settings(PRODUCTION)
    shown = repr(settings)
    for name, value in PRODUCTION.items():
        if name != "APP_ENV":
            for part in value.split(","):
                assert part not in shown, name


def test_database_urls_carry_the_password_quoted() -> None:
    settings = load_settings({"PG_PASSWORD": "p@ss:w/rd", "PG_DATABASE": "crm_x"})
    url = settings.pg_url()
    assert url.startswith("postgresql+psycopg2://app_user:p%40ss%3Aw%2Frd@127.0.0.1:5432/crm_x")
    assert "app_admin" in settings.pg_url(admin=True)


def test_production_refuses_a_short_jwt_secret() -> None:
    message = _refused(PRODUCTION | {"JWT_SECRET": "only-twenty-bytes-xx"})
    assert "JWT_SECRET" in message
    assert "only-twenty-bytes-xx" not in message


@pytest.mark.parametrize("name", ["HMAC_SHARED_SECRET_INSTANTLY", "HMAC_SHARED_SECRET_CALCOM"])
@pytest.mark.parametrize("short", ["x", "Kf82hsQm1Lz0Xc7"])
def test_production_refuses_a_webhook_secret_under_16_characters(name: str, short: str) -> None:
    message = _refused(PRODUCTION | {name: f"Mz6Rt2Yw9Qa3Ls7Dp,{short}"})
    assert name in message
    assert "16" in message
    assert short not in message


def test_development_accepts_short_webhook_secrets() -> None:
    settings = load_settings({"HMAC_SHARED_SECRET_INSTANTLY": "x"})
    assert [secret.get() for secret in settings.webhook_secrets("instantly")] == ["x"]


def test_the_poison_lead_fault_point_is_refused_outside_tests() -> None:
    message = _refused({"TEST_POISON_LEAD": "poison@example.com"})
    assert "TEST_POISON_LEAD" in message
    settings = load_settings({"APP_ENV": "test", "TEST_POISON_LEAD": " Poison@Example.com "})
    assert settings.test_poison_lead == "poison@example.com"


def test_task_max_worker_lost_defaults_to_three_and_must_be_positive() -> None:
    assert load_settings({}).task_max_worker_lost == 3
    assert "TASK_MAX_WORKER_LOST" in _refused({"TASK_MAX_WORKER_LOST": "0"})


def _env_example() -> dict[str, str]:
    """What `set -a; . ./.env.example` puts into the environment."""
    values = {}
    for line in (Path(__file__).resolve().parents[1] / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_env_example_shows_the_real_development_defaults() -> None:
    assert load_settings(_env_example()) == Settings()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("127.0.0.1:6379", "must start with redis://"),
        ("http://127.0.0.1:6379/0", "the scheme 'http'"),
        ("redis://:6379/0", "no host"),
        ("redis://127.0.0.1:six/0", "port that is not a number"),
        ("redis://127.0.0.1:6379/zero", "database after the last / must be a number"),
    ],
)
@pytest.mark.parametrize("name", ["REDIS_URL", "CELERY_BROKER_URL"])
def test_malformed_redis_urls_are_refused_with_an_example(
    name: str, url: str, fragment: str
) -> None:
    message = _refused({name: url})
    assert message.startswith(name) and fragment in message
    assert f"e.g. {name}=redis://127.0.0.1:6379/0" in message


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://:pw@cache.example.com:6380/2", "unix:///run/r.sock"],
)
def test_well_formed_redis_urls_load(url: str) -> None:
    assert load_settings({"REDIS_URL": url}).celery_broker_url == url


def test_bootstrap_defaults_to_the_servers_host_and_port() -> None:
    settings = load_settings({"PG_HOST": "db.internal", "PG_PORT": "5499"})
    assert settings.pg_superuser_url.get() == (
        "postgresql+psycopg2://postgres@db.internal:5499/postgres"
    )
    explicit = load_settings({"PG_PORT": "5499", "PG_SUPERUSER_URL": "postgresql://su@other/x"})
    assert explicit.pg_superuser_url.get() == "postgresql+psycopg2://su@other/x"


@pytest.mark.parametrize(
    "name",
    [
        "DUPLICATE_STATUS_INSTANTLY",
        "DUPLICATE_STATUS_CALCOM",
        "DUPLICATE_STATUS_SMARTLEAD",
        "DUPLICATE_STATUS_CALENDLY",
    ],
)
def test_duplicate_status_is_409_or_200(name: str) -> None:
    assert load_settings({}).duplicate_status(name.rsplit("_", 1)[1].lower()) == 409
    assert load_settings({name: "200"}).duplicate_status(name.rsplit("_", 1)[1].lower()) == 200
    message = _refused({name: "204"})
    assert name in message and "409, 200" in message


@pytest.mark.parametrize(
    ("sender", "name"),
    [("smartlead", "WEBHOOK_SECRET_SMARTLEAD"), ("calendly", "WEBHOOK_SECRET_CALENDLY")],
)
def test_in_production_a_sender_production_does_not_require_is_off_until_its_secret_is_set(
    sender: str, name: str
) -> None:
    assert load_settings(PRODUCTION).webhook_secrets(sender) == ()  # not the development one
    assert load_settings({**PRODUCTION, name: ""}).webhook_secrets(sender) == ()
    real = "Zt6Uy1Ia8Sd3Fg5Hj7Kl"
    assert [s.get() for s in load_settings({**PRODUCTION, name: real}).webhook_secrets(sender)] == [
        real
    ]
    assert name in _refused({**PRODUCTION, name: "dev-whatever-change-me"})
    assert name in _refused({**PRODUCTION, name: "short"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CALENDLY_SIGNATURE_TOLERANCE_SECONDS": "soon"}, "must be a whole number of seconds"),
        ({"CALENDLY_SIGNATURE_TOLERANCE_SECONDS": "0"}, "must be at least 1"),
        ({"SMARTLEAD_CATEGORY_STAGES": "Interested"}, "each entry is 'category=stage'"),
        ({"SMARTLEAD_CATEGORY_STAGES": "=Lost"}, "SMARTLEAD_CATEGORY_STAGES"),
    ],
)
def test_a_senders_own_setting_that_is_wrong_is_refused_naming_it(
    env: dict[str, str], message: str
) -> None:
    assert message in _refused(env)


def test_a_senders_own_settings_are_read() -> None:
    settings = load_settings(
        {"CALENDLY_SIGNATURE_TOLERANCE_SECONDS": "60", "SMARTLEAD_CATEGORY_STAGES": "Hot=Won"}
    )
    assert settings.sender_option("calendly") == {"tolerance_seconds": 60}
    assert settings.sender_option("smartlead") == {"category_stages": {"hot": "Won"}}
    assert load_settings({}).sender_option("smartlead")["category_stages"]["meeting request"] == (
        "Meeting Booked"
    )


def test_production_names_every_missing_secret_at_once() -> None:
    env = {
        "APP_ENV": "production",
        "PG_PASSWORD": "Vn7Qe2Lr9Tx4Mb8Kc1Wz",
        "HMAC_SHARED_SECRET_CALCOM": "short",
    }
    message = _refused(env)
    for name in (
        "JWT_SECRET",
        "PG_ADMIN_PASSWORD",
        "PG_READONLY_PASSWORD",
        "HMAC_SHARED_SECRET_INSTANTLY",
        "HMAC_SHARED_SECRET_CALCOM",
    ):
        assert name in message
    assert "PG_PASSWORD is" not in message  # the one that is set is not named
    assert "short" not in message.replace("placeholder", "")


def _log_format_seen(stdout: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "from common.settings import load_settings;"
         " import sys; print(load_settings({}).log_format, file=sys.stderr)"],
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stderr.strip()


def test_log_format_defaults_to_text_on_a_terminal_and_json_elsewhere() -> None:
    main, other = pty.openpty()  # a terminal of the test's own
    try:
        assert _log_format_seen(other) == "text"
    finally:
        os.close(main)
        os.close(other)
    assert _log_format_seen(subprocess.DEVNULL) == "json"
    assert load_settings({"LOG_FORMAT": "json"}).log_format == "json"  # the setting wins


SENTINELS = {"REDIS_SENTINELS": "10.0.0.5:26379, [::1]:26380", "REDIS_SENTINEL_MASTER": "crm"}


def test_sentinels_make_the_target_and_the_broker_follows_it() -> None:
    settings = load_settings(SENTINELS | {"REDIS_SENTINEL_PASSWORD": "sentinel-pw-1234"})
    assert settings.redis.sentinels == (("10.0.0.5", 26379), ("::1", 26380))
    assert settings.redis.master == "crm"
    assert settings.broker == settings.redis
    assert "sentinel-pw-1234" not in repr(settings)
    assert settings.redis.describe() == "the master 'crm' of the Sentinels 10.0.0.5:26379,::1:26380"


def test_a_broker_of_its_own_takes_sentinels_of_its_own() -> None:
    settings = load_settings(
        SENTINELS
        | {
            "CELERY_BROKER_URL": "redis://x/2",
            "CELERY_BROKER_SENTINELS": "10.0.0.9:26379",
            "CELERY_BROKER_SENTINEL_MASTER": "queue",
        }
    )
    assert (settings.broker.master, settings.broker.sentinels) == ("queue", (("10.0.0.9", 26379),))
    assert settings.redis.master == "crm"
    plain = load_settings(SENTINELS | {"CELERY_BROKER_URL": "redis://broker:6379/2"})
    assert plain.broker.sentinels == ()
    assert plain.broker.describe() == "broker:6379"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"REDIS_SENTINELS": "10.0.0.5:26379"}, "REDIS_SENTINELS needs REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "crm"}, "REDIS_SENTINEL_MASTER needs REDIS_SENTINELS"),
        (SENTINELS | {"REDIS_SENTINELS": "10.0.0.5"}, "REDIS_SENTINELS takes host:port pairs"),
        (SENTINELS | {"REDIS_SENTINELS": "a:0"}, "REDIS_SENTINELS takes host:port pairs"),
        (SENTINELS | {"REDIS_URL": "unix:///run/r.sock"}, "redis:// or rediss:// with Sentinels"),
        ({"CELERY_BROKER_SENTINELS": "b:26379"}, "CELERY_BROKER_SENTINELS needs CELERY_BROKER_"),
        ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS must be at least 0"),
        ({"REDIS_WAIT_TIMEOUT_MS": "0"}, "REDIS_WAIT_TIMEOUT_MS must be at least 1"),
        ({"REDIS_WAIT_TIMEOUT_MS": "60000"}, "REDIS_WAIT_TIMEOUT_MS must be at most 10000"),
    ],
)
def test_bad_sentinel_and_wait_settings_are_refused_naming_them(
    env: dict[str, str], fragment: str
) -> None:
    assert fragment in _refused(env)


def test_replica_acknowledgement_is_off_unless_asked_for() -> None:
    assert load_settings({}).redis_wait_replicas == 0
    settings = load_settings({"REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "250"})
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout_ms) == (1, 250)
