"""DUPLICATE_STATUS_<PROVIDER>: a repeat answered 409 (the default) or 200, with nothing queued
either way and the repeat counted apart in /metrics."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from common.queue import QUEUE_NAME
from tests.e2e.stack import ROOT, IsolatedStack, scalar
from tests.e2e.test_faults import PROCESSED, assert_exactly_once, safe_count, send_all
from tests.e2e.test_operations import scrape, value
from tests.helpers import wait_for
from tests.payloads import (
    CALCOM_SECRET,
    calendly_headers,
    encode,
    fixture,
    hmac_hex,
    reply,
    signed_headers,
    smartlead,
)

pytestmark = pytest.mark.e2e


def _delivery(provider: str) -> tuple[bytes, dict[str, str]]:
    if provider == "instantly":
        raw = encode(reply(f"dup-{uuid.uuid4().hex[:8]}@dup.example.com"))
        return raw, signed_headers(raw)
    if provider == "smartlead":
        return encode(smartlead(stats_id=f"dup-{uuid.uuid4()}")), {
            "Content-Type": "application/json"
        }
    if provider == "calendly":
        booking = fixture("calendly", "invitee_created")
        booking["payload"]["uri"] = f"https://api.calendly.com/invitees/dup-{uuid.uuid4()}"
        raw = encode(booking)
        return raw, calendly_headers(raw)
    body: dict[str, Any] = fixture("calcom", "booking_created")
    body["payload"]["uid"] = f"dup-{uuid.uuid4()}"
    raw = encode(body)
    headers = {
        "Content-Type": "application/json",
        "X-Cal-Signature-256": hmac_hex(raw, CALCOM_SECRET),
    }
    return raw, headers


@pytest.mark.parametrize("status", [409, 200])
@pytest.mark.parametrize("provider", ["instantly", "calcom", "smartlead", "calendly"])
def test_a_repeat_gets_the_configured_status_and_queues_nothing(
    isolated: IsolatedStack, provider: str, status: int
) -> None:
    _, url = isolated.receiver(**{f"DUPLICATE_STATUS_{provider.upper()}": str(status)})
    raw, headers = _delivery(provider)
    before = scrape(url)
    first = httpx.post(f"{url}/webhooks/{provider}", content=raw, headers=headers)
    assert first.status_code == 202, first.text
    event_id = first.json()["event_id"]
    again = httpx.post(f"{url}/webhooks/{provider}", content=raw, headers=headers)

    assert again.status_code == status
    if status == 409:
        assert again.json() == {"error": "Duplicate event", "event_id": event_id}
    else:
        assert again.json() == {"status": "duplicate", "event_id": event_id}
    assert isolated.client.llen(QUEUE_NAME) == 1  # the first delivery's message alone
    after = scrape(url)
    labels = {"provider": provider, "reason": ""}
    name = "crm_webhook_deliveries_total"
    assert (
        value(after, name, outcome="duplicate", **labels)
        - value(before, name, outcome="duplicate", **labels)
        == 1
    )
    assert (
        value(after, name, outcome="accepted", **labels)
        - value(before, name, outcome="accepted", **labels)
        == 1
    )
    details = httpx.get(f"{url}/healthz/details").json()
    assert details["duplicate_status"][provider] == status


def test_a_duplicate_storm_answered_200_still_applies_once(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    _, url = isolated.receiver(DUPLICATE_STATUS_INSTANTLY="200")
    isolated.worker(concurrency=2)
    responses = send_all(url, [reply("storm200@example.org")] * 1000, 100)
    statuses = [response.status_code for response in responses]
    assert statuses.count(202) == 1
    assert statuses.count(200) == 999
    first = next(r.json()["event_id"] for r in responses if r.status_code == 202)
    assert {r.json()["event_id"] for r in responses} == {first}
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == 1,
        timeout=60,
        message="the accepted delivery was not processed",
    )
    assert_exactly_once(superuser_engine, 1)
    assert scalar(superuser_engine, "SELECT id::text FROM webhook_events") == first


def _smoke(env: dict[str, str], url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("crm-smoke")), "--url", url, *extra],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_crm_smoke_expects_the_configured_status(isolated: IsolatedStack) -> None:
    _, url = isolated.receiver(DUPLICATE_STATUS_INSTANTLY="200")
    isolated.worker()
    passed = _smoke(isolated.env, url)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "repeat delivery: 200 (want 200" in passed.stdout
    insisted = _smoke(isolated.env, url, "--duplicate-status", "409")
    assert insisted.returncode == 1
    assert "FAIL repeat delivery: 200 (want 409" in insisted.stdout


@pytest.mark.parametrize("provider", ["smartlead", "calendly"])
def test_crm_smoke_checks_any_sender(isolated: IsolatedStack, provider: str) -> None:
    _, url = isolated.receiver()
    isolated.worker()
    passed = _smoke(isolated.env, url, "--provider", provider)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "ok   first delivery: 202" in passed.stdout
    assert "ok   repeat delivery: 409" in passed.stdout
    assert "(rolled back: nothing kept in the CRM)" in passed.stdout
    wrong = _smoke(isolated.env, url, "--provider", provider, "--secret", "not-the-secret-at-all")
    assert wrong.returncode == 1
    assert f"one of the service's WEBHOOK_SECRET_{provider.upper()} values" in wrong.stdout
