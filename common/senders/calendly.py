"""Calendly bookings: the invitee's contact, their deal advanced to 'Meeting Booked' on a
booking, and a `meeting` activity for each booking event. A reschedule arrives as an
`invitee.canceled` with `rescheduled: true`, then an `invitee.created` naming the old invitee:
it is recorded once, as a reschedule, not as a cancellation.

Calendly signs `Calendly-Webhook-Signature: t=<unix seconds>,v1=<hex>`, the HMAC-SHA256 of
`"<t>.<raw body>"` with the webhook's signing key. A `t` further than
CALENDLY_SIGNATURE_TOLERANCE_SECONDS from now is refused, so a captured delivery cannot be
replayed later (as Stripe and Standard Webhooks do)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from common.senders.fields import (
    Lead,
    checked_email,
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
    STALE_SIGNATURE,
    Effect,
    HeaderLookup,
    Note,
    Option,
    Options,
    Sender,
    check_hmac_hex,
    hmac_hex,
    text,
)

NAME = "calendly"
SIGNATURE_HEADER = "Calendly-Webhook-Signature"
CREATED = "invitee.created"
CANCELED = "invitee.canceled"

_MEETING = "meeting"
EFFECTS: dict[str, Effect] = {
    CREATED: Effect(
        stage="Meeting Booked",
        activity=_MEETING,
        why="a booking (or the new time of a reschedule): the deal moves to Meeting Booked",
    ),
    CANCELED: Effect(
        activity=_MEETING,
        why="logged on the deal, which does not move back; one marked `rescheduled` is stored "
        "only, since the invitee.created that follows records the reschedule",
    ),
    "invitee_no_show.created": Effect(
        activity=_MEETING, why="the invitee did not come: logged on the deal, no move back"
    ),
    "invitee_no_show.deleted": Effect(
        activity=_MEETING, why="the no-show mark was taken back: logged on the deal"
    ),
    "routing_form_submission.created": Effect(
        ignore=True, why="a form submitted, no meeting booked: ignored"
    ),
}
# The cancel half of a reschedule: the event is kept, the CRM untouched.
RESCHEDULE_CANCEL = Effect(why="the first half of a reschedule")


def _tolerance(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be a whole number of seconds") from None
    if value < 1:
        raise ValueError("must be at least 1")
    return value


OPTIONS = {
    "tolerance_seconds": Option(
        env="CALENDLY_SIGNATURE_TOLERANCE_SECONDS",
        default="300",
        parse=_tolerance,
        doc="how far a Calendly signature's time may be from ours, in seconds",
    )
}


def _invitee(payload: dict[str, Any]) -> dict[str, Any]:
    invitee = payload.get("payload")
    return invitee if isinstance(invitee, dict) else {}


def _choose_effect(event_type: str, payload: dict[str, Any], options: Options) -> Effect | None:
    if event_type == CANCELED and _invitee(payload).get("rescheduled") is True:
        return RESCHEDULE_CANCEL
    return EFFECTS.get(event_type)


def _signature_parts(header: str) -> tuple[int, list[str]] | None:
    """'t=<seconds>,v1=<hex>[,v1=<hex>…]' as (t, [v1 …]); None when it is not that."""
    stamp: int | None = None
    signatures = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        # ASCII digits only (int() refuses '²', which isdigit() takes), and few of them.
        if (
            key == "t"
            and value.isascii()
            and value.isdigit()
            and len(value) <= 12
            and stamp is None
        ):
            stamp = int(value)
        elif key == "v1" and value:
            signatures.append(value)
    return (stamp, signatures) if stamp is not None and signatures else None


def _authenticate(
    headers: HeaderLookup, body: bytes, secrets: Sequence[str], options: Options
) -> str | None:
    values = headers.getlist(SIGNATURE_HEADER)
    if len(values) > 1:
        return REPEATED_HEADER
    if not values:
        return NO_CREDENTIALS
    if not secrets:
        return NO_SECRET_CONFIGURED
    parts = _signature_parts(values[0])
    if parts is None:
        return MALFORMED_SIGNATURE
    stamp, signatures = parts
    message = f"{stamp}.".encode() + body
    checks = [check_hmac_hex(signature, message, secrets) for signature in signatures]
    if None not in checks:
        return checks[0]
    if abs(time.time() - stamp) > options["tolerance_seconds"]:
        return STALE_SIGNATURE
    return None


def _fingerprint(payload: dict[str, Any]) -> list[str]:
    return [text(payload.get("event")), text(_invitee(payload).get("uri"))]


def _parse(event_type: str, payload: dict[str, Any]) -> tuple[Lead, Note]:
    invitee = _invitee(payload)
    first = text_field(invitee, "first_name")
    last = text_field(invitee, "last_name")
    if first is None and last is None:
        first, last = split_name(text_field(invitee, "name"))
    lead = make_lead(
        checked_email(text_field(invitee, "email"), "the invitee has no 'payload.email'"),
        first_name=first,
        last_name=last,
    )
    meeting = object_field(invitee, "scheduled_event")
    location = object_field(meeting, "location")
    memberships = meeting.get("event_memberships")
    host = memberships[0] if isinstance(memberships, list) and memberships else {}
    host = host if isinstance(host, dict) else {}
    cancellation = object_field(invitee, "cancellation")
    title = text_field(meeting, "name") or "Meeting"
    rescheduled = event_type == CREATED and text_field(invitee, "old_invitee") is not None
    verb = {
        CREATED: "rescheduled" if rescheduled else "booked",
        CANCELED: "cancelled",
        "invitee_no_show.created": "missed (no-show)",
        "invitee_no_show.deleted": "attended after all (no-show taken back)",
    }.get(event_type, event_type)
    metadata = {
        "invitee_uri": text_field(invitee, "uri"),
        "event_uri": text_field(meeting, "uri"),
        "start_time": text_field(meeting, "start_time"),
        "end_time": text_field(meeting, "end_time"),
        "title": title,
        "organizer": text_field(host, "user_name"),
        "organizer_email": text_field(host, "user_email"),
        "video_url": text_field(location, "join_url"),
        "location": text_field(location, "location") or text_field(location, "type"),
        "old_invitee": text_field(invitee, "old_invitee"),
        "cancel_url": text_field(invitee, "cancel_url"),
        "canceled_by": text_field(cancellation, "canceled_by"),
    }
    when = metadata["start_time"] or "an unknown time"
    return lead, Note(
        subject=f"Meeting {verb}: {title} ({when})",
        body=text_field(cancellation, "reason"),
        metadata=metadata,
        deal_title=f"{lead.display_name} — {title}",
    )


def _smoke_event(run_id: str, email: str) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "event": CREATED,
        "created_at": now,
        "payload": {
            "uri": f"https://api.calendly.com/scheduled_events/crm-smoke/invitees/{run_id}",
            "email": email,
            "name": "Smoke Test",
            "scheduled_event": {"name": "crm-smoke post-deploy check", "start_time": now},
        },
    }


def _deliver(payload: dict[str, Any], secret: str, now: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    signature = hmac_hex(f"{now}.".encode() + body, secret)
    return body, {"Content-Type": "application/json", SIGNATURE_HEADER: f"t={now},v1={signature}"}


SENDER = Sender(
    name=NAME,
    title="Calendly",
    authenticate=_authenticate,
    secret_setting="WEBHOOK_SECRET_CALENDLY",
    dev_secret="dev-calendly-secret-change-me",
    required_in_production=False,
    event_type_field="event",
    effects=EFFECTS,
    choose_effect=_choose_effect,
    lead_email_paths=(("payload", "email"),),
    event_time_paths=(("created_at",), ("payload", "created_at")),
    fingerprint=_fingerprint,
    parse=_parse,
    smoke_event=_smoke_event,
    deliver=_deliver,
    options=OPTIONS,
    setup="a webhook subscription made with Calendly's API (`POST /webhook_subscriptions` with "
    "the URL, the `invitee.*` events and the secret as `signing_key`); Calendly signs "
    f"`{SIGNATURE_HEADER}: t=…,v1=…`, refused when `t` is over "
    "`CALENDLY_SIGNATURE_TOLERANCE_SECONDS` from now",
    security_schemes={"calendlySignature": (SIGNATURE_HEADER, "t=<unix seconds>,v1=<hex>")},
    auth_doc=f"`{SIGNATURE_HEADER}: t=<unix seconds>,v1=<hex>`, HMAC-SHA256 of `<t>.<raw body>`; "
    "a `t` more than CALENDLY_SIGNATURE_TOLERANCE_SECONDS from now is refused",
)
