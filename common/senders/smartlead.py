"""Smartlead, cold-email outreach. `EMAIL_REPLY` is Step E, as Instantly's reply is: the
contact, their deal in 'New', and a system_note with who replied, the campaign, the subject and
the reply text. A category set on the lead moves the deal through SMARTLEAD_CATEGORY_STAGES.

Smartlead does not sign: the `secret_key` set on the webhook arrives inside the JSON body, so it
is compared (in constant time) with the body already read, and dropped before the payload is
queued or stored. A relay may send `Authorization: Bearer <secret>` instead. Smartlead's own
documentation shows new field names beside deprecated ones and spells some events two ways:
both are read."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from common.senders.fields import (
    Lead,
    checked_email,
    first_text,
    id_field,
    make_lead,
    object_field,
    split_name,
    text_field,
)
from common.senders.kit import (
    MALFORMED_SIGNATURE,
    NO_CREDENTIALS,
    NO_SECRET_CONFIGURED,
    REPEATED_HEADER,
    Effect,
    HeaderLookup,
    Note,
    Option,
    Options,
    Sender,
    check_bearer,
    check_shared_secret,
    text,
)

NAME = "smartlead"
SECRET_FIELD = "secret_key"
REPLY = "EMAIL_REPLY"
CATEGORY_UPDATED = "LEAD_CATEGORY_UPDATED"
ALIASES = {"EMAIL_REPLIED": REPLY, "EMAIL_OPENED": "EMAIL_OPEN"}

_NOTE = "system_note"
_ENGAGEMENT = Effect(
    engagement=True,
    why="sent by the thousand: stored; ENGAGEMENT_ACTIVITIES=true makes each a note",
)
EFFECTS: dict[str, Effect] = {
    REPLY: Effect(
        stage="New",
        activity=_NOTE,
        step="E:deal_created_and_logged",
        why="Step E: a reply is a lead to work (also spelt EMAIL_REPLIED)",
    ),
    "EMAIL_BOUNCE": Effect(
        activity=_NOTE, on_deal=False, do_not_contact=True, why="the address takes no mail"
    ),
    "LEAD_UNSUBSCRIBED": Effect(
        activity=_NOTE, on_deal=False, do_not_contact=True, why="the lead asked to hear no more"
    ),
    CATEGORY_UPDATED: Effect(
        activity=_NOTE,
        why="the deal moves to the stage SMARTLEAD_CATEGORY_STAGES names for the new category "
        "(by default Interested → Interested, Meeting Request → Meeting Booked, Not Interested "
        "and Do Not Contact → Lost), never backwards; any category: a note",
    ),
    "EMAIL_SENT": _ENGAGEMENT,
    "FIRST_EMAIL_SENT": _ENGAGEMENT,
    "EMAIL_OPEN": _ENGAGEMENT,  # also spelt EMAIL_OPENED
    "EMAIL_LINK_CLICK": _ENGAGEMENT,
}


def _category_stages(raw: str) -> dict[str, str]:
    """'Interested=Interested,Meeting Request=Meeting Booked' as {category (lower): stage}."""
    stages: dict[str, str] = {}
    for entry in raw.split(","):
        category, equals, stage = entry.partition("=")
        if not entry.strip():
            continue
        if not equals or not category.strip() or not stage.strip():
            raise ValueError(f"each entry is 'category=stage', not {entry.strip()!r}")
        stages[category.strip().lower()] = stage.strip()
    return stages


OPTIONS = {
    "category_stages": Option(
        env="SMARTLEAD_CATEGORY_STAGES",
        default="Interested=Interested,Meeting Request=Meeting Booked,"
        "Not Interested=Lost,Do Not Contact=Lost",
        parse=_category_stages,
        doc="which stage a Smartlead lead category moves the deal to: 'category=stage,…' "
        "(stages of the default pipeline; other categories leave a note only)",
    )
}


def _new_category(payload: dict[str, Any]) -> str | None:
    category = payload.get("lead_category")
    if isinstance(category, dict) and isinstance(category.get("new_name"), str):
        return category["new_name"].strip() or None
    older = payload.get("category")
    return older.strip() or None if isinstance(older, str) else None


def _choose_effect(event_type: str, payload: dict[str, Any], options: Options) -> Effect | None:
    if event_type != CATEGORY_UPDATED:
        return EFFECTS.get(event_type)
    category = _new_category(payload)
    stage = options["category_stages"].get(category.lower()) if category else None
    return Effect(stage=stage, activity=_NOTE)


def _authenticate(
    headers: HeaderLookup, body: bytes, secrets: Sequence[str], options: Options
) -> str | None:
    """The body's secret_key, else a relay's bearer header. A present but wrong secret_key
    fails even beside a good bearer header."""
    authorizations = headers.getlist("authorization")
    if len(authorizations) > 1:
        return REPEATED_HEADER
    try:
        # The standard parser: it takes what the receiver refuses with 400 after this (a lone
        # surrogate, NaN), so such a body is refused for what it is, not as unauthenticated.
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    given = payload.get(SECRET_FIELD) if isinstance(payload, dict) else None
    if given is None and not authorizations:
        return NO_CREDENTIALS
    if not secrets:
        return NO_SECRET_CONFIGURED
    if given is not None:
        return (
            check_shared_secret(given, secrets) if isinstance(given, str) else MALFORMED_SIGNATURE
        )
    return check_bearer(authorizations[0], secrets)


_TIME_FIELDS = ("event_timestamp", "time_replied", "time_sent", "time_opened", "time_clicked")


def _fingerprint(payload: dict[str, Any]) -> list[str]:
    """stats_id (one e-mail of one sequence step) + event type + event time; without a
    stats_id, nothing: the whole payload is hashed."""
    event_type = text(payload.get("event_type"))
    stats_id = text(payload.get("stats_id"))
    if not stats_id:
        return [event_type]
    when = next((value for field in _TIME_FIELDS if (value := text(payload.get(field)))), "")
    return [ALIASES.get(event_type, event_type), stats_id, when]


_EMAIL_FIELDS = ("to_email", "lead_email", "to", "sl_lead_email")
_MAX_NOTE_TEXT = 10_000


def parse_lead(payload: dict[str, Any]) -> Lead:
    lead_data = object_field(payload, "lead_data")
    email = first_text(payload, *_EMAIL_FIELDS) or text_field(lead_data, "email")
    first = text_field(lead_data, "first_name")
    last = text_field(lead_data, "last_name")
    if first is None and last is None:
        first, last = split_name(text_field(payload, "to_name"))
    return make_lead(
        checked_email(email, "none of 'to_email', 'lead_email', 'to' is set"),
        first_name=first,
        last_name=last,
        company_name=text_field(lead_data, "company_name"),
        website=text_field(lead_data, "website"),
    )


def _parse(event_type: str, payload: dict[str, Any]) -> tuple[Lead, Note]:
    lead = parse_lead(payload)
    reply = object_field(payload, "reply_message")
    campaign_name = text_field(payload, "campaign_name")
    category = _new_category(payload)
    metadata = {
        "campaign_id": id_field(payload, "campaign_id"),
        "campaign_name": campaign_name,
        "sequence_number": id_field(payload, "sequence_number"),
        "stats_id": text_field(payload, "stats_id"),
        "sl_email_lead_id": id_field(payload, "sl_email_lead_id"),
        "from_email": text_field(payload, "from_email"),
        "message_id": text_field(reply, "message_id"),
        "app_url": text_field(payload, "app_url"),
        "event_timestamp": first_text(payload, *_TIME_FIELDS),
        "category": category,
    }
    who = f"{lead.display_name} <{lead.email}>"
    deal_title = f"{lead.display_name} — {campaign_name}" if campaign_name else lead.display_name
    if event_type == REPLY:
        subject = f"{who} replied"
        if campaign_name:
            subject += f" to campaign '{campaign_name}'"
        if email_subject := text_field(payload, "subject"):
            subject += f": {email_subject}"
        body = text_field(reply, "text") or first_text(payload, "preview_text", "reply_body")
        return lead, Note(subject, body[:_MAX_NOTE_TEXT] if body else None, metadata, deal_title)
    if event_type == CATEGORY_UPDATED:
        subject = f"{who}: category set to '{category}'" if category else f"{who}: category cleared"
        return lead, Note(subject, None, metadata, deal_title)
    return lead, Note(f"{who}: {event_type.lower().replace('_', ' ')}", None, metadata, deal_title)


def _smoke_event(run_id: str, email: str) -> dict[str, Any]:
    return {
        "event_type": REPLY,
        "event_timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stats_id": run_id,
        "to_email": email,
        "to_name": "Smoke Test",
        "campaign_name": "crm-smoke post-deploy check",
        "subject": "Re: crm-smoke",
        "reply_message": {"text": "Synthetic reply sent by crm-smoke."},
    }


def _deliver(payload: dict[str, Any], secret: str, now: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload | {SECRET_FIELD: secret}).encode()
    return body, {"Content-Type": "application/json"}


SENDER = Sender(
    name=NAME,
    title="Smartlead",
    authenticate=_authenticate,
    secret_setting="WEBHOOK_SECRET_SMARTLEAD",
    dev_secret="dev-smartlead-secret-change-me",
    required_in_production=False,
    event_type_field="event_type",
    aliases=ALIASES,
    effects=EFFECTS,
    choose_effect=_choose_effect,
    lead_email_paths=(*((field,) for field in _EMAIL_FIELDS), ("lead_data", "email")),
    event_time_paths=tuple((field,) for field in _TIME_FIELDS),
    fingerprint=_fingerprint,
    parse=_parse,
    smoke_event=_smoke_event,
    deliver=_deliver,
    secret_fields=(SECRET_FIELD,),
    options=OPTIONS,
    setup="Settings → Webhooks (or a campaign's Webhooks tab): the URL and the secret as the "
    "webhook's Secret Key, which Smartlead sends as `secret_key` inside every body (never "
    "stored or logged here); a relay may send `Authorization: Bearer <secret>`",
    security_schemes={"smartleadBearer": ("Authorization", "Bearer <WEBHOOK_SECRET_SMARTLEAD>")},
    auth_doc="the body's `secret_key` field (never stored), or `Authorization: Bearer <secret>` "
    "from a relay; a present but wrong `secret_key` fails even beside a good bearer secret",
)
