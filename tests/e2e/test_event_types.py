"""Every mapped event type's effect, Cal.com's signature rules, and the order guarantees:
deals only move forward, one deal per lead, do-not-contact is for good."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.e2e.stack import delivery_keys, scalar, wait_processed
from tests.payloads import CALCOM_SECRET, encode, fixture, hmac_hex, reply, signed_headers

pytestmark = pytest.mark.e2e

LEAD = "maria.keller@nordfracht.de"


def post_instantly(url: str, body: dict[str, Any]) -> str:
    raw = encode(body)
    response = httpx.post(f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    assert response.status_code == 202, response.text
    return str(response.json()["event_id"])


def instantly(url: str, engine: Engine, event_type: str, lead: str = LEAD, **extra: Any) -> str:
    body = reply(lead, event_type=event_type, email_id=f"{event_type}-{random.random()}", **extra)
    event_id = post_instantly(url, body)
    wait_processed(engine, [event_id])
    return event_id


def booking(trigger: str = "BOOKING_CREATED", **payload: Any) -> dict[str, Any]:
    body = fixture("calcom", "booking_created", triggerEvent=trigger)
    body["payload"].update(payload)
    return body


def calcom_headers(raw: bytes, signature: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    headers["X-Cal-Signature-256"] = (
        hmac_hex(raw, CALCOM_SECRET) if signature is None else signature
    )
    return headers


def post_calcom(url: str, body: dict[str, Any], signature: str | None = None) -> httpx.Response:
    raw = encode(body)
    return httpx.post(f"{url}/webhooks/calcom", content=raw, headers=calcom_headers(raw, signature))


def deal_stages(engine: Engine, lead: str = LEAD) -> list[str]:
    stages = scalar(
        engine,
        "SELECT coalesce(json_agg(s.name ORDER BY s.order_index), '[]') FROM deals d"
        " JOIN contacts c ON c.id = d.contact_id JOIN pipeline_stages s ON s.id = d.stage_id"
        " WHERE lower(c.email) = lower(:email)",
        email=lead,
    )
    return list(stages)


def activity_types(engine: Engine) -> list[str]:
    return list(
        scalar(engine, "SELECT coalesce(json_agg(type ORDER BY created_at), '[]') FROM activities")
    )


def test_default_pipeline_has_the_five_stages_in_order(
    stack: str, superuser_engine: Engine
) -> None:
    stages = scalar(
        superuser_engine,
        "SELECT json_agg(s.name ORDER BY s.order_index) FROM pipeline_stages s"
        " JOIN pipelines p ON p.id = s.pipeline_id WHERE p.is_default",
    )
    assert stages == ["New", "Interested", "Meeting Booked", "Won", "Lost"]


@pytest.mark.parametrize(
    ("event_type", "stage"),
    [
        ("lead_interested", "Interested"),
        ("lead_meeting_booked", "Meeting Booked"),
        ("lead_closed", "Won"),
        ("lead_not_interested", "Lost"),
    ],
)
def test_lead_events_advance_the_deal(
    stack: str, superuser_engine: Engine, event_type: str, stage: str
) -> None:
    instantly(stack, superuser_engine, "reply_received")
    instantly(stack, superuser_engine, event_type)
    assert deal_stages(superuser_engine) == [stage]
    expected_activities = ["system_note", "system_note"] if stage == "Lost" else ["system_note"]
    assert activity_types(superuser_engine) == expected_activities


@pytest.mark.parametrize("event_type", ["email_bounced", "lead_unsubscribed"])
def test_bounce_and_unsubscribe_mark_do_not_contact_with_an_activity(
    stack: str, superuser_engine: Engine, event_type: str
) -> None:
    instantly(stack, superuser_engine, event_type)
    assert scalar(superuser_engine, "SELECT do_not_contact FROM contacts") is True
    assert activity_types(superuser_engine) == ["system_note"]
    assert deal_stages(superuser_engine) == []


@pytest.mark.parametrize("event_type", ["auto_reply_received", "lead_out_of_office"])
def test_auto_replies_log_an_activity_and_make_no_deal(
    stack: str, superuser_engine: Engine, event_type: str
) -> None:
    instantly(stack, superuser_engine, event_type)
    assert activity_types(superuser_engine) == ["system_note"]
    assert deal_stages(superuser_engine) == []
    assert scalar(superuser_engine, "SELECT deal_id FROM activities") is None


@pytest.mark.parametrize(
    "event_type", ["email_sent", "email_opened", "link_clicked", "email_link_clicked"]
)
def test_engagement_events_are_stored_as_events_only(
    stack: str, superuser_engine: Engine, event_type: str
) -> None:
    event_id = instantly(stack, superuser_engine, event_type)
    assert scalar(
        superuser_engine, "SELECT status FROM webhook_events WHERE id = :i", i=event_id
    ) == ("processed")
    assert scalar(superuser_engine, "SELECT count(*) FROM contacts") == 0
    assert activity_types(superuser_engine) == []


def test_out_of_order_meeting_booked_then_reply_ends_in_meeting_booked(
    stack: str, superuser_engine: Engine
) -> None:
    instantly(stack, superuser_engine, "lead_meeting_booked")
    instantly(stack, superuser_engine, "reply_received")
    assert deal_stages(superuser_engine) == ["Meeting Booked"]
    # The late reply is still logged, on the existing deal.
    assert scalar(superuser_engine, "SELECT count(DISTINCT deal_id) FROM activities") == 1


def test_won_deal_is_not_moved_by_a_later_event(stack: str, superuser_engine: Engine) -> None:
    instantly(stack, superuser_engine, "lead_closed")
    instantly(stack, superuser_engine, "lead_not_interested")
    assert deal_stages(superuser_engine) == ["Won"]


def test_bounce_then_reply_keeps_the_contact_do_not_contact(
    stack: str, superuser_engine: Engine
) -> None:
    instantly(stack, superuser_engine, "email_bounced")
    instantly(stack, superuser_engine, "reply_received")
    assert scalar(superuser_engine, "SELECT do_not_contact FROM contacts") is True
    assert deal_stages(superuser_engine) == ["New"]


def test_calcom_booking_created_books_the_meeting(stack: str, superuser_engine: Engine) -> None:
    instantly(stack, superuser_engine, "reply_received")
    response = post_calcom(stack, booking())
    assert response.status_code == 202
    wait_processed(superuser_engine, [response.json()["event_id"]])
    assert deal_stages(superuser_engine) == ["Meeting Booked"]
    meeting = scalar(
        superuser_engine,
        "SELECT json_build_object('subject', subject, 'meta', metadata, 'deal', deal_id)"
        " FROM activities WHERE type = 'meeting'",
    )
    assert meeting["meta"]["start_time"] == "2026-11-25T14:00:00Z"
    assert meeting["meta"]["end_time"] == "2026-11-25T14:30:00Z"
    assert meeting["meta"]["organizer"] == "Jonas Brandt"
    assert meeting["meta"]["video_url"] == "https://app.cal.com/video/k3Fq9ZtR2mWxPb7LcN1dVe"
    assert "Intro call between Jonas Brandt and Maria Keller" in meeting["subject"]
    assert meeting["deal"] is not None


@pytest.mark.parametrize("trigger", ["BOOKING_RESCHEDULED", "BOOKING_CANCELLED", "MEETING_ENDED"])
def test_calcom_followups_log_on_the_same_deal_without_moving_it(
    stack: str, superuser_engine: Engine, trigger: str
) -> None:
    created = post_calcom(stack, booking())
    followup = post_calcom(stack, booking(trigger))
    assert (created.status_code, followup.status_code) == (202, 202)
    wait_processed(superuser_engine, [created.json()["event_id"], followup.json()["event_id"]])
    assert deal_stages(superuser_engine) == ["Meeting Booked"]
    assert activity_types(superuser_engine) == ["meeting", "meeting"]
    assert scalar(superuser_engine, "SELECT count(DISTINCT deal_id) FROM activities") == 1


def test_calcom_booking_for_a_new_person_creates_the_contact(
    stack: str, superuser_engine: Engine
) -> None:
    response = post_calcom(stack, booking(uid="new-person"))
    wait_processed(superuser_engine, [response.json()["event_id"]])
    assert scalar(superuser_engine, "SELECT email FROM contacts") == LEAD
    assert deal_stages(superuser_engine) == ["Meeting Booked"]


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        ("0" * 64, "bad"),
        ("", "missing"),
        ("no-secret-provided", "no-secret-provided"),
    ],
    ids=["bad", "missing", "no-secret-provided"],
)
def test_calcom_signature_is_required(
    stack: str, redis_client: Any, signature: str, why: str
) -> None:
    raw = encode(booking())
    headers = {"Content-Type": "application/json"}
    if signature:
        headers["X-Cal-Signature-256"] = signature
    response = httpx.post(f"{stack}/webhooks/calcom", content=raw, headers=headers)
    assert response.status_code == 401, why
    assert delivery_keys(redis_client) == set()


def test_calcom_duplicate_delivery_is_409(stack: str) -> None:
    first = post_calcom(stack, booking())
    again = post_calcom(stack, booking())
    assert (first.status_code, again.status_code) == (202, 409)
    assert again.json()["event_id"] == first.json()["event_id"]


def test_calcom_unknown_trigger_is_ignored(stack: str, superuser_engine: Engine) -> None:
    response = post_calcom(stack, booking("FORM_SUBMITTED"))
    wait_processed(superuser_engine, [response.json()["event_id"]])
    assert scalar(superuser_engine, "SELECT status FROM webhook_events") == "ignored"


STAGE_EVENTS = {"reply_received": 0, "lead_interested": 1, "lead_meeting_booked": 2}
NOTE_EVENTS = ("auto_reply_received", "email_opened")
STAGE_NAMES = ["New", "Interested", "Meeting Booked"]


def test_a_thousand_mixed_events_for_a_hundred_leads_end_with_one_deal_each_in_the_right_stage(
    stack: str, superuser_engine: Engine
) -> None:
    rng = random.Random(8)  # a fixed seed: the same mix every run
    bodies: list[dict[str, Any]] = []
    expected: dict[str, int] = {}
    for n in range(1000):
        lead = f"mixed{n % 100}@mixed{n % 100}.example.com"
        event_type = rng.choice([*STAGE_EVENTS, *NOTE_EVENTS])
        if event_type in STAGE_EVENTS:
            expected[lead] = max(expected.get(lead, -1), STAGE_EVENTS[event_type])
        bodies.append(reply(lead, event_type=event_type, email_id=f"mixed-{n}"))
    rng.shuffle(bodies)

    async def send() -> list[str]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=stack, timeout=60, limits=limits) as client:
            raws = [encode(body) for body in bodies]
            responses = await asyncio.gather(
                *(
                    client.post("/webhooks/instantly", content=r, headers=signed_headers(r))
                    for r in raws
                )
            )
        assert [r.status_code for r in responses] == [202] * len(raws)
        return [r.json()["event_id"] for r in responses]

    wait_processed(superuser_engine, asyncio.run(send()), timeout=180)
    rows = scalar(
        superuser_engine,
        "SELECT json_object_agg(c.email, stages) FROM ("
        " SELECT d.contact_id, json_agg(s.name) AS stages FROM deals d"
        " JOIN pipeline_stages s ON s.id = d.stage_id GROUP BY d.contact_id) per_contact"
        " JOIN contacts c ON c.id = per_contact.contact_id",
    )
    assert {lead: stages for lead, stages in rows.items()} == {
        lead: [STAGE_NAMES[index]] for lead, index in expected.items()
    }
    assert scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 0


def test_calcom_deliveries_without_a_uid_do_not_share_a_key(
    stack: str, superuser_engine: Engine
) -> None:
    # With nothing but the trigger to identify them, two different bodies must not collide.
    first = fixture("calcom", "booking_created", triggerEvent="MEETING_ENDED")
    second = fixture("calcom", "booking_created", triggerEvent="MEETING_ENDED")
    del first["payload"]["uid"], second["payload"]["uid"]
    second["payload"]["startTime"] = "2026-12-01T09:00:00Z"
    responses = [post_calcom(stack, body) for body in (first, second, first)]
    assert [r.status_code for r in responses] == [202, 202, 409]
    wait_processed(superuser_engine, [r.json()["event_id"] for r in responses[:2]])


def test_a_calcom_delivery_without_a_uid_resent_with_other_whitespace_is_409(stack: str) -> None:
    # The repeat is the same booking, serialised with other whitespace and key order.
    body = fixture("calcom", "booking_created")
    del body["payload"]["uid"]
    compact = json.dumps(body, separators=(",", ":")).encode()
    spaced = json.dumps(dict(reversed(body.items())), indent=2).encode()
    answers = [
        httpx.post(f"{stack}/webhooks/calcom", content=raw, headers=calcom_headers(raw))
        for raw in (compact, spaced)
    ]
    assert [answer.status_code for answer in answers] == [202, 409]
    assert answers[1].json()["event_id"] == answers[0].json()["event_id"]


def test_every_event_result_has_the_same_keys(stack: str, superuser_engine: Engine) -> None:
    keys = {"effect", "contact_id", "deal_id", "stage", "activity_id"}
    events = {
        "reply_received": instantly(stack, superuser_engine, "reply_received"),
        "lead_interested": instantly(stack, superuser_engine, "lead_interested"),
        "email_bounced": instantly(stack, superuser_engine, "email_bounced", "b@bounce.example"),
        "email_sent": instantly(stack, superuser_engine, "email_sent"),
        "campaign_completed": instantly(stack, superuser_engine, "campaign_completed"),
    }
    response = post_calcom(stack, booking(uid=f"keys-{random.random()}"))
    assert response.status_code == 202
    events["BOOKING_CREATED"] = response.json()["event_id"]
    wait_processed(superuser_engine, [events["BOOKING_CREATED"]])
    results = {
        name: scalar(
            superuser_engine, "SELECT result FROM webhook_events WHERE id = :i", i=event_id
        )
        for name, event_id in events.items()
    }
    for name, result in results.items():
        assert keys <= set(result), (name, result)
    assert results["reply_received"]["stage"] == "New"
    assert results["reply_received"]["step"] == "E:deal_created_and_logged"
    assert (
        results["reply_received"]["system_activity_id"] == results["reply_received"]["activity_id"]
    )
    assert results["lead_interested"]["stage"] == "Interested"
    assert results["email_bounced"]["do_not_contact"] is True
    assert results["email_sent"]["effect"] == "stored"
    # About a campaign, not a lead: stored, as Instantly's effects table says.
    assert results["campaign_completed"]["effect"] == "stored"
    assert results["BOOKING_CREATED"]["stage"] == "Meeting Booked"
    assert "step" not in results["lead_interested"]
