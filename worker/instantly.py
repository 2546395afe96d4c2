"""Instantly events. `reply_received` is Step E: the contact, their deal in 'New' (or wherever
it already is, further on), and a system_note. The other types follow worker.effects."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from common.envelope import Envelope
from worker.effects import Effect, Note, apply_effect
from worker.leads import Lead, checked_email, int_field, make_lead, text_field

STEP_E = "E:deal_created_and_logged"
STEP_E_EFFECT = Effect(stage="New", activity="system_note")


def parse_lead(payload: dict[str, Any]) -> Lead:
    email = text_field(payload, "lead_email") or text_field(payload, "email")
    return make_lead(
        checked_email(email, "neither 'lead_email' nor 'email' is set"),
        first_name=text_field(payload, "firstName") or text_field(payload, "first_name"),
        last_name=text_field(payload, "lastName") or text_field(payload, "last_name"),
        company_name=text_field(payload, "companyName"),
        website=text_field(payload, "website"),
    )


def _campaign(payload: dict[str, Any]) -> str | None:
    # A lead variable named `campaign_id` shadows Instantly's own id; `campaign` keeps the real one.
    return text_field(payload, "campaign") or text_field(payload, "campaign_id")


def _metadata(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "unibox_url": text_field(payload, "unibox_url"),
        "campaign_id": _campaign(payload),
        "campaign_name": text_field(payload, "campaign_name"),
        "workspace": text_field(payload, "workspace"),
        "email_account": text_field(payload, "email_account"),
        "step": int_field(payload, "step"),
        "variant": int_field(payload, "variant"),
        "email_id": text_field(payload, "email_id"),
        "timestamp": text_field(payload, "timestamp"),
    }


def _deal_title(lead: Lead, campaign_name: str | None) -> str:
    who = lead.display_name
    return f"{who} — {campaign_name}" if campaign_name else who


def handle_reply(conn: Connection, envelope: Envelope) -> dict[str, Any]:
    payload = envelope.payload
    lead = parse_lead(payload)
    metadata = _metadata(payload)
    campaign_name = metadata["campaign_name"]
    subject = text_field(payload, "reply_subject")
    text = text_field(payload, "reply_text")
    snippet = text_field(payload, "reply_text_snippet") or (text[:280] if text else None)
    note = f"{lead.display_name} <{lead.email}> replied"
    if campaign_name:
        note += f" to campaign '{campaign_name}'"
    result = apply_effect(
        conn,
        envelope,
        lead,
        STEP_E_EFFECT,
        Note(
            subject=f"{note}: {subject}" if subject else note,
            body=snippet,
            metadata=metadata,
            deal_title=_deal_title(lead, campaign_name),
        ),
    )
    return {
        "step": STEP_E,
        "deal_id": result["deal_id"],
        "system_activity_id": result["activity_id"],
    }


def handle_event(conn: Connection, envelope: Envelope, effect: Effect) -> dict[str, Any]:
    payload = envelope.payload
    lead = parse_lead(payload)
    metadata = _metadata(payload)
    what = envelope.event_type.replace("_", " ")
    return apply_effect(
        conn,
        envelope,
        lead,
        effect,
        Note(
            subject=f"{lead.display_name} <{lead.email}>: {what}",
            body=text_field(payload, "reply_text_snippet"),
            metadata=metadata,
            deal_title=_deal_title(lead, metadata["campaign_name"]),
        ),
    )
