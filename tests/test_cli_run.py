"""crm-run's start-up lines: what a developer needs, in production never a secret, and a
Redis that answered with an error told apart from one that is not there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from cli import local_services
from cli.run import check_redis, main, welcome
from common.settings import SettingsError, load_settings
from tests.redis_server import RedisServer, free_port
from tests.test_settings import PRODUCTION


@pytest.fixture(scope="module")
def guarded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    with redis.Redis.from_url(server.url) as client:
        client.config_set("requirepass", "right-password")
    yield server
    server.stop()


def test_production_start_up_names_the_secrets_but_shows_none() -> None:
    settings = load_settings(PRODUCTION)
    shown = welcome(settings, "127.0.0.1", 4)
    assert "http://127.0.0.1:8000/webhooks/instantly" in shown
    assert "worker concurrency 4" in shown
    assert "HMAC_SHARED_SECRET_INSTANTLY" in shown
    for name, value in PRODUCTION.items():
        for secret in value.split(","):
            if name != "APP_ENV":
                assert secret not in shown, name


def test_development_start_up_shows_the_secrets_in_use() -> None:
    shown = welcome(load_settings({}), "127.0.0.1", 2)
    assert "HMAC_SHARED_SECRET_INSTANTLY=dev-instantly-secret-change-me" in shown
    assert "HMAC_SHARED_SECRET_CALCOM=dev-calcom-secret-change-me" in shown


def test_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--workers", "0"])
    assert exited.value.code == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_a_database_index_out_of_range_is_reported_in_redis_words(
    guarded_redis: RedisServer,
) -> None:
    url = f"redis://:right-password@127.0.0.1:{guarded_redis.port}/99"
    line = check_redis(load_settings({"REDIS_URL": url}))
    assert (
        line
        == f"Redis at 127.0.0.1:{guarded_redis.port} (REDIS_URL) answered: DB index is out of range"
    )


def test_a_wrong_password_is_reported_in_redis_words(guarded_redis: RedisServer) -> None:
    url = f"redis://:wrong-password@127.0.0.1:{guarded_redis.port}/0"
    line = check_redis(load_settings({"REDIS_URL": url}))
    assert line is not None
    assert line.startswith(f"Redis at 127.0.0.1:{guarded_redis.port} (REDIS_URL) answered: ")
    assert "wrong-password" not in line
    assert "redis-server" not in line  # no start-up hint for a server that runs


def test_a_redis_that_is_not_there_gets_the_start_up_hint() -> None:
    port = free_port()
    line = check_redis(load_settings({"REDIS_URL": f"redis://127.0.0.1:{port}/0"}))
    assert line is not None
    assert line.startswith(f"Redis is not answering at 127.0.0.1:{port} (REDIS_URL). Start it")


def test_a_broker_url_of_its_own_is_checked_and_named(guarded_redis: RedisServer) -> None:
    good = f"redis://:right-password@127.0.0.1:{guarded_redis.port}/0"
    broker = f"redis://:right-password@127.0.0.1:{guarded_redis.port}/99"
    settings = load_settings({"REDIS_URL": good, "CELERY_BROKER_URL": broker})
    assert check_redis(settings) == (
        f"Redis at 127.0.0.1:{guarded_redis.port} (CELERY_BROKER_URL) answered: "
        "DB index is out of range"
    )


def _wanted(env: dict[str, str], answering: set[str]) -> list[str]:
    return local_services.wanted(load_settings(env), lambda name: name in answering)


def test_auto_starts_a_private_server_only_where_none_is_configured_and_none_answers() -> None:
    assert _wanted({}, answering=set()) == ["postgresql", "redis"]
    assert _wanted({}, answering={"postgresql"}) == ["redis"]
    assert _wanted({}, answering={"postgresql", "redis"}) == []
    # Configured (to anything but the default address): never replaced, answering or not.
    assert _wanted({"PG_PORT": "5433"}, answering=set()) == ["redis"]
    assert _wanted({"PG_HOST": "127.0.0.1", "PG_PORT": "5432"}, answering=set()) == [
        "postgresql",
        "redis",
    ]
    assert _wanted({"REDIS_URL": "redis://cache:6379/0"}, answering=set()) == ["postgresql"]
    sentinels = {"REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_MASTER": "crm"}
    assert _wanted(sentinels, answering=set()) == ["postgresql"]


def test_always_and_never_mean_what_they_say() -> None:
    configured = {"PG_PORT": "5433", "REDIS_URL": "redis://cache:6379/0"}
    assert _wanted(configured | {"LOCAL_SERVICES": "always"}, set()) == ["postgresql", "redis"]
    assert _wanted({"LOCAL_SERVICES": "never"}, answering=set()) == []


@pytest.mark.parametrize("app_env", ["test", "production"])
def test_outside_development_no_private_server_is_started(app_env: str) -> None:
    env = (PRODUCTION if app_env == "production" else {}) | {"APP_ENV": app_env}
    assert load_settings(env).local_services == "never"
    assert _wanted(env, answering=set()) == []
    with pytest.raises(SettingsError, match="LOCAL_SERVICES is only honoured when APP_ENV="):
        load_settings(env | {"LOCAL_SERVICES": "auto"})
