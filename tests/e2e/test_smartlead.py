"""Smartlead end to end: its secret_key in the body (never stored), its new and deprecated field
names and spellings, Step E for a reply, a category moving the deal, bounces and unsubscribes,
repeats and storms."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from common.queue import IDEMPOTENCY_PREFIX, QUEUE_NAME
from tests.e2e.stack import IsolatedStack, scalar, wait_processed
from tests.e2e.test_event_types import deal_stages
from tests.e2e.test_faults import assert_exactly_once
from tests.helpers import wait_for
from tests.payloads import SMARTLEAD_SECRET, SMARTLEAD_SECRET_ROTATED, encode, smartlead

pytestmark = pytest.mark.e2e

LEAD = "henrik.aalto@kestrel-freight.fi"
JSON = {"Content-Type": "application/json"}


def post(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/webhooks/smartlead", content=encode(body), headers=JSON | headers)


def deliver(url: str, engine: Engine, body: dict[str, Any]) -> dict[str, Any]:
    response = post(url, body)
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]
    wait_processed(engine, [event_id])
    row = scalar(
        engine,
        "SELECT json_build_object('status', status, 'event_type', event_type, 'result', result,"
        " 'payload', payload, 'lead_email', lead_email, 'occurred_at', occurred_at)"
        " FROM webhook_events WHERE id = :id",
        id=event_id,
    )
    return dict(row) | {"event_id": event_id}


def activities(engine: Engine) -> list[dict[str, Any]]:
    return list(
        scalar(
            engine,
            "SELECT coalesce(json_agg(json_build_object('type', type, 'subject', subject,"
            " 'body', body, 'deal', deal_id IS NOT NULL, 'occurred_at', occurred_at,"
            " 'metadata', metadata) ORDER BY created_at), '[]') FROM activities",
        )
    )


def test_a_reply_is_step_e_with_the_reply_text_and_its_secret_is_not_kept(
    stack: str, superuser_engine: Engine
) -> None:
    event = deliver(stack, superuser_engine, smartlead())
    assert event["status"] == "processed"
    assert event["result"]["step"] == "E:deal_created_and_logged"
    assert event["result"]["stage"] == "New"
    assert event["lead_email"] == LEAD
    assert event["occurred_at"].startswith("2026-11-27T09:41:12")
    assert "secret_key" not in event["payload"]
    assert SMARTLEAD_SECRET not in json.dumps(event)
    assert deal_stages(superuser_engine, LEAD) == ["New"]
    [note] = activities(superuser_engine)
    assert note["type"] == "system_note"
    assert note["subject"] == (
        "Henrik Aalto <henrik.aalto@kestrel-freight.fi> replied to campaign 'Nordic 3PL Q4':"
        " Re: Cutting dwell time at Vuosaari"
    )
    assert note["body"] == "Sounds useful. Can we talk Thursday?"
    assert note["occurred_at"].startswith("2026-11-27T09:41:12")
    assert note["metadata"]["campaign_id"] == "1184"
    assert note["metadata"]["sequence_number"] == "2"
    company = scalar(superuser_engine, "SELECT domain FROM companies")
    assert company == "kestrel-freight.fi"


def test_the_deprecated_field_names_and_spelling_are_read_alike(
    stack: str, superuser_engine: Engine
) -> None:
    event = deliver(stack, superuser_engine, smartlead("email_replied_legacy"))
    assert event["status"] == "processed"
    assert event["event_type"] == "EMAIL_REPLY"  # EMAIL_REPLIED, as one type
    assert event["lead_email"] == "sanna.virtanen@arctic-cargo.fi"
    assert event["occurred_at"].startswith("2026-11-26T15:02:40")  # time_replied
    [note] = activities(superuser_engine)
    assert note["body"] == "Not right now, maybe in Q2."  # preview_text
    assert note["subject"].startswith("Sanna Virtanen <sanna.virtanen@arctic-cargo.fi> replied")


def test_a_repeat_is_409_even_in_the_other_spelling(stack: str, superuser_engine: Engine) -> None:
    stats_id = str(uuid.uuid4())
    first = post(stack, smartlead(stats_id=stats_id))
    assert first.status_code == 202, first.text
    again = post(stack, smartlead(stats_id=stats_id, event_type="EMAIL_REPLIED"))
    assert again.status_code == 409
    assert again.json() == {"error": "Duplicate event", "event_id": first.json()["event_id"]}
    wait_processed(superuser_engine, [first.json()["event_id"]])
    assert scalar(superuser_engine, "SELECT count(*) FROM webhook_events") == 1


def test_a_category_moves_the_deal_forward_through_the_table(
    stack: str, superuser_engine: Engine
) -> None:
    deliver(stack, superuser_engine, smartlead())
    booked = deliver(stack, superuser_engine, smartlead("lead_category_updated"))
    assert booked["result"]["stage"] == "Meeting Booked"  # Meeting Request → Meeting Booked
    later = smartlead(
        "lead_category_updated",
        lead_category={"old_name": "Meeting Request", "new_name": "Interested"},
        event_timestamp="2026-11-27T11:00:00.000Z",
    )
    deliver(stack, superuser_engine, later)  # Interested: behind Meeting Booked, no move back
    other = smartlead(
        "lead_category_updated",
        lead_category={"old_name": "Interested", "new_name": "Out Of Office"},
        category=None,
        event_timestamp="2026-11-27T12:00:00.000Z",
    )
    result = deliver(stack, superuser_engine, other)["result"]
    assert result["stage"] is None  # not in the table: a note only
    assert deal_stages(superuser_engine, LEAD) == ["Meeting Booked"]
    subjects = [each["subject"] for each in activities(superuser_engine)]
    assert subjects[1:] == [
        f"Henrik Aalto <{LEAD}>: category set to 'Meeting Request'",
        f"Henrik Aalto <{LEAD}>: category set to 'Interested'",
        f"Henrik Aalto <{LEAD}>: category set to 'Out Of Office'",
    ]


def test_the_category_table_is_a_setting(isolated: IsolatedStack, superuser_engine: Engine) -> None:
    _, url = isolated.receiver()
    isolated.worker(SMARTLEAD_CATEGORY_STAGES="Meeting Request=Won")
    result = deliver(url, superuser_engine, smartlead("lead_category_updated"))["result"]
    assert result["stage"] == "Won"


@pytest.mark.parametrize("name", ["email_bounce", "lead_unsubscribed"])
def test_a_bounce_or_unsubscribe_marks_the_contact_do_not_contact(
    stack: str, superuser_engine: Engine, name: str
) -> None:
    event = deliver(stack, superuser_engine, smartlead(name))
    assert event["result"]["do_not_contact"] is True
    assert event["result"]["deal_id"] is None
    flagged = scalar(superuser_engine, "SELECT bool_and(do_not_contact) FROM contacts")
    assert flagged is True


def test_an_open_in_either_spelling_is_stored_only(stack: str, superuser_engine: Engine) -> None:
    event = deliver(stack, superuser_engine, smartlead("email_opened"))
    assert (event["status"], event["event_type"]) == ("processed", "EMAIL_OPEN")
    assert event["result"]["effect"] == "stored"
    assert scalar(superuser_engine, "SELECT count(*) FROM contacts") == 0


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (smartlead(secret="wrong-secret-entirely"), {}, "no configured secret matched"),
        (smartlead(secret=None), {}, "no signature or bearer header (or secret field)"),
        (smartlead(secret=12345), {}, "the signature is malformed"),
        (
            smartlead(secret="wrong-secret-entirely"),
            {"Authorization": f"Bearer {SMARTLEAD_SECRET}"},
            "no configured secret matched",
        ),
        (smartlead(secret=None), {"Authorization": "Bearer nope"}, "no configured secret matched"),
    ],
    ids=["wrong-secret", "no-secret", "secret-not-text", "wrong-secret-good-bearer", "bad-bearer"],
)
def test_a_delivery_without_the_right_secret_gets_401_and_changes_nothing(
    isolated: IsolatedStack, body: dict[str, Any], headers: dict[str, str], reason: str
) -> None:
    receiver, url = isolated.receiver()
    answer = post(url, body, **headers)
    assert answer.status_code == 401
    assert answer.json() == {"error": "Missing or invalid signature"}
    assert isolated.client.llen(QUEUE_NAME) == 0
    assert not isolated.client.keys(f"{IDEMPOTENCY_PREFIX}*")
    line = f"smartlead delivery from 127.0.0.1 refused: {reason}"
    wait_for(lambda: line in receiver.output(), message=f"no log line {line!r}")
    assert "wrong-secret-entirely" not in receiver.output()


def test_a_relays_bearer_header_and_a_rotated_secret_are_accepted(stack: str) -> None:
    relayed = post(
        stack,
        smartlead(secret=None, stats_id=str(uuid.uuid4())),
        Authorization=f"Bearer {SMARTLEAD_SECRET}",
    )
    assert relayed.status_code == 202, relayed.text
    rotated = post(stack, smartlead(secret=SMARTLEAD_SECRET_ROTATED, stats_id=str(uuid.uuid4())))
    assert rotated.status_code == 202, rotated.text


def test_a_storm_of_one_reply_is_applied_once(stack: str, superuser_engine: Engine) -> None:
    body = encode(smartlead(stats_id=str(uuid.uuid4())))

    def send() -> list[int]:
        with httpx.Client(base_url=stack, timeout=30) as client:
            return [
                client.post("/webhooks/smartlead", content=body, headers=JSON).status_code
                for _ in range(200)
            ]

    statuses = send()
    assert statuses.count(202) == 1
    assert statuses.count(409) == 199
    wait_for(
        lambda: scalar(superuser_engine, "SELECT count(*) FROM webhook_events WHERE status"
                       " = 'processed'") == 1,
        message="the reply was not processed",
    )  # fmt: skip
    assert_exactly_once(superuser_engine, 1)
