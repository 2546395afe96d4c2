"""Carrying out an event's effect: each sender's module (common.senders) holds its effects
table and words its notes; `apply_effect` is the one piece of code that carries out any row of
any table."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from common.envelope import Envelope
from common.senders import SENDERS, event_time
from common.senders.fields import Lead, PayloadError
from common.senders.kit import Effect, Note
from db import crm
from worker.errors import ConfigError, InvalidPayload
from worker.leads import upsert_lead

# A high-volume event (sends, opens, clicks) with ENGAGEMENT_ACTIVITIES on: a note each.
ENGAGEMENT_NOTE = Effect(activity="system_note")


def effect_for(
    envelope: Envelope, *, engagement_activities: bool, options: dict[str, Any]
) -> Effect | None:
    """What the event does; None for a type with no effect (stored as `ignored`)."""
    effect = SENDERS[envelope.provider].effect(envelope.event_type, envelope.payload, options)
    if effect is not None and effect.engagement and engagement_activities:
        return ENGAGEMENT_NOTE
    return effect


def handle_event(conn: Connection, envelope: Envelope, effect: Effect) -> dict[str, Any]:
    """The sender's module reads the lead and words the note; the row is carried out here."""
    try:
        lead, note = SENDERS[envelope.provider].parse(envelope.event_type, envelope.payload)
    except PayloadError as exc:
        raise InvalidPayload(str(exc)) from None
    return apply_effect(conn, envelope, lead, effect, note)


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
    done = result(
        envelope.event_type,
        contact_id=contact_id,
        deal_id=deal_id,
        stage=stage,
        activity_id=activity_id,
        do_not_contact=effect.do_not_contact,
    )
    if effect.step is not None:
        # The prototype's keys too, which its clients read.
        done |= {"step": effect.step, "system_activity_id": done["activity_id"]}
    return done


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
