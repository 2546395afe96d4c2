"""Cal.com bookings: the attendee's contact, their deal advanced to 'Meeting Booked' on a
booking, and a `meeting` activity for every booking event. Cal.com signs every delivery with
`X-Cal-Signature-256`; with no secret set on its side it sends the literal
`no-secret-provided`, which never matches a 64-hex-digit digest."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from common.senders.fields import (
    Lead,
    PayloadError,
    checked_email,
    make_lead,
    object_field,
    split_name,
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
    check_hmac_hex,
    hmac_hex,
    text,
)

NAME = "calcom"
SIGNATURE_HEADER = "X-Cal-Signature-256"

_MEETING = "meeting"
_NOT_A_MEETING = "no meeting is agreed yet, or the event adds nothing: stored as ignored"
EFFECTS: dict[str, Effect] = {
    "BOOKING_CREATED": Effect(
        stage="Meeting Booked", activity=_MEETING, why="a booking: the deal moves to Meeting Booked"
    ),
    "BOOKING_RESCHEDULED": Effect(activity=_MEETING, why="the new time, on the deal"),
    "BOOKING_CANCELLED": Effect(
        activity=_MEETING, why="logged on the deal, which does not move back"
    ),
    "MEETING_ENDED": Effect(activity=_MEETING, why="the meeting took place: logged on the deal"),
    "BOOKING_REQUESTED": Effect(ignore=True, why=_NOT_A_MEETING),
    "BOOKING_REJECTED": Effect(ignore=True, why=_NOT_A_MEETING),
    "BOOKING_PAID": Effect(ignore=True, why=_NOT_A_MEETING),
    "MEETING_STARTED": Effect(ignore=True, why="MEETING_ENDED says it took place: ignored"),
}

_VERBS = {
    "BOOKING_CREATED": "booked",
    "BOOKING_RESCHEDULED": "rescheduled",
    "BOOKING_CANCELLED": "cancelled",
    "MEETING_ENDED": "ended",
}


def _authenticate(
    headers: HeaderLookup, body: bytes, secrets: Sequence[str], options: Options
) -> str | None:
    signatures = headers.getlist(SIGNATURE_HEADER)
    if len(signatures) > 1:
        return REPEATED_HEADER
    if not signatures:
        return NO_CREDENTIALS
    if not secrets:
        return NO_SECRET_CONFIGURED
    return check_hmac_hex(signatures[0], body, secrets)


def _fingerprint(payload: dict[str, Any]) -> list[str]:
    inner = payload.get("payload")
    uid = text(inner.get("uid")) if isinstance(inner, dict) else ""
    return [text(payload.get("triggerEvent")), uid]


def _attendee(booking: dict[str, Any]) -> Lead:
    attendees = booking.get("attendees")
    if not isinstance(attendees, list) or not attendees or not isinstance(attendees[0], dict):
        raise PayloadError("no attendee: 'payload.attendees' is missing or empty")
    attendee = attendees[0]
    first = text_field(attendee, "firstName")
    last = text_field(attendee, "lastName")
    if first is None and last is None:
        first, last = split_name(text_field(attendee, "name"))
    return make_lead(
        checked_email(text_field(attendee, "email"), "the first attendee has no 'email'"),
        first_name=first,
        last_name=last,
    )


def _parse(event_type: str, payload: dict[str, Any]) -> tuple[Lead, Note]:
    booking = object_field(payload, "payload")
    lead = _attendee(booking)
    organizer = object_field(booking, "organizer")
    title = text_field(booking, "title") or "Meeting"
    verb = _VERBS.get(event_type, event_type.lower())
    metadata = {
        "uid": text_field(booking, "uid"),
        "start_time": text_field(booking, "startTime"),
        "end_time": text_field(booking, "endTime"),
        "title": title,
        "organizer": text_field(organizer, "name"),
        "organizer_email": text_field(organizer, "email"),
        "video_url": text_field(object_field(booking, "metadata"), "videoCallUrl"),
        "location": text_field(booking, "location"),
        "status": text_field(booking, "status"),
    }
    when = metadata["start_time"] or "an unknown time"
    return lead, Note(
        subject=f"Meeting {verb}: {title} ({when})",
        body=text_field(booking, "cancellationReason"),
        metadata=metadata,
        deal_title=f"{lead.display_name} — {title}",
    )


def _smoke_event(run_id: str, email: str) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "triggerEvent": "BOOKING_CREATED",
        "createdAt": now,
        "payload": {
            "uid": run_id,
            "title": "crm-smoke post-deploy check",
            "startTime": now,
            "endTime": now,
            "attendees": [{"email": email, "name": "Smoke Test"}],
        },
    }


def _deliver(payload: dict[str, Any], secret: str, now: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {"Content-Type": "application/json", SIGNATURE_HEADER: hmac_hex(body, secret)}


SENDER = Sender(
    name=NAME,
    title="Cal.com",
    authenticate=_authenticate,
    secret_setting="HMAC_SHARED_SECRET_CALCOM",
    dev_secret="dev-calcom-secret-change-me",
    required_in_production=True,
    event_type_field="triggerEvent",
    effects=EFFECTS,
    lead_email_paths=(("payload", "attendees", 0, "email"),),
    event_time_paths=(("createdAt",),),
    fingerprint=_fingerprint,
    parse=_parse,
    smoke_event=_smoke_event,
    deliver=_deliver,
    setup="Settings → Developer → Webhooks: the URL and the secret as its signing secret "
    f"(`{SIGNATURE_HEADER}`); its `no-secret-provided` placeholder is always refused",
    security_schemes={"calcomSignature": (SIGNATURE_HEADER, "<hex>")},
    auth_doc=f"`{SIGNATURE_HEADER}` only (hex HMAC-SHA256 of the raw body)",
)
