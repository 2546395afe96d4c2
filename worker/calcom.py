"""Cal.com bookings: the attendee's contact, their deal advanced to 'Meeting Booked' on a
booking, and a `meeting` activity for every booking event."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from common.envelope import Envelope
from worker.effects import Effect, Note, apply_effect
from worker.errors import InvalidPayload
from worker.leads import Lead, checked_email, make_lead, object_field, text_field

_VERBS = {
    "BOOKING_CREATED": "booked",
    "BOOKING_RESCHEDULED": "rescheduled",
    "BOOKING_CANCELLED": "cancelled",
    "MEETING_ENDED": "ended",
}


def _booking(envelope: Envelope) -> dict[str, Any]:
    return object_field(envelope.payload, "payload")


def parse_attendee(booking: dict[str, Any]) -> Lead:
    attendees = booking.get("attendees")
    if not isinstance(attendees, list) or not attendees or not isinstance(attendees[0], dict):
        raise InvalidPayload("no attendee: 'payload.attendees' is missing or empty")
    attendee = attendees[0]
    first = text_field(attendee, "firstName")
    last = text_field(attendee, "lastName")
    if first is None and last is None:
        first, _, last_part = (text_field(attendee, "name") or "").partition(" ")
        first, last = first or None, last_part or None
    return make_lead(
        checked_email(text_field(attendee, "email"), "the first attendee has no 'email'"),
        first_name=first,
        last_name=last,
    )


def handle_event(conn: Connection, envelope: Envelope, effect: Effect) -> dict[str, Any]:
    booking = _booking(envelope)
    lead = parse_attendee(booking)
    organizer = object_field(booking, "organizer")
    title = text_field(booking, "title") or "Meeting"
    verb = _VERBS.get(envelope.event_type, envelope.event_type.lower())
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
    return apply_effect(
        conn,
        envelope,
        lead,
        effect,
        Note(
            subject=f"Meeting {verb}: {title} ({when})",
            body=text_field(booking, "cancellationReason"),
            metadata=metadata,
            deal_title=f"{lead.display_name} — {title}",
        ),
    )
