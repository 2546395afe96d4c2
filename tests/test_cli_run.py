"""crm-run's start-up lines: what a developer needs, and in production never a secret."""

from __future__ import annotations

import pytest

from cli.run import main, welcome
from common.settings import load_settings
from tests.test_settings import PRODUCTION


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
