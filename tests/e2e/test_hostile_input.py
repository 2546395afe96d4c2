"""Hostile input against the real receiver: fuzzed deliveries (hypothesis), every documented
operation against the served OpenAPI spec (schemathesis), and payload fields that look like
attacks, which must be stored verbatim and never executed."""

from __future__ import annotations

import json
import random
import string
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import hypothesis
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine, text

from common.queue import QUEUE_NAME
from common.settings import Settings
from db import dead_letters
from ingest.openapi import SPEC
from tests.e2e.stack import delivery_keys, queue_idle, reply_envelope, scalar, wait_processed
from tests.helpers import wait_for
from tests.payloads import (
    CALCOM_SECRET,
    INSTANTLY_SECRET,
    INSTANTLY_SECRET_ROTATED,
    fixture,
    hmac_hex,
    reply,
    signed_headers,
)

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

MAX_BODY_BYTES = 1024 * 1024  # the receiver's default
# No example database: no .hypothesis/ folder in the work tree; a failure prints its example.
FUZZ = hypothesis.settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
API_FUZZ = hypothesis.settings(FUZZ, max_examples=25)


def _secrets(config: Settings) -> list[str]:
    values = [INSTANTLY_SECRET, INSTANTLY_SECRET_ROTATED, CALCOM_SECRET]
    for secret in (config.jwt_secret, config.pg_password, config.pg_admin_password):
        values.append(secret.get())
    return values


def _assert_safe(response: httpx.Response, secrets: list[str]) -> None:
    """What every answer must be, whatever was sent: no 5xx, JSON, no internals."""
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    for secret in secrets:
        assert secret not in response.text, "a secret was echoed"
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    if response.status_code >= 400:
        assert isinstance(answer.get("error"), str), response.text


# --- a. fuzzing the webhook routes -------------------------------------------------------------

_TYPE_FIELD = {"instantly": "event_type", "calcom": "triggerEvent"}
_NASTY_BODIES = [
    b"",
    b" ",
    b"null",
    b"NaN",
    b'{"event_type": "x"} trailing',
    b'\xef\xbb\xbf{"event_type": "reply_received"}',
    b'{"event_type": "\\ud800", "triggerEvent": "\\udc00"}',
    b'{"event_type": "a", "event_type": "b", "triggerEvent": "a", "triggerEvent": "b"}',
    b'{"event_type": "x", "triggerEvent": "x", "n": 1e999}',
    b'{"event_type": "x", "triggerEvent": "x", "n": 123456789012345678901234567890}',
    b'{"event_type": "x\x00", "triggerEvent": "x"}',
    b'{"event_type": "x\\u0000", "triggerEvent": "x\\u0000"}',
]
_JSON_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]
_OTHER_TYPES = [None, "", "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
_OTHER_TYPES += ["multipart/form-data; boundary=x", "application/problem+json", "json"]
# More weight on "no valid auth": every signed example that passes is queued and processed.
_AUTH = ["none", "none", "garbage", "garbage", "bearer-garbage", "other-provider", "repeated"]
_AUTH += ["valid", "valid", "valid-bearer", "valid-rotated", "valid-and-bearer-garbage"]

_header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
).map(lambda value: value.strip(" \t"))
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@dataclass(frozen=True)
class Delivery:
    provider: str
    body: bytes
    headers: list[tuple[str, bytes]]
    valid_auth: bool
    json_content_type: bool

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 2000 else self.body[:2000] + b"..."
        return f"Delivery({self.provider!r}, body={body!r}, headers={self.headers!r})"


def _encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def _bodies(draw: st.DrawFn, provider: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "object", "fixture", "nested", "nasty", "big"]))
    ascii_only = draw(st.booleans())
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return _encode(draw(_json), ascii_only)
    if kind == "nasty":
        return draw(st.sampled_from(_NASTY_BODIES))
    if kind == "big":  # one byte over the limit
        return b'{"event_type": "x", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    base: dict[str, Any] = {}
    if kind == "fixture":
        base = reply() if provider == "instantly" else fixture("calcom", "booking_created")
    elif kind == "nested":  # deep nesting, around the parser's and serialiser's depth limits
        depth = draw(st.integers(min_value=200, max_value=1100))
        tail = draw(st.sampled_from(['"x"', '"x\\u0000"', ""]))
        type_field = json.dumps(_TYPE_FIELD[provider])
        return f'{{{type_field}: "x", "deep": {"[" * depth}{tail}{"]" * depth}}}'.encode()
    base.update(draw(st.dictionaries(st.text(max_size=20), _json, max_size=5)))
    event_type = st.sampled_from(["reply_received", "BOOKING_CREATED", "", "  ", "x" * 1000])
    base[_TYPE_FIELD[provider]] = draw(event_type | _json)
    return _encode(base, ascii_only)


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    provider = draw(st.sampled_from(["instantly", "calcom"]))
    body = draw(_bodies(provider))
    headers: list[tuple[str, bytes]] = []
    # Mostly JSON: a wrong content type is refused before anything else is looked at.
    json_type = draw(st.integers(min_value=0, max_value=3)) > 0
    other_type = st.sampled_from(_OTHER_TYPES) | _header_text
    content_type = draw(st.sampled_from(_JSON_TYPES) if json_type else other_type)
    if content_type is not None:
        headers.append(("Content-Type", content_type.encode("latin-1")))
    auth = draw(st.sampled_from(_AUTH))
    sign_name = "X-Instantly-Signature" if provider == "instantly" else "X-Cal-Signature-256"
    secret = INSTANTLY_SECRET if provider == "instantly" else CALCOM_SECRET
    if auth.startswith("valid"):
        if auth == "valid-rotated" and provider == "instantly":
            secret = INSTANTLY_SECRET_ROTATED
        if auth == "valid-bearer" and provider == "instantly":
            headers.append(("Authorization", f"Bearer {secret}".encode()))
        else:
            prefix = draw(st.sampled_from(["sha256=", ""]))
            headers.append((sign_name, f"{prefix}{hmac_hex(body, secret)}".encode()))
        if auth == "valid-and-bearer-garbage":
            garbage = f"Bearer {draw(_header_text)}".strip()
            headers.append(("Authorization", garbage.encode("latin-1")))
    elif auth == "garbage":
        headers.append((sign_name, draw(_header_text).encode("latin-1")))
    elif auth == "bearer-garbage":
        headers.append(("Authorization", draw(_header_text).encode("latin-1")))
    elif auth == "other-provider":
        other = CALCOM_SECRET if provider == "instantly" else INSTANTLY_SECRET
        headers.append((sign_name, f"sha256={hmac_hex(body, other)}".encode()))
    elif auth == "repeated":
        headers += [(sign_name, f"sha256={hmac_hex(body, secret)}".encode())] * 2
    key = draw(st.none() | st.sampled_from(["k" * 255, "k" * 256, "'; DROP TABLE contacts; --"]))
    key = draw(_header_text) if key is None and draw(st.booleans()) else key
    if key is not None:
        headers.append(("Idempotency-Key", key.encode("latin-1")))
    valid_auth = auth.startswith("valid")  # calcom gets a signature for "valid-bearer"
    is_json = (content_type or "").split(";")[0].strip().lower() == "application/json"
    return Delivery(provider, body, headers, valid_auth, is_json)


def test_fuzzed_deliveries_never_break_the_receiver_or_leave_anything_behind(
    stack: str, redis_client: redis.Redis, superuser_engine: Engine, settings: Settings
) -> None:
    secrets = _secrets(settings)
    accepted: list[str] = []

    @FUZZ
    @given(delivery=deliveries())
    def check(delivery: Delivery) -> None:
        keys_before = delivery_keys(redis_client)
        assert redis_client.llen(QUEUE_NAME) == 0
        response = httpx.post(
            f"{stack}/webhooks/{delivery.provider}",
            content=delivery.body,
            headers=delivery.headers,
            timeout=30,
        )
        _assert_safe(response, secrets)
        new_keys = delivery_keys(redis_client) - keys_before
        if response.status_code != 202:
            assert redis_client.llen(QUEUE_NAME) == 0, "a refused delivery was queued"
            assert new_keys == set(), f"a refused delivery left {new_keys}"
        if not delivery.json_content_type:
            assert response.status_code == 415, response.text
        elif len(delivery.body) > MAX_BODY_BYTES:
            assert response.status_code == 413, response.text
        elif not delivery.valid_auth:
            assert response.status_code == 401, response.text
        else:
            assert response.status_code in (202, 400, 409), response.text
        if response.status_code == 202:
            event_id = response.json()["event_id"]
            assert any(key.startswith(b"crm:idem:") for key in new_keys), new_keys
            assert isinstance(json.loads(delivery.body), dict)
            accepted.append(event_id)
            # Let the worker take it, so the next example starts from an empty queue.
            wait_for(lambda: queue_idle(redis_client), timeout=30, message="queue did not drain")

    check()
    # Whatever was accepted was not lost: the worker stored each one, whatever became of it.
    if accepted:
        wait_processed(superuser_engine, accepted)


# --- b. the served OpenAPI description, held to the code by schemathesis -----------------------


_OPERATIONS = [(method.upper(), path) for path, item in SPEC["paths"].items() for method in item]
_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_the_served_description_is_valid_openapi_3_1(stack: str) -> None:
    response = httpx.get(f"{stack}/openapi.json")  # no token needed
    assert response.status_code == 200
    assert response.json() == SPEC
    schema = schemathesis.openapi.from_url(f"{stack}/openapi.json")
    schema.validate()  # against the OpenAPI 3.1 meta-schema


@pytest.fixture
def dead_letter(stack: str, superuser_engine: Engine) -> int:
    """Dead letter 1 and its dead event, so the 200s of the admin routes are exercised too."""
    body = reply(lead_email=None, email=None)  # no lead e-mail: the worker dead-letters it again
    envelope = reply_envelope(body, "hostile")
    failure = {"provider": "instantly", "event_type": "reply_received", "attempts": 1}
    with superuser_engine.begin() as conn:
        dead_letters.mark_event_dead(
            conn,
            event_id=uuid.UUID(envelope.event_id),
            idempotency_key=envelope.idempotency_key,
            payload=body,
            received_at=datetime.fromisoformat(envelope.received_at),
            error="InvalidPayload: no lead e-mail",
            lead=None,
            **failure,
        )
        return dead_letters.record(
            conn,
            event_id=uuid.UUID(envelope.event_id),
            envelope=envelope.to_dict(),
            reason="invalid_payload",
            error_class="InvalidPayload",
            error_message="no lead e-mail",
            traceback=None,
            **failure,
        )


@pytest.mark.parametrize("role", ["no token", "reader", "admin"])
@pytest.mark.parametrize(("method", "path"), _OPERATIONS)
def test_every_operation_answers_as_its_openapi_description_says(
    stack: str,
    dead_letter: int,
    method: str,
    path: str,
    role: str,
    reader_token: str,
    admin_token: str,
    settings: Settings,
) -> None:
    """Requests that fit the served description and requests that do not (schemathesis'
    positive and negative modes), with no token, a reader's and an admin's."""
    schema = schemathesis.openapi.from_url(f"{stack}/openapi.json")
    operation = schema[path][method]
    token = {"reader": reader_token, "admin": admin_token}.get(role)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    secrets = _secrets(settings)
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )

    @API_FUZZ
    @given(case=cases)
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=headers, checks=_CHECKS, timeout=30)
        assert "Traceback" not in response.text
        for secret in secrets:
            assert secret not in response.text, "a secret was echoed"

    check()


@pytest.mark.parametrize(
    "filters",
    [
        {"provider": "instantly\u0000"},
        {"reason": "\u0000"},
        {"reason": "r" * 321},
        {"since": "2026-01-01T00:00:00+23:59"},  # RFC 3339, but beyond PostgreSQL's ±15:59
        {"until": "0001-01-01T00:00:00-20:00"},
    ],
    ids=["nul-provider", "nul-reason", "long-reason", "since-offset", "until-offset"],
)
def test_admin_filters_the_database_cannot_take_are_400(
    stack: str, admin_token: str, filters: dict[str, str]
) -> None:
    """Found by the schemathesis test above: these were a 500 (NUL) and a 503 (offset)."""
    auth = {"Authorization": f"Bearer {admin_token}"}
    listed = httpx.get(f"{stack}/admin/dead-letters", params=filters, headers=auth)
    replayed = httpx.post(
        f"{stack}/admin/dead-letters/replay", json=filters | {"dry_run": True}, headers=auth
    )
    for response in (listed, replayed):
        assert response.status_code == 400, response.text
        assert isinstance(response.json()["error"], str)


# --- c. payload fields that look like attacks: stored verbatim, never executed -----------------


def _deliver(url: str, body: dict[str, Any], ascii_only: bool = True, **headers: str) -> str:
    raw = _encode(body, ascii_only)
    response = httpx.post(
        f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw, **headers)
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["event_id"]
    return event_id


def _hostile_reply(value: str, lead: str = "maria.keller@nordfracht.de") -> dict[str, Any]:
    """A reply carrying `value` in every text field the worker turns into CRM columns."""
    return reply(
        lead,
        firstName=value,
        lastName=value,
        companyName=value,
        campaign_name=value,
        reply_subject=value,
        reply_text=value,
        reply_text_snippet=None,  # the activity body is then the reply text's first 280
        reply_html=value,
    )


def _assert_stored_verbatim(engine: Engine, event_id: str, sent: dict[str, Any]) -> None:
    wait_processed(engine, [event_id])
    with engine.connect() as conn:
        event = conn.execute(
            text("SELECT status, error, payload FROM webhook_events WHERE id = :id"),
            {"id": event_id},
        ).one()
        assert (event.status, event.error) == ("processed", None)
        assert event.payload == sent
        row = conn.execute(
            text(
                "SELECT c.email, c.first_name, c.last_name, co.name AS company, d.title,"
                " a.subject, a.body, a.metadata FROM activities a"
                " JOIN contacts c ON c.id = a.contact_id JOIN deals d ON d.id = a.deal_id"
                " JOIN companies co ON co.id = c.company_id WHERE a.event_id = :id"
            ),
            {"id": event_id},
        ).one()
        tables = conn.execute(
            text("SELECT to_regclass(name) FROM unnest(CAST(:names AS text[])) AS name"),
            {"names": ["contacts", "deals", "activities", "companies", "webhook_events"]},
        ).scalars()
        assert None not in list(tables), "a table is gone"
    first, last, campaign = sent["firstName"], sent["lastName"], sent["campaign_name"]
    who = f"{first} {last}"
    assert (row.email, row.first_name, row.last_name) == (sent["lead_email"], first, last)
    assert row.company == sent["companyName"]
    assert row.title == f"{who} — {campaign}"
    note = f"{who} <{sent['lead_email']}> replied to campaign '{campaign}'"
    assert row.subject == f"{note}: {sent['reply_subject']}"
    assert row.body == sent["reply_text"][:280]
    assert row.metadata["campaign_name"] == campaign


@pytest.mark.parametrize(
    "sql",
    [
        "'; DROP TABLE contacts; --",
        "Robert'); DROP TABLE contacts;--",
        "1' OR '1'='1",
        "$$; DROP TABLE contacts; $$",
    ],
)
def test_sql_in_fields_is_stored_verbatim_and_never_run(
    stack: str, superuser_engine: Engine, sql: str
) -> None:
    sent = _hostile_reply(sql, lead="o'brien--@example.org")
    event_id = _deliver(stack, sent, **{"Idempotency-Key": sql})
    _assert_stored_verbatim(superuser_engine, event_id, sent)
    key = scalar(
        superuser_engine, "SELECT idempotency_key FROM webhook_events WHERE id = :id", id=event_id
    )
    assert key == sql
    assert scalar(superuser_engine, "SELECT count(*) FROM contacts") == 1


def test_html_and_script_tags_are_stored_verbatim(stack: str, superuser_engine: Engine) -> None:
    html = '<script>alert("x")</script><img src=x onerror=alert(1)> &amp; &lt;b&gt; </textarea>'
    sent = _hostile_reply(html)
    _assert_stored_verbatim(superuser_engine, _deliver(stack, sent), sent)


def test_a_100_kb_reply_text_is_stored_whole(stack: str, superuser_engine: Engine) -> None:
    long_text = "".join(chr(ord("a") + i % 26) for i in range(100 * 1024))
    sent = _hostile_reply("Maria") | {"reply_text": long_text, "reply_html": f"<p>{long_text}</p>"}
    _assert_stored_verbatim(superuser_engine, _deliver(stack, sent), sent)


@pytest.mark.parametrize("ascii_only", [True, False], ids=["escaped", "utf-8"])
def test_emoji_are_stored_verbatim(stack: str, superuser_engine: Engine, ascii_only: bool) -> None:
    # Astral-plane code points (surrogate pairs when escaped), ZWJ sequences, flags, a combining
    # accent and a variation selector.
    emoji = "Mari\u0301a 😀🚀 👩‍👩‍👧‍👦 🇩🇪 🏳️‍🌈 ❤️"
    sent = _hostile_reply(emoji)
    _assert_stored_verbatim(superuser_engine, _deliver(stack, sent, ascii_only), sent)


@pytest.mark.parametrize("ascii_only", [True, False], ids=["escaped", "utf-8"])
def test_right_to_left_text_is_stored_verbatim(
    stack: str, superuser_engine: Engine, ascii_only: bool
) -> None:
    # Arabic, Hebrew, a right-to-left override (the "invoice\u202efdp.exe" trick), marks.
    rtl = "مرحبا بالعالم שלום עולם \u202egnp.exe\u202c \u200fend\u200e"
    sent = _hostile_reply(rtl, lead="\u05e9\u05dc\u05d5\u05dd@example.org")
    _assert_stored_verbatim(superuser_engine, _deliver(stack, sent, ascii_only), sent)


def _assert_nothing_left(client: redis.Redis, engine: Engine) -> None:
    assert delivery_keys(client) == set(), "an idempotency key or marker was left"
    assert client.llen(QUEUE_NAME) == 0, "a message was queued"
    assert scalar(engine, "SELECT count(*) FROM webhook_events") == 0


@pytest.mark.parametrize(
    "body",
    [
        reply(reply_text="before\u0000after"),
        reply() | {"key\u0000": "value"},
        reply() | {"nested": [{"deeper": ["\u0000"]}]},
        reply() | {"deep": json.loads("[" * 400 + '"\\u0000"' + "]" * 400)},
    ],
    ids=["value", "key", "nested", "400-deep"],
)
def test_nul_characters_are_refused_with_400(
    stack: str, redis_client: redis.Redis, superuser_engine: Engine, body: dict[str, Any]
) -> None:
    raw = _encode(body, ascii_only=True)
    assert b"\\u0000" in raw
    response = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    assert response.status_code == 400, response.text
    assert "NUL" in response.json()["error"]
    _assert_nothing_left(redis_client, superuser_engine)


@pytest.mark.parametrize("depth", [300, 1000])
def test_nesting_too_deep_to_queue_is_refused_with_400(
    stack: str, redis_client: redis.Redis, superuser_engine: Engine, depth: int
) -> None:
    head = _encode(reply(), ascii_only=True).removesuffix(b"}")
    raw = head + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    response = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    assert response.status_code == 400, response.text
    assert "nested" in response.json()["error"]
    _assert_nothing_left(redis_client, superuser_engine)


def test_nesting_that_can_be_queued_is_stored_verbatim(
    stack: str, superuser_engine: Engine
) -> None:
    sent = _hostile_reply("Maria") | {"deep": json.loads("[" * 200 + '"x"' + "]" * 200)}
    _assert_stored_verbatim(superuser_engine, _deliver(stack, sent), sent)


def _random_letters(count: int) -> str:
    # Random, not repeated: a repetitive string compresses under the index limit and passes.
    return "".join(random.choices(string.ascii_lowercase, k=count))


@pytest.mark.parametrize(
    ("provider", "body", "field"),
    [
        ("instantly", reply(f"{_random_letters(4000)}@example.com"), "'lead_email'"),
        ("instantly", reply(None) | {"email": f"{_random_letters(321)}@x.io"}, "'email'"),
        ("instantly", reply() | {"lead_email": {"a": _random_letters(400)}}, "'lead_email'"),
        ("instantly", reply(event_type=_random_letters(201)), "'event_type'"),
        (
            "calcom",
            fixture("calcom", "booking_created"),
            "'payload.attendees[0].email'",
        ),
        ("calcom", fixture("calcom", "booking_created", triggerEvent="B" * 201), "'triggerEvent'"),
    ],
    ids=[
        "lead-email-4000",
        "email-321",
        "lead-email-object",
        "event-type-201",
        "calcom-attendee-email",
        "calcom-trigger-201",
    ],
)
def test_a_field_too_long_to_store_is_refused_with_400_naming_it(
    stack: str,
    redis_client: redis.Redis,
    superuser_engine: Engine,
    provider: str,
    body: dict[str, Any],
    field: str,
) -> None:
    if field == "'payload.attendees[0].email'":
        body["payload"]["attendees"][0]["email"] = f"{_random_letters(330)}@example.com"
    raw = _encode(body, ascii_only=True)
    secret = CALCOM_SECRET if provider == "calcom" else INSTANTLY_SECRET
    headers = {"content-type": "application/json"}
    if provider == "calcom":
        headers["x-cal-signature-256"] = hmac_hex(raw, secret)
    else:
        headers = signed_headers(raw)
    response = httpx.post(f"{stack}/webhooks/{provider}", content=raw, headers=headers)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    _assert_nothing_left(redis_client, superuser_engine)


def test_a_lead_email_of_320_characters_is_taken(stack: str, superuser_engine: Engine) -> None:
    labels = [_random_letters(60) for _ in range(4)] + [_random_letters(7), "com"]
    lead = f"{_random_letters(64)}@{'.'.join(labels)}"
    assert len(lead) == 320
    event_id = _deliver(stack, reply(lead))
    wait_processed(superuser_engine, [event_id])


def test_a_lone_surrogate_beside_a_long_number_is_a_400(
    stack: str, redis_client: redis.Redis, superuser_engine: Engine
) -> None:
    raw = _encode(reply(), ascii_only=True).removesuffix(b"}")
    raw += b', "text": "\\ud800", "big": 12345678901234567890123}'
    response = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    assert response.status_code == 400, response.text
    assert "not valid UTF-8 JSON" in response.json()["error"]
    _assert_nothing_left(redis_client, superuser_engine)
