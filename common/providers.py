"""The providers and their event types: the one registry the receiver (routes, signatures,
idempotency keys), the worker (which effects exist), the metrics (label values) and the OpenAPI
description read. What each provider's events *do* is the worker's (worker/effects.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Provider:
    name: str
    # The payload field that names the event type.
    event_type_field: str
    # The types the sender documents. Others are accepted and stored as `ignored`; in metrics
    # they share the label `other`, so a sender cannot grow the number of series without bound.
    event_types: frozenset[str]
    # Where the payload says when the event happened (ISO 8601), first found wins.
    event_time_paths: tuple[tuple[str | int, ...], ...] = ()

    def event_type(self, payload: dict[str, Any]) -> str | None:
        value = payload.get(self.event_type_field)
        return value.strip() if isinstance(value, str) and value.strip() else None


_INSTANTLY_TYPES = (
    "reply_received", "auto_reply_received", "email_sent", "email_opened", "email_bounced",
    "link_clicked", "email_link_clicked", "lead_interested", "lead_not_interested",
    "lead_neutral", "lead_meeting_booked", "lead_meeting_completed", "lead_closed",
    "lead_out_of_office", "lead_wrong_person", "lead_unsubscribed", "campaign_completed",
    "account_error",
)  # fmt: skip
_CALCOM_TYPES = (
    "BOOKING_CREATED", "BOOKING_RESCHEDULED", "BOOKING_CANCELLED", "BOOKING_REQUESTED",
    "BOOKING_REJECTED", "BOOKING_PAID", "MEETING_STARTED", "MEETING_ENDED",
)  # fmt: skip
INSTANTLY = Provider("instantly", "event_type", frozenset(_INSTANTLY_TYPES), (("timestamp",),))
CALCOM = Provider("calcom", "triggerEvent", frozenset(_CALCOM_TYPES), (("createdAt",),))
PROVIDERS: dict[str, Provider] = {provider.name: provider for provider in (INSTANTLY, CALCOM)}

# Instantly sends lead custom variables as top-level keys, and a lead variable named
# `campaign_id` overwrites Instantly's own: `campaign` always holds the real id, so it wins.
INSTANTLY_CAMPAIGN_FIELDS = ("campaign", "campaign_id")


# What the receiver refuses before it queues anything, because PostgreSQL could not index it
# (a B-tree row holds at most 2,704 bytes) or a log line should not carry it.
MAX_LEAD_EMAIL_LENGTH = 320  # RFC 5321's limit on a forward path
MAX_EVENT_TYPE_LENGTH = 200
# Where a stored payload's lead e-mail is, for every sender alike: db.tables.LEAD_EMAIL_SQL
# indexes the text at these very paths (a non-string value as its JSON text).
LEAD_EMAIL_PATHS: tuple[tuple[str | int, ...], ...] = (
    ("lead_email",),
    ("email",),
    ("payload", "attendees", 0, "email"),
)


def value_at(payload: dict[str, Any], path: tuple[str | int, ...]) -> object:
    """The value at `path` (keys and list positions), or None where there is none."""
    value: object = payload
    for step in path:
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and len(value) > step else None
        else:
            value = value.get(step) if isinstance(value, dict) else None
    return value


def lead_email(payload: dict[str, Any]) -> str | None:
    """The lead's e-mail in a payload, lower-cased, if one of LEAD_EMAIL_PATHS holds text."""
    for path in LEAD_EMAIL_PATHS:
        value = value_at(payload, path)
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
    return None


# A sender's time later than this after our receipt is a wrong clock or a wrong field; one
# before the oldest plausible year likewise. Either way the receipt time stands in.
_FUTURE_TOLERANCE = timedelta(days=1)
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def event_time(
    provider: str, payload: dict[str, Any], received_at: datetime
) -> tuple[datetime, str]:
    """When the event happened and who says so: the sender's time ("sender"), or — missing,
    unparsable or implausible — our receipt time ("received"). A time without a zone is UTC."""
    known = PROVIDERS.get(provider)
    for path in known.event_time_paths if known else ():
        value = value_at(payload, path)
        if not isinstance(value, str) or len(value) > 64:
            continue
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            continue
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        if _EARLIEST <= when <= received_at + _FUTURE_TOLERANCE:
            return when, "sender"
    return received_at, "received"


def metric_labels(provider: str, event_type: str) -> tuple[str, str]:
    """(provider, event_type) label values, undocumented ones folded."""
    known = PROVIDERS.get(provider)
    if known is None:
        return "unknown", "other"
    return provider, event_type if event_type in known.event_types else "other"
