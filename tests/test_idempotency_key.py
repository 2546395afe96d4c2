"""Derived idempotency keys are a contract with the past: keys already issued (in Redis for a
week, in webhook_events for ever) must come out the same for the same delivery."""

from __future__ import annotations

import hashlib
import json

import pytest
from starlette.datastructures import Headers

from ingest.idempotency import derive_key
from tests.payloads import reply


def test_an_instantly_reply_keys_on_its_identifying_fields_as_it_always_has() -> None:
    body = reply("Ünïcode.Lead@Example.org")
    fields = [
        body["event_type"], body["workspace"], body["campaign"],
        "ünïcode.lead@example.org", body["timestamp"], body["email_id"],
    ]  # fmt: skip
    expected = hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()

    key = derive_key("instantly", Headers({}), body)

    assert key == f"sha256:{expected}"


@pytest.mark.parametrize(
    "email",
    [
        "plain.lead@example.org",
        'quote"and\\backslash@example.org',
        "tab\tnewline\ncontrol\x01\x1f@example.org",
        "del\x7f@example.org",
        "ünïcode@exämple.org",
        "emoji\U0001f600@example.org",
    ],
)
def test_every_kind_of_character_keys_as_json_dumps_would(email: str) -> None:
    body = reply(email)
    fields = [
        body["event_type"], body["workspace"], body["campaign"],
        email.lower(), body["timestamp"], body["email_id"],
    ]  # fmt: skip
    expected = hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()

    assert derive_key("instantly", Headers({}), body) == f"sha256:{expected}"


def test_an_explicit_key_wins_over_the_fingerprint() -> None:
    body = reply()
    headers = Headers({"Idempotency-Key": "  sender-key-1 "})
    assert derive_key("instantly", headers, body) == "sender-key-1"


def test_a_booking_without_uid_keys_on_its_content_not_its_key_order() -> None:
    booking = {"triggerEvent": "BOOKING_CREATED", "payload": {"title": "Intro", "n": 1}}
    reordered = {"payload": {"n": 1, "title": "Intro"}, "triggerEvent": "BOOKING_CREATED"}
    other = {"triggerEvent": "BOOKING_CREATED", "payload": {"title": "Intro", "n": 2}}

    key = derive_key("calcom", Headers({}), booking)

    assert key.startswith("sha256-payload:")
    assert derive_key("calcom", Headers({}), reordered) == key
    assert derive_key("calcom", Headers({}), other) != key
