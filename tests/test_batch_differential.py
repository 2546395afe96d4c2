"""Set-based batches against one event at a time: random sequences of events over a few leads
(every sender, repeats, out-of-order stages, bounces, invalid ones), applied in random batch
cuts and applied one by one, leave the same CRM rows and the same event results."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from common.envelope import Envelope
from common.senders import SENDERS
from tests.payloads import fixture, reply, smartlead
from worker.errors import PermanentError
from worker.processing import Outcome, process_batch

LEADS = ("ada@alpha.example", "Bob@Beta.example", "cy@alpha.example")
START = datetime(2026, 11, 1, tzinfo=UTC)


def _instantly(event_type: str) -> Callable[[str, int], dict[str, Any]]:
    return lambda lead, n: reply(lead, event_type=event_type, email_id=f"i{n}",
                                 timestamp=(START + timedelta(minutes=n)).isoformat())  # fmt: skip


def _booking(trigger: str) -> Callable[[str, int], dict[str, Any]]:
    def build(lead: str, n: int) -> dict[str, Any]:
        body = fixture("calcom", "booking_created", triggerEvent=trigger)
        body["payload"]["uid"] = f"c{n}"
        body["payload"]["attendees"][0]["email"] = lead
        return body

    return build


def _smartlead(
    event_type: str, category: str | None = None
) -> Callable[[str, int], dict[str, Any]]:
    def build(lead: str, n: int) -> dict[str, Any]:
        body = smartlead(event_type=event_type, stats_id=f"s{n}", to_email=lead)
        if category is not None:
            body["lead_category"] = {"new_name": category}
        return body

    return build


def _calendly(event: str) -> Callable[[str, int], dict[str, Any]]:
    def build(lead: str, n: int) -> dict[str, Any]:
        body = fixture("calendly", "invitee_created", event=event)
        body["payload"]["email"] = lead
        body["payload"]["uri"] = f"https://api.calendly.com/invitees/k{n}"
        return body

    return build


def _no_lead(lead: str, n: int) -> dict[str, Any]:
    return reply(None, lead_email=None, email=None, email_id=f"bad{n}")  # invalid: no lead


# Every type Instantly and Cal.com document, and a custom label; some of the others'.
KINDS: dict[str, tuple[str, Callable[[str, int], dict[str, Any]]]] = {
    **{kind: ("instantly", _instantly(kind)) for kind in SENDERS["instantly"].effects},
    **{kind: ("calcom", _booking(kind)) for kind in SENDERS["calcom"].effects},
    "label": ("instantly", _instantly("Hot lead")),
    "sl_reply": ("smartlead", _smartlead("EMAIL_REPLY")),
    "sl_category": ("smartlead", _smartlead("LEAD_CATEGORY_UPDATED", "Meeting Request")),
    "sl_unsubscribed": ("smartlead", _smartlead("LEAD_UNSUBSCRIBED")),
    "cl_created": ("calendly", _calendly("invitee.created")),
    "cl_canceled": ("calendly", _calendly("invitee.canceled")),
    "invalid": ("instantly", _no_lead),
}


@st.composite
def sequences(draw: st.DrawFn) -> tuple[list[Envelope], list[int]]:
    """Envelopes in queue order, some repeating an earlier one's key, and batch cuts."""
    envelopes: list[Envelope] = []
    for n in range(draw(st.integers(min_value=1, max_value=24))):
        if envelopes and draw(st.integers(0, 9)) == 0:
            again = draw(st.sampled_from(envelopes))  # a redelivery under a new id
            envelopes.append(dataclasses.replace(again, event_id=str(uuid.uuid4())))
            continue
        provider, build = KINDS[draw(st.sampled_from(sorted(KINDS)))]
        payload = build(draw(st.sampled_from(LEADS)), n)
        payload.pop("secret_key", None)  # as the receiver queues it
        sender = SENDERS[provider]
        event_type = sender.event_type(payload)
        assert event_type is not None
        envelopes.append(
            Envelope(
                event_id=str(uuid.uuid4()),
                provider=provider,
                event_type=event_type,
                idempotency_key=f"k{n}",
                received_at=(START + timedelta(minutes=n, seconds=30)).isoformat(),
                payload=payload,
            )
        )
    cuts = draw(st.lists(st.integers(1, 8), min_size=1, max_size=len(envelopes)))
    return envelopes, cuts


def _apply(engine: Engine, batch: Sequence[Envelope]) -> list[Outcome | str]:
    """As the worker does: the batch together, else in halves, a single failure dead."""
    try:
        return list(process_batch(engine, [(envelope, 1) for envelope in batch]))
    except PermanentError as exc:
        if len(batch) == 1:
            return [exc.reason]
    half = len(batch) // 2
    return _apply(engine, batch[:half]) + _apply(engine, batch[half:])


def _snapshot(engine: Engine, envelopes: list[Envelope], outcomes: list[Outcome | str]) -> Any:
    order = {uuid.UUID(envelope.event_id): n for n, envelope in enumerate(envelopes)}
    with engine.connect() as conn:
        emails = dict(conn.execute(text("SELECT id, lower(email) FROM contacts")).all())
        contacts = sorted(
            conn.execute(
                text(
                    "SELECT lower(c.email), c.first_name, c.last_name, co.domain,"
                    " c.do_not_contact, c.source FROM contacts c"
                    " LEFT JOIN companies co ON co.id = c.company_id"
                )
            ).all()
        )
        deals = dict(
            conn.execute(
                text(
                    "SELECT d.id, json_build_object('lead', lower(c.email), 'stage', s.name,"
                    " 'title', d.title, 'source', d.source) FROM deals d"
                    " JOIN contacts c ON c.id = d.contact_id"
                    " JOIN pipeline_stages s ON s.id = d.stage_id"
                )
            ).all()
        )
        activities = conn.execute(
            text(
                "SELECT id, event_id, type, contact_id, deal_id, subject, body, metadata,"
                " occurred_at FROM activities"
            )
        ).all()
        events = conn.execute(
            text("SELECT idempotency_key, status, result, attempts FROM webhook_events")
        ).all()
    by_activity = {row.id: order[row.event_id] for row in activities}
    names: dict[str, object] = {str(k): v for k, v in emails.items()}
    names |= {str(k): ("deal", v["lead"]) for k, v in deals.items()}
    names |= {str(k): ("activity of", v) for k, v in by_activity.items()}

    def _activity(row: Any) -> tuple[Any, ...]:
        deal = deals[row.deal_id]["lead"] if row.deal_id else None
        return (by_activity[row.id], row.type, emails[row.contact_id], deal, row.subject,
                row.body, sorted(row.metadata.items()), row.occurred_at)  # fmt: skip

    def plain(result: dict[str, Any] | None) -> Any:
        return sorted((key, names.get(value, value) if isinstance(value, str) else value)
                      for key, value in (result or {}).items())  # fmt: skip

    return {
        "contacts": contacts,
        "deals": sorted(tuple(sorted(deal.items())) for deal in deals.values()),
        "activities": sorted(_activity(row) for row in activities),
        "events": sorted((row[0], row[1], str(plain(row[2]))) for row in events),
        "outcomes": [
            each if isinstance(each, str) else (each.status, str(plain(each.result)))
            for each in outcomes
        ],
    }


def _empty(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE activities, deals, contacts, companies, webhook_events"
                " RESTART IDENTITY CASCADE"
            )
        )


DIFFERENTIAL = hypothesis.settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.usefixtures("clean_db")
def test_batches_in_any_cut_leave_what_one_at_a_time_leaves(
    app_engine: Engine, superuser_engine: Engine
) -> None:
    @DIFFERENTIAL
    @given(sequences())
    def check(drawn: tuple[list[Envelope], list[int]]) -> None:
        envelopes, cuts = drawn
        _empty(superuser_engine)
        alone = [outcome for envelope in envelopes for outcome in _apply(app_engine, [envelope])]
        expected = _snapshot(superuser_engine, envelopes, alone)
        _empty(superuser_engine)
        together: list[Outcome | str] = []
        start = 0
        for cut in cuts * len(envelopes):
            if start >= len(envelopes):
                break
            together += _apply(app_engine, envelopes[start : start + cut])
            start += cut
        assert _snapshot(superuser_engine, envelopes, together) == expected

    check()
