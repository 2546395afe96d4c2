"""Instantly events: the lead, and the note each event's effect (worker.effects) logs.
`reply_received` is Step E: the contact, their deal in 'New' (or wherever it already is,
further on), and a system_note that says who replied to which campaign."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from common.envelope import Envelope
from common.providers import INSTANTLY_CAMPAIGN_FIELDS
from worker.effects import Effect, Note, apply_effect
from worker.leads import Lead, checked_email, int_field, make_lead, text_field

STEP_E = "E:deal_created_and_logged"


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
    campaigns = (text_field(payload, field) for field in INSTANTLY_CAMPAIGN_FIELDS)
    return next((value for value in campaigns if value), None)


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


def _note(event_type: str, lead: Lead, payload: dict[str, Any], metadata: dict[str, Any]) -> Note:
    campaign_name = metadata["campaign_name"]
    deal_title = _deal_title(lead, campaign_name)
    if event_type != "reply_received":
        subject = f"{lead.display_name} <{lead.email}>: {event_type.replace('_', ' ')}"
        return Note(subject, text_field(payload, "reply_text_snippet"), metadata, deal_title)
    # Step E's wording: who replied, to which campaign, with the subject and a snippet.
    reply_subject = text_field(payload, "reply_subject")
    text = text_field(payload, "reply_text")
    snippet = text_field(payload, "reply_text_snippet") or (text[:280] if text else None)
    subject = f"{lead.display_name} <{lead.email}> replied"
    if campaign_name:
        subject += f" to campaign '{campaign_name}'"
    if reply_subject:
        subject += f": {reply_subject}"
    return Note(subject, snippet, metadata, deal_title)


def handle_event(conn: Connection, envelope: Envelope, effect: Effect) -> dict[str, Any]:
    payload = envelope.payload
    lead = parse_lead(payload)
    note = _note(envelope.event_type, lead, payload, _metadata(payload))
    result = apply_effect(conn, envelope, lead, effect, note)
    if envelope.event_type == "reply_received":
        # The prototype's keys too, which its clients read.
        return result | {"step": STEP_E, "system_activity_id": result["activity_id"]}
    return result
