"""What each event type does, as data. The tables are the whole behaviour; `apply_effect` is
the one piece of code that carries any row of them out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from common.envelope import Envelope
from common.providers import event_time
from db import crm
from worker.errors import ConfigError
from worker.leads import Lead, upsert_lead


@dataclass(frozen=True)
class Effect:
    """stage: advance the lead's deal to it (never backwards, never a second deal).
    activity: log an activity of this type. on_deal: attach it to the lead's deal, if any.
    do_not_contact: flag the contact for good. Nothing set: the event is stored, no more."""

    stage: str | None = None
    activity: str | None = None
    on_deal: bool = True
    do_not_contact: bool = False


# Opens, clicks and sends arrive by the thousand: stored as events unless
# ENGAGEMENT_ACTIVITIES asks for a note each.
ENGAGEMENT_TYPES = ("email_sent", "email_opened", "link_clicked", "email_link_clicked")

INSTANTLY_EFFECTS: dict[str, Effect] = {
    # Step E, the prototype's: the deal in 'New' and a system_note of the reply.
    "reply_received": Effect(stage="New", activity="system_note"),
    "lead_interested": Effect(stage="Interested"),
    "lead_meeting_booked": Effect(stage="Meeting Booked"),
    "lead_closed": Effect(stage="Won"),
    "lead_not_interested": Effect(stage="Lost", activity="system_note"),
    "email_bounced": Effect(activity="system_note", on_deal=False, do_not_contact=True),
    "lead_unsubscribed": Effect(activity="system_note", on_deal=False, do_not_contact=True),
    "auto_reply_received": Effect(activity="system_note", on_deal=False),
    "lead_out_of_office": Effect(activity="system_note", on_deal=False),
    **{event_type: Effect() for event_type in ENGAGEMENT_TYPES},
}

CALCOM_EFFECTS: dict[str, Effect] = {
    "BOOKING_CREATED": Effect(stage="Meeting Booked", activity="meeting"),
    # A cancellation is logged on the deal but does not move it back.
    "BOOKING_RESCHEDULED": Effect(activity="meeting"),
    "BOOKING_CANCELLED": Effect(activity="meeting"),
    "MEETING_ENDED": Effect(activity="meeting"),
}


EFFECTS = {"instantly": INSTANTLY_EFFECTS, "calcom": CALCOM_EFFECTS}
STORE_ONLY = Effect()


def effect_for(provider: str, event_type: str, *, engagement_activities: bool) -> Effect | None:
    """What the event does; None for a type with no effect (stored as `ignored`)."""
    if engagement_activities and provider == "instantly" and event_type in ENGAGEMENT_TYPES:
        return Effect(activity="system_note")
    return EFFECTS.get(provider, {}).get(event_type)


@dataclass(frozen=True)
class Note:
    """The activity an effect logs, already worded by the provider's module."""

    subject: str
    body: str | None
    metadata: dict[str, Any]
    deal_title: str


def apply_effect(
    conn: Connection, envelope: Envelope, lead: Lead, effect: Effect, note: Note
) -> dict[str, Any]:
    contact_id, company_id = upsert_lead(conn, lead, source=envelope.provider)
    deal_id: UUID | None = None
    stage: str | None = None
    if effect.stage is not None:
        move = crm.advance_deal(
            conn,
            contact_id=contact_id,
            stage_name=effect.stage,
            title=note.deal_title,
            company_id=company_id,
            source=envelope.provider,
        )
        if move is None:
            raise ConfigError(f"no default pipeline with a stage named '{effect.stage}'")
        deal_id, stage = move.deal_id, move.stage
    elif effect.activity is not None and effect.on_deal:
        deal_id = crm.current_deal(conn, contact_id=contact_id)
    if effect.do_not_contact:
        crm.mark_do_not_contact(conn, contact_id=contact_id)
    activity_id = None
    if effect.activity is not None:
        activity_id = crm.insert_activity(
            conn,
            type=effect.activity,
            contact_id=contact_id,
            deal_id=deal_id,
            subject=note.subject,
            body=note.body,
            metadata={k: v for k, v in note.metadata.items() if v is not None},
            event_id=UUID(envelope.event_id),
            # The same pure function apply_event stores on the event row: the same time.
            occurred_at=event_time(
                envelope.provider, envelope.payload, datetime.fromisoformat(envelope.received_at)
            )[0],
        )
    return result(
        envelope.event_type,
        contact_id=contact_id,
        deal_id=deal_id,
        stage=stage,
        activity_id=activity_id,
        do_not_contact=effect.do_not_contact,
    )


def result(
    effect: str,
    *,
    contact_id: UUID | None = None,
    deal_id: UUID | None = None,
    stage: str | None = None,
    activity_id: UUID | None = None,
    do_not_contact: bool = False,
) -> dict[str, Any]:
    """An event's `result`, with the same keys whatever the event did (None: not done), so a
    client of GET /events/{id} reads every event alike."""
    return {
        "effect": effect,
        "contact_id": str(contact_id) if contact_id else None,
        "deal_id": str(deal_id) if deal_id else None,
        "stage": stage,
        "activity_id": str(activity_id) if activity_id else None,
        "do_not_contact": do_not_contact or None,
    }
