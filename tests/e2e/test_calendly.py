"""Calendly end to end: its timestamped signature and tolerance, a booking moving the deal, a
cancellation and a no-show logged without moving it back, a reschedule recorded once."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from common.queue import IDEMPOTENCY_PREFIX, QUEUE_NAME
from tests.e2e.stack import IsolatedStack, scalar, wait_processed
from tests.e2e.test_event_types import deal_stages
from tests.e2e.test_faults import assert_exactly_once
from tests.e2e.test_smartlead import activities
from tests.helpers import wait_for
from tests.payloads import CALENDLY_SECRET, calendly_headers, encode, fixture

pytestmark = pytest.mark.e2e

LEAD = "henrik.aalto@kestrel-freight.fi"


def post(url: str, body: dict[str, Any], **signing: Any) -> httpx.Response:
    raw = encode(body)
    return httpx.post(
        f"{url}/webhooks/calendly", content=raw, headers=calendly_headers(raw, **signing)
    )


def deliver(url: str, engine: Engine, body: dict[str, Any]) -> dict[str, Any]:
    response = post(url, body)
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]
    wait_processed(engine, [event_id])
    row = scalar(
        engine,
        "SELECT json_build_object('status', status, 'result', result, 'lead_email', lead_email,"
        " 'occurred_at', occurred_at) FROM webhook_events WHERE id = :id",
        id=event_id,
    )
    return dict(row)


def test_a_booking_moves_the_deal_to_meeting_booked_with_a_meeting(
    stack: str, superuser_engine: Engine
) -> None:
    event = deliver(stack, superuser_engine, fixture("calendly", "invitee_created"))
    assert event["status"] == "processed"
    assert event["result"]["stage"] == "Meeting Booked"
    assert event["lead_email"] == LEAD
    assert event["occurred_at"].startswith("2026-11-27T11:20:05")
    assert deal_stages(superuser_engine, LEAD) == ["Meeting Booked"]
    [meeting] = activities(superuser_engine)
    assert meeting["type"] == "meeting"
    assert meeting["subject"] == "Meeting booked: 30 Minute Discovery (2026-12-03T13:00:00.000000Z)"
    assert meeting["metadata"]["organizer"] == "Liisa Korhonen"
    assert meeting["metadata"]["video_url"].startswith("https://calendar.google.com/")
    assert meeting["deal"] is True


def test_a_cancellation_and_a_no_show_are_logged_without_moving_back(
    stack: str, superuser_engine: Engine
) -> None:
    deliver(stack, superuser_engine, fixture("calendly", "invitee_created"))
    deliver(stack, superuser_engine, fixture("calendly", "invitee_canceled"))
    deliver(stack, superuser_engine, fixture("calendly", "invitee_no_show_created"))
    assert deal_stages(superuser_engine, LEAD) == ["Meeting Booked"]
    cancelled, no_show = activities(superuser_engine)[1:]
    assert cancelled["subject"].startswith("Meeting cancelled: 30 Minute Discovery")
    assert cancelled["body"] == "Travelling that week"
    assert no_show["subject"].startswith("Meeting missed (no-show): 30 Minute Discovery")
    assert cancelled["deal"] and no_show["deal"]


def test_a_reschedule_is_recorded_once_as_a_reschedule(
    stack: str, superuser_engine: Engine
) -> None:
    deliver(stack, superuser_engine, fixture("calendly", "invitee_created"))
    half = deliver(stack, superuser_engine, fixture("calendly", "invitee_canceled_rescheduled"))
    assert (half["status"], half["result"]["effect"]) == ("processed", "stored")
    deliver(stack, superuser_engine, fixture("calendly", "invitee_created_rescheduled"))
    subjects = [each["subject"] for each in activities(superuser_engine)]
    assert subjects == [
        "Meeting booked: 30 Minute Discovery (2026-12-03T13:00:00.000000Z)",
        "Meeting rescheduled: 30 Minute Discovery (2026-12-04T13:00:00.000000Z)",
    ]
    assert deal_stages(superuser_engine, LEAD) == ["Meeting Booked"]


def test_a_routing_form_is_stored_as_ignored(stack: str, superuser_engine: Engine) -> None:
    uri = f"https://api.calendly.com/routing_form_submissions/{uuid.uuid4()}"
    body = {"event": "routing_form_submission.created", "payload": {"uri": uri}}
    assert deliver(stack, superuser_engine, body)["status"] == "ignored"
    assert scalar(superuser_engine, "SELECT count(*) FROM contacts") == 0


def test_a_repeat_is_409(stack: str) -> None:
    body = fixture("calendly", "invitee_created")
    body["payload"]["uri"] = f"https://api.calendly.com/scheduled_events/X/invitees/{uuid.uuid4()}"
    first = post(stack, body)
    assert first.status_code == 202, first.text
    # Signed again a second later, as Calendly's retry is: still the same delivery.
    again = post(stack, body, at=int(time.time()) + 1)
    assert again.status_code == 409
    assert again.json()["event_id"] == first.json()["event_id"]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (
            {"at": int(time.time()) - 3600},
            "the signature's timestamp is outside the allowed tolerance",
        ),
        (
            {"at": int(time.time()) + 3600},
            "the signature's timestamp is outside the allowed tolerance",
        ),
        ({"secret": "another-signing-key"}, "no configured secret matched"),
        ({"raw": "v1=" + "a" * 64}, "the signature is malformed"),
        ({"raw": "t=123,v1=zz"}, "the signature is malformed"),
        ({"raw": "t=\u00b2,v1=" + "a" * 64}, "the signature is malformed"),
        (
            {"raw": "t=" + "9" * 5000 + ",v1=" + "a" * 64},
            "the signature is malformed",
        ),
        ({"raw": None}, "no signature or bearer header (or secret field)"),
        ({"twice": True}, "the signature or Authorization header was sent more than once"),
    ],
    ids=[
        "an-hour-old",
        "an-hour-ahead",
        "wrong-key",
        "no-time",
        "not-hex",
        "superscript-time",
        "5000-digit-time",
        "none",
        "repeated",
    ],
)
def test_a_delivery_without_a_good_recent_signature_gets_401_and_changes_nothing(
    isolated: IsolatedStack, headers: dict[str, Any], reason: str
) -> None:
    receiver, url = isolated.receiver()
    raw = encode(fixture("calendly", "invitee_created"))
    signed = calendly_headers(
        raw, secret=headers.get("secret", CALENDLY_SECRET), at=headers.get("at")
    )
    sent: list[tuple[str, str]] = [("content-type", "application/json")]
    if "raw" in headers:
        sent += [] if headers["raw"] is None else [("calendly-webhook-signature", headers["raw"])]
    else:
        copies = 2 if headers.get("twice") else 1
        sent += [("calendly-webhook-signature", signed["Calendly-Webhook-Signature"])] * copies
    # As bytes: a header may carry any octet (Starlette reads them as latin-1).
    octets = [(name.encode(), value.encode("latin-1")) for name, value in sent]
    answer = httpx.post(f"{url}/webhooks/calendly", content=raw, headers=octets)
    assert answer.status_code == 401
    assert isolated.client.llen(QUEUE_NAME) == 0
    assert not isolated.client.keys(f"{IDEMPOTENCY_PREFIX}*")
    line = f"calendly delivery from 127.0.0.1 refused: {reason}"
    wait_for(lambda: line in receiver.output(), message=f"no log line {line!r}")


def test_the_tolerance_is_a_setting(isolated: IsolatedStack) -> None:
    _, url = isolated.receiver(CALENDLY_SIGNATURE_TOLERANCE_SECONDS="30")
    body = fixture("calendly", "invitee_created")
    assert post(url, body, at=int(time.time()) - 60).status_code == 401
    assert post(url, body, at=int(time.time()) - 10).status_code == 202


def test_a_storm_of_one_booking_is_applied_once(stack: str, superuser_engine: Engine) -> None:
    raw = encode(fixture("calendly", "invitee_created"))
    headers = calendly_headers(raw)

    async def storm() -> list[int]:
        async with httpx.AsyncClient(base_url=stack, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/webhooks/calendly", content=raw, headers=headers)
                    for _ in range(300)
                )
            )
        return [answer.status_code for answer in answers]

    statuses = asyncio.run(storm())
    assert (statuses.count(202), statuses.count(409)) == (1, 299)
    wait_for(
        lambda: scalar(superuser_engine, "SELECT count(*) FROM webhook_events WHERE status"
                       " = 'processed'") == 1,
        message="the booking was not processed",
    )  # fmt: skip
    assert_exactly_once(superuser_engine, 1)
