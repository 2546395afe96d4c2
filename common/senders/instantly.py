"""Instantly, cold-email outreach. `reply_received` is Step E: the contact, their deal in 'New'
(or wherever it already is, further on), and a system_note that says who replied to which
campaign.

Instantly cannot sign: its webhook settings only add fixed custom headers. So a delivery
carries an HMAC-SHA256 of the body in `X-Instantly-Signature` (from a relay that can sign) or
the shared secret as a bearer token. Lead custom variables arrive as top-level keys, and a lead
variable named `campaign_id` overwrites Instantly's own: `campaign` always holds the real id."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from common.senders.fields import (
    Lead,
    checked_email,
    first_text,
    int_field,
    make_lead,
    text_field,
)
from common.senders.kit import (
    NO_CREDENTIALS,
    NO_SECRET_CONFIGURED,
    REPEATED_HEADER,
    Effect,
    HeaderLookup,
    Note,
    Options,
    Sender,
    check_bearer,
    check_hmac_hex,
    hmac_hex,
    text,
)

NAME = "instantly"
SIGNATURE_HEADER = "X-Instantly-Signature"
STEP_E = "E:deal_created_and_logged"
REPLY = "reply_received"
CAMPAIGN_FIELDS = ("campaign", "campaign_id")

_NOTE = "system_note"
_ENGAGEMENT = Effect(
    engagement=True,
    why="sent by the thousand: stored; ENGAGEMENT_ACTIVITIES=true makes each a note",
)
EFFECTS: dict[str, Effect] = {
    REPLY: Effect(
        stage="New", activity=_NOTE, step=STEP_E, why="Step E: a reply is a lead to work"
    ),
    "lead_interested": Effect(stage="Interested", why="the reply was labelled interested"),
    "lead_meeting_booked": Effect(stage="Meeting Booked", why="a meeting is booked"),
    "lead_closed": Effect(stage="Won", why="the deal was closed"),
    "lead_not_interested": Effect(
        stage="Lost", activity=_NOTE, why="a no: the deal is lost, and the note says so"
    ),
    "lead_neutral": Effect(activity=_NOTE, why="a reply labelled neutral: worth a note, no move"),
    "lead_meeting_completed": Effect(
        activity=_NOTE, why="the meeting took place: a note on the deal; winning is a person's call"
    ),
    "lead_no_show": Effect(
        activity=_NOTE, why="the lead missed the meeting: a note on the deal, no move back"
    ),
    "lead_wrong_person": Effect(
        activity=_NOTE,
        on_deal=False,
        why="the address reaches someone else: a note; Instantly takes them off the campaign "
        "itself, and a contact-wide do-not-contact would be too much",
    ),
    "email_bounced": Effect(
        activity=_NOTE, on_deal=False, do_not_contact=True, why="the address takes no mail"
    ),
    "lead_unsubscribed": Effect(
        activity=_NOTE, on_deal=False, do_not_contact=True, why="the lead asked to hear no more"
    ),
    "auto_reply_received": Effect(
        activity=_NOTE, on_deal=False, why="an autoresponder, not the person: a note, no move"
    ),
    "lead_out_of_office": Effect(
        activity=_NOTE, on_deal=False, why="away for now: a note, no move"
    ),
    "email_sent": _ENGAGEMENT,
    "email_opened": _ENGAGEMENT,
    "link_clicked": _ENGAGEMENT,
    "email_link_clicked": _ENGAGEMENT,  # Instantly's docs spell the click event both ways
    "campaign_completed": Effect(why="about a campaign, not a lead: stored"),
    "account_error": Effect(why="about a sending account, not a lead: stored"),
    "supersearch_enrichment_completed": Effect(why="enrichment data, not a lead's act: stored"),
}
# A custom label an Instantly user made arrives with the label's name as its event type.
CUSTOM_LABEL = Effect(activity=_NOTE, why="a custom label was set: a note naming it, no move")


def _choose_effect(event_type: str, payload: dict[str, Any], options: Options) -> Effect | None:
    if event_type in EFFECTS:
        return EFFECTS[event_type]
    # Only a label on a lead is one; anything else undocumented is stored as ignored.
    has_lead = any(isinstance(payload.get(field), str) for field in ("lead_email", "email"))
    return CUSTOM_LABEL if has_lead else None


def _authenticate(
    headers: HeaderLookup, body: bytes, secrets: Sequence[str], options: Options
) -> str | None:
    """A present but wrong signature fails even when a bearer token is also sent."""
    signatures = headers.getlist(SIGNATURE_HEADER)
    authorizations = headers.getlist("authorization")
    if len(signatures) > 1 or (not signatures and len(authorizations) > 1):
        return REPEATED_HEADER
    if not signatures and not authorizations:
        return NO_CREDENTIALS
    if not secrets:
        return NO_SECRET_CONFIGURED
    if signatures:
        return check_hmac_hex(signatures[0], body, secrets)
    return check_bearer(authorizations[0], secrets)


def _campaign(payload: dict[str, Any]) -> str:
    return next((value for field in CAMPAIGN_FIELDS if (value := text(payload.get(field)))), "")


def _fingerprint(payload: dict[str, Any]) -> list[str]:
    email = text(payload.get("lead_email")) or text(payload.get("email"))
    return [
        text(payload.get("event_type")),
        text(payload.get("workspace")),
        _campaign(payload),
        email.lower(),
        text(payload.get("timestamp")),
        text(payload.get("email_id")),
    ]


def parse_lead(payload: dict[str, Any]) -> Lead:
    email = text_field(payload, "lead_email") or text_field(payload, "email")
    return make_lead(
        checked_email(email, "neither 'lead_email' nor 'email' is set"),
        first_name=first_text(payload, "firstName", "first_name"),
        last_name=first_text(payload, "lastName", "last_name"),
        company_name=text_field(payload, "companyName"),
        website=text_field(payload, "website"),
    )


def _metadata(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "unibox_url": text_field(payload, "unibox_url"),
        "campaign_id": first_text(payload, *CAMPAIGN_FIELDS),
        "campaign_name": text_field(payload, "campaign_name"),
        "workspace": text_field(payload, "workspace"),
        "email_account": text_field(payload, "email_account"),
        "step": int_field(payload, "step"),
        "variant": int_field(payload, "variant"),
        "email_id": text_field(payload, "email_id"),
        "timestamp": text_field(payload, "timestamp"),
    }


def _parse(event_type: str, payload: dict[str, Any]) -> tuple[Lead, Note]:
    lead = parse_lead(payload)
    metadata = _metadata(payload)
    campaign_name = metadata["campaign_name"]
    who = lead.display_name
    deal_title = f"{who} — {campaign_name}" if campaign_name else who
    if event_type != REPLY:
        subject = f"{who} <{lead.email}>: {event_type.replace('_', ' ')}"
        return lead, Note(subject, text_field(payload, "reply_text_snippet"), metadata, deal_title)
    # Step E's wording: who replied, to which campaign, with the subject and a snippet.
    reply_subject = text_field(payload, "reply_subject")
    reply_text = text_field(payload, "reply_text")
    snippet = text_field(payload, "reply_text_snippet") or (
        reply_text[:280] if reply_text else None
    )
    subject = f"{who} <{lead.email}> replied"
    if campaign_name:
        subject += f" to campaign '{campaign_name}'"
    if reply_subject:
        subject += f": {reply_subject}"
    return lead, Note(subject, snippet, metadata, deal_title)


def _smoke_event(run_id: str, email: str) -> dict[str, Any]:
    return {
        "event_type": REPLY,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workspace": "crm-smoke",
        "campaign_id": "crm-smoke",
        "campaign_name": "crm-smoke post-deploy check",
        "lead_email": email,
        "email": email,
        "email_id": run_id,
        "reply_subject": "Re: crm-smoke",
        "reply_text_snippet": "Synthetic reply sent by crm-smoke.",
        "firstName": "Smoke",
        "lastName": "Test",
    }


def _deliver(payload: dict[str, Any], secret: str, now: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: f"sha256={hmac_hex(body, secret)}",
    }
    return body, headers


SENDER = Sender(
    name=NAME,
    title="Instantly",
    authenticate=_authenticate,
    secret_setting="HMAC_SHARED_SECRET_INSTANTLY",
    dev_secret="dev-instantly-secret-change-me",
    required_in_production=True,
    primary=True,
    event_type_field="event_type",
    effects=EFFECTS,
    choose_effect=_choose_effect,
    other_events={"any other type, on a lead (a custom label)": CUSTOM_LABEL},
    lead_email_paths=(("lead_email",), ("email",)),
    event_time_paths=(("timestamp",),),
    fingerprint=_fingerprint,
    parse=_parse,
    smoke_event=_smoke_event,
    deliver=_deliver,
    setup="Settings → Integrations → Webhooks: the URL and a custom header "
    "`Authorization: Bearer <secret>` (Instantly cannot sign; a relay that can may send "
    f"`{SIGNATURE_HEADER}: sha256=<hex HMAC-SHA256 of the body>`)",
    security_schemes={
        "instantlySignature": (SIGNATURE_HEADER, "sha256=<hex> or <hex>"),
        "instantlyBearer": ("Authorization", "Bearer <HMAC_SHARED_SECRET_INSTANTLY>"),
    },
    auth_doc=f"`{SIGNATURE_HEADER}` (`sha256=<hex>` or bare hex, HMAC-SHA256 of the raw body) "
    "or `Authorization: Bearer <secret>`; a present but wrong signature fails even beside a "
    "good bearer secret",
)
