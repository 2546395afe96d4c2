"""An Instantly reply, end to end: HTTP → Redis → a real Celery worker → PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, text

from common import queue
from common.queue import QUEUE_NAME
from tests.e2e.stack import IsolatedStack, scalar, wait_processed
from tests.helpers import wait_for
from tests.payloads import bearer_headers, encode, reply, signed_headers

pytestmark = pytest.mark.e2e

SAMPLE_EMAIL = "maria.keller@nordfracht.de"


def post_reply(url: str, body: dict[str, Any]) -> str:
    answer = post(url, body)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["event_id"])


def post(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    raw = encode(body)
    return httpx.post(
        f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw, **headers)
    )


def counts(engine: Engine) -> dict[str, int]:
    return {
        table: scalar(engine, f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names
        for table in ("contacts", "deals", "activities", "webhook_events")
    }


def test_sample_reply_becomes_contact_deal_in_new_and_system_note(
    stack: str, superuser_engine: Engine, reader_token: str
) -> None:
    response = post(stack, reply())
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    event_id = body["event_id"]

    wait_processed(superuser_engine, [event_id])

    assert counts(superuser_engine) == {
        "contacts": 1, "deals": 1, "activities": 1, "webhook_events": 1,
    }  # fmt: skip
    contact = scalar(
        superuser_engine,
        "SELECT json_build_object('email', email, 'first', first_name, 'last', last_name,"
        " 'company', (SELECT name FROM companies WHERE id = company_id)) FROM contacts",
    )
    assert contact == {
        "email": SAMPLE_EMAIL, "first": "Maria", "last": "Keller", "company": "Nordfracht GmbH",
    }  # fmt: skip
    stage = scalar(
        superuser_engine,
        "SELECT s.name || '/' || p.is_default::text FROM deals d"
        " JOIN pipeline_stages s ON s.id = d.stage_id JOIN pipelines p ON p.id = d.pipeline_id",
    )
    assert stage == "New/true"
    note = scalar(
        superuser_engine,
        "SELECT json_build_object('type', type, 'subject', subject, 'body', body,"
        " 'meta', metadata) FROM activities",
    )
    assert note["type"] == "system_note"
    assert "Re: Cutting freight audit time in half" in note["subject"]
    assert note["body"].startswith("Hi Jonas, timing is good")
    assert note["meta"]["unibox_url"].startswith("https://app.instantly.ai/")
    assert note["meta"]["email_id"] == "0199a3f2-7c1e-7b2a-9e4d-5f6a7b8c9d0e"
    assert note["meta"]["step"] == 2

    status = httpx.get(
        f"{stack}/events/{event_id}", headers={"Authorization": f"Bearer {reader_token}"}
    )
    assert status.status_code == 200
    shown = status.json()
    assert shown["status"] == "processed"
    assert shown["attempts"] == 1
    assert shown["result"]["step"] == "E:deal_created_and_logged"
    deal_id = scalar(superuser_engine, "SELECT id::text FROM deals")
    activity_id = scalar(superuser_engine, "SELECT id::text FROM activities")
    contact_id = scalar(superuser_engine, "SELECT id::text FROM contacts")
    # Every event's keys, and the prototype's (step, system_activity_id) for a reply.
    assert shown["result"] == {
        "effect": "reply_received", "contact_id": contact_id, "deal_id": deal_id, "stage": "New",
        "activity_id": activity_id, "do_not_contact": None,
        "step": "E:deal_created_and_logged", "system_activity_id": activity_id,
        "occurred_at": "2026-11-20T09:14:03.512000+00:00", "time_source": "sender",
    }  # fmt: skip


def test_same_delivery_again_is_409_with_first_event_id_and_no_new_rows(
    stack: str, superuser_engine: Engine
) -> None:
    first = post(stack, reply())
    assert first.status_code == 202
    wait_processed(superuser_engine, [first.json()["event_id"]])
    before = counts(superuser_engine)

    again = post(stack, reply())
    assert again.status_code == 409
    assert again.json() == {"error": "Duplicate event", "event_id": first.json()["event_id"]}
    assert counts(superuser_engine) == before


def test_repeat_while_first_is_still_queued_is_409(isolated: IsolatedStack) -> None:
    # No worker on this stack: the first delivery is certainly still queued when it repeats.
    _, url = isolated.receiver()
    body = reply("queued.twice@example.org")
    first = post(url, body)
    second = post(url, body)
    assert (first.status_code, second.status_code) == (202, 409)
    assert second.json()["event_id"] == first.json()["event_id"]
    assert isolated.client.llen(QUEUE_NAME) == 1
    assert queue.in_flight(isolated.client).count == 1


def test_fifty_concurrent_identical_deliveries_give_one_202_and_one_set_of_rows(
    stack: str, superuser_engine: Engine
) -> None:
    raw = encode(reply())

    async def storm() -> list[int]:
        async with httpx.AsyncClient(base_url=stack, timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/webhooks/instantly", content=raw, headers=signed_headers(raw))
                    for _ in range(50)
                )
            )
        return [r.status_code for r in responses]

    statuses = asyncio.run(storm())
    assert statuses.count(202) == 1
    assert statuses.count(409) == 49
    wait_for(
        lambda: (
            scalar(
                superuser_engine, "SELECT count(*) FROM webhook_events WHERE status = 'processed'"
            )
            == 1
        ),
        timeout=30,
        message="the accepted delivery was not processed",
    )
    assert counts(superuser_engine) == {
        "contacts": 1, "deals": 1, "activities": 1, "webhook_events": 1,
    }  # fmt: skip


def test_two_different_replies_from_one_lead_make_one_deal_and_two_activities(
    stack: str, superuser_engine: Engine
) -> None:
    first = post(stack, reply(email_id="reply-1", timestamp="2026-11-20T09:14:03Z"))
    second = post(stack, reply(email_id="reply-2", timestamp="2026-11-21T10:00:00Z"))
    assert (first.status_code, second.status_code) == (202, 202)
    wait_processed(superuser_engine, [first.json()["event_id"], second.json()["event_id"]])
    assert counts(superuser_engine) == {
        "contacts": 1, "deals": 1, "activities": 2, "webhook_events": 2,
    }  # fmt: skip


def test_the_same_envelope_delivered_to_the_worker_twice_makes_one_set_of_rows(
    stack: str, superuser_engine: Engine, redis_client: redis.Redis
) -> None:
    response = post(stack, reply())
    assert response.status_code == 202
    event_id = response.json()["event_id"]
    wait_processed(superuser_engine, [event_id])
    # What a redelivery looks like to the worker: the very message the receiver queued, again.
    # Rebuilt here from the stored envelope, the way a visibility-timeout restore re-pushes it.
    from common.envelope import Envelope

    stored = scalar(
        superuser_engine,
        "SELECT json_build_object('provider', provider, 'event_type', event_type,"
        " 'idempotency_key', idempotency_key, 'received_at', received_at, 'payload', payload)"
        " FROM webhook_events WHERE id = :id",
        id=event_id,
    )
    envelope = Envelope(event_id=event_id, **stored)
    message = queue.message.build(envelope)
    redis_client.lpush(QUEUE_NAME, message, message)
    wait_for(
        lambda: redis_client.llen(QUEUE_NAME) == 0 and redis_client.hlen("unacked") == 0,
        timeout=30,
        message="redelivered messages were not consumed",
    )
    assert counts(superuser_engine) == {
        "contacts": 1, "deals": 1, "activities": 1, "webhook_events": 1,
    }  # fmt: skip
    assert scalar(superuser_engine, "SELECT attempts FROM webhook_events") == 1


def test_two_hundred_distinct_replies_make_two_hundred_deals_and_activities(
    stack: str, superuser_engine: Engine, redis_client: redis.Redis
) -> None:
    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack, timeout=30) as client:
            bodies = [encode(reply(f"lead{i}@company{i}.example.com")) for i in range(200)]
            return await asyncio.gather(
                *(
                    client.post("/webhooks/instantly", content=raw, headers=signed_headers(raw))
                    for raw in bodies
                )
            )

    responses = asyncio.run(send())
    assert [r.status_code for r in responses] == [202] * 200
    wait_processed(superuser_engine, [r.json()["event_id"] for r in responses], timeout=120)
    assert counts(superuser_engine) == {
        "contacts": 200, "deals": 200, "activities": 200, "webhook_events": 200,
    }  # fmt: skip
    # Every finished event's in-flight record is gone, so the sweeper has nothing to resend.
    wait_for(
        lambda: redis_client.hlen(queue.INFLIGHT_KEY) == 0,
        timeout=30,
        message="in-flight records were left behind",
    )
    assert redis_client.zcard(queue.DUE_KEY) == 0


@pytest.mark.parametrize(
    ("variant", "expected_email"),
    [
        ({"lead_email": None}, SAMPLE_EMAIL),
        ({"email": None}, SAMPLE_EMAIL),
    ],
    ids=["only-email-field", "only-lead_email-field"],
)
def test_reply_variants_from_real_deliveries_are_processed(
    stack: str, superuser_engine: Engine, variant: dict[str, Any], expected_email: str
) -> None:
    response = post(stack, reply(**variant))
    assert response.status_code == 202
    wait_processed(superuser_engine, [response.json()["event_id"]])
    assert scalar(superuser_engine, "SELECT email FROM contacts") == expected_email
    assert scalar(superuser_engine, "SELECT status FROM webhook_events") == "processed"


def test_only_snippet_and_shadowed_campaign_id_are_handled(
    stack: str, superuser_engine: Engine
) -> None:
    body = reply(reply_text=None, reply_html=None, campaign_id="lead-variable-value")
    response = post(stack, body)
    assert response.status_code == 202
    wait_processed(superuser_engine, [response.json()["event_id"]])
    meta = scalar(superuser_engine, "SELECT metadata FROM activities")
    assert meta["campaign_id"] == "a7c3e2d1-4b5f-4c6a-9d8e-1f2a3b4c5d6e"
    body_text = scalar(superuser_engine, "SELECT body FROM activities")
    assert body_text == body["reply_text_snippet"]


def test_free_mail_lead_gets_no_company(stack: str, superuser_engine: Engine) -> None:
    response = post(stack, reply("someone@gmail.com", companyName=None, website=None))
    assert response.status_code == 202
    wait_processed(superuser_engine, [response.json()["event_id"]])
    assert scalar(superuser_engine, "SELECT count(*) FROM companies") == 0
    assert scalar(superuser_engine, "SELECT company_id FROM contacts") is None


@pytest.mark.parametrize(
    "website",
    [f"https://{'a' * 6000}.com", "http://a..b.com/", "https://-bad-.com", "http://ex ample.com"],
    ids=["6000-char-host", "empty-label", "hyphen-edges", "space"],
)
def test_a_website_that_is_no_host_name_costs_the_company_not_the_lead(
    stack: str, superuser_engine: Engine, website: str
) -> None:
    response = post(stack, reply("someone@gmail.com", companyName="Acme", website=website))
    assert response.status_code == 202
    event_id = response.json()["event_id"]
    wait_processed(superuser_engine, [event_id])
    assert scalar(superuser_engine, "SELECT status FROM webhook_events") == "processed"
    assert scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 0
    assert scalar(superuser_engine, "SELECT count(*) FROM companies") == 0
    assert counts(superuser_engine) == {
        "contacts": 1, "deals": 1, "activities": 1, "webhook_events": 1,
    }  # fmt: skip


def test_names_a_person_edited_are_not_overwritten(stack: str, superuser_engine: Engine) -> None:
    first = post(stack, reply(email_id="a"))
    wait_processed(superuser_engine, [first.json()["event_id"]])
    with superuser_engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE contacts SET first_name = 'Mia'"))
    second = post(stack, reply(email_id="b", firstName="Maria-Overwritten"))
    wait_processed(superuser_engine, [second.json()["event_id"]])
    assert scalar(superuser_engine, "SELECT first_name FROM contacts") == "Mia"


def test_bearer_secret_from_instantly_custom_header_is_accepted(
    stack: str, superuser_engine: Engine
) -> None:
    raw = encode(reply())
    response = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=bearer_headers())
    assert response.status_code == 202
    wait_processed(superuser_engine, [response.json()["event_id"]])


def test_bare_hex_signature_is_accepted(stack: str) -> None:
    from tests.payloads import hmac_hex

    raw = encode(reply("bare.hex@example.org"))
    headers = {"Content-Type": "application/json", "X-Instantly-Signature": hmac_hex(raw)}
    response = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=headers)
    assert response.status_code == 202


def test_a_body_sent_in_many_chunks_is_read_whole(stack: str, superuser_engine: Engine) -> None:
    raw = encode(reply("chunked@example.org", reply_text="chunked " * 2_000))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 1000):
            yield raw[start : start + 1000]

    response = httpx.post(
        f"{stack}/webhooks/instantly", content=chunks(), headers=signed_headers(raw)
    )
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]
    wait_processed(superuser_engine, [event_id])
    query = "SELECT payload->>'reply_text' FROM webhook_events WHERE id = :id"
    stored = scalar(superuser_engine, query, id=event_id)
    assert stored == "chunked " * 2_000


def test_upper_case_hex_signature_is_accepted(stack: str) -> None:
    from tests.payloads import hmac_hex

    raw = encode(reply("upper.hex@example.org"))
    signature = f"sha256={hmac_hex(raw).upper()}"
    headers = {"Content-Type": "application/json", "X-Instantly-Signature": signature}
    response = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=headers)
    assert response.status_code == 202


def test_rotated_secret_is_accepted(stack: str) -> None:
    response = post(stack, reply("rotated@example.org"))
    assert response.status_code == 202
    raw = encode(reply("rotated2@example.org"))
    from tests.payloads import INSTANTLY_SECRET_ROTATED

    rotated = httpx.post(
        f"{stack}/webhooks/instantly",
        content=raw,
        headers=signed_headers(raw, secret=INSTANTLY_SECRET_ROTATED),
    )
    assert rotated.status_code == 202


@pytest.mark.parametrize("event_type", ["Hot lead", "Reply_Received"])
def test_an_undocumented_instantly_event_type_on_a_lead_is_a_custom_label_note(
    stack: str, superuser_engine: Engine, reader_token: str, event_type: str
) -> None:
    """Instantly names a custom label's event after the label: a note naming it, no deal."""
    response = post(stack, reply(event_type=event_type))
    assert response.status_code == 202
    event_id = response.json()["event_id"]
    wait_processed(superuser_engine, [event_id])
    shown = httpx.get(
        f"{stack}/events/{event_id}", headers={"Authorization": f"Bearer {reader_token}"}
    ).json()
    assert shown["status"] == "processed"
    assert counts(superuser_engine)["deals"] == 0
    subject = scalar(superuser_engine, "SELECT subject FROM activities")
    assert subject.endswith(f": {event_type.replace('_', ' ')}"), subject


def test_an_undocumented_instantly_event_type_without_a_lead_is_stored_as_ignored(
    stack: str, superuser_engine: Engine, reader_token: str
) -> None:
    response = post(stack, reply(None, event_type="something_new", lead_email=None, email=None))
    assert response.status_code == 202
    event_id = response.json()["event_id"]
    wait_processed(superuser_engine, [event_id])
    shown = httpx.get(
        f"{stack}/events/{event_id}", headers={"Authorization": f"Bearer {reader_token}"}
    ).json()
    assert shown["status"] == "ignored"
    assert counts(superuser_engine)["contacts"] == 0


@pytest.mark.parametrize(
    "event_type", ["campaign_completed", "account_error", "supersearch_enrichment_completed"]
)
def test_instantly_events_about_no_lead_are_stored_only(
    stack: str, superuser_engine: Engine, reader_token: str, event_type: str
) -> None:
    response = post(stack, reply(event_type=event_type))
    assert response.status_code == 202
    event_id = response.json()["event_id"]
    wait_processed(superuser_engine, [event_id])
    shown = httpx.get(
        f"{stack}/events/{event_id}", headers={"Authorization": f"Bearer {reader_token}"}
    ).json()
    assert (shown["status"], shown["result"]["effect"]) == ("processed", "stored")
    assert counts(superuser_engine)["deals"] == 0
    assert counts(superuser_engine)["activities"] == 0


def test_status_of_a_queued_event_is_queued(
    stack: str, redis_client: redis.Redis, reader_token: str
) -> None:
    # An event the worker has not written yet is known only to Redis, by its in-flight record.
    from datetime import UTC, datetime

    from common.envelope import Envelope

    event_id = "00000000-0000-4000-8000-000000000001"
    received_at = datetime.now(UTC).isoformat()
    envelope = Envelope(event_id, "instantly", "reply_received", "k", received_at, {})
    redis_client.hset(queue.INFLIGHT_KEY, event_id, queue.message.build(envelope))
    try:
        shown = httpx.get(
            f"{stack}/events/{event_id}", headers={"Authorization": f"Bearer {reader_token}"}
        )
    finally:
        redis_client.hdel(queue.INFLIGHT_KEY, event_id)
    assert shown.status_code == 200
    assert shown.json() == {
        "event_id": event_id,
        "provider": "instantly",
        "event_type": "reply_received",
        "status": "queued",
        "attempts": 0,
        "received_at": received_at,
        "processed_at": None,
        "result": None,
        "error": None,
    }
    unknown = httpx.get(
        f"{stack}/events/00000000-0000-4000-8000-000000000002",
        headers={"Authorization": f"Bearer {reader_token}"},
    )
    assert unknown.status_code == 404
    assert json.loads(unknown.text) == {"error": "Unknown event"}


def _event_times(engine: Engine, event_id: str) -> tuple[datetime, datetime, datetime, str]:
    """The event's received_at and occurred_at, its activity's occurred_at, and which it used."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT e.received_at, e.occurred_at, a.occurred_at AS activity_at,"
                " e.result ->> 'time_source' AS source"
                " FROM webhook_events e JOIN activities a ON a.event_id = e.id WHERE e.id = :id"
            ),
            {"id": event_id},
        ).one()
    return row.received_at, row.occurred_at, row.activity_at, row.source


def test_an_activity_happens_when_the_sender_says_not_when_it_was_processed(
    stack: str, superuser_engine: Engine
) -> None:
    last_tuesday = datetime(2026, 12, 1, 9, 14, 3, 512000, tzinfo=UTC)
    event_id = post_reply(stack, reply("tuesday@example.org", timestamp="2026-12-01T09:14:03.512Z"))
    wait_processed(superuser_engine, [event_id])
    received, occurred, activity_at, source = _event_times(superuser_engine, event_id)
    assert (occurred, activity_at, source) == (last_tuesday, last_tuesday, "sender")
    assert received > last_tuesday


@pytest.mark.parametrize(
    "timestamp",
    [
        None,
        "",
        "last tuesday",
        "2026-13-45T00:00:00Z",
        "2999-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
    ],
    ids=["missing", "empty", "words", "no-such-date", "far-future", "before-2000"],
)
def test_a_missing_or_implausible_sender_time_falls_back_to_the_receipt(
    stack: str, superuser_engine: Engine, timestamp: str | None
) -> None:
    event_id = post_reply(stack, reply(f"{uuid.uuid4().hex[:8]}@example.org", timestamp=timestamp))
    wait_processed(superuser_engine, [event_id])
    received, occurred, activity_at, source = _event_times(superuser_engine, event_id)
    assert (occurred, activity_at, source) == (received, received, "received")


def test_a_trailing_slash_is_the_same_route_not_a_redirect(
    stack: str, superuser_engine: Engine
) -> None:
    raw = encode(reply("trailing.slash@example.org"))
    answer = httpx.post(
        f"{stack}/webhooks/instantly/", content=raw, headers=signed_headers(raw),
        follow_redirects=False,
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    wait_processed(superuser_engine, [answer.json()["event_id"]])
    again = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    assert again.status_code == 409  # one route: the repeat is a repeat
