"""The event envelope: what crosses the queue, as plain JSON, and the one way to read it back."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_TEXT_FIELDS = ("event_id", "provider", "event_type", "idempotency_key", "received_at")


def new_event_id() -> str:
    return str(uuid.uuid4())


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()


class EnvelopeError(ValueError):
    """A queued or stored envelope is not well formed; says which field."""


@dataclass(frozen=True, slots=True)
class Envelope:
    event_id: str
    provider: str
    event_type: str
    idempotency_key: str
    received_at: str
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        # Shallow: dataclasses.asdict would deep-copy the payload.
        return {
            "event_id": self.event_id,
            "provider": self.provider,
            "event_type": self.event_type,
            "idempotency_key": self.idempotency_key,
            "received_at": self.received_at,
            "payload": self.payload,
        }

    @classmethod
    def from_dict(cls, data: object) -> Envelope:
        """The envelope in `data`, checked: every field present with its type, the event id a
        UUID, the receipt time ISO 8601. EnvelopeError names what is wrong."""
        if not isinstance(data, Mapping):
            raise EnvelopeError("envelope is not an object")
        missing = [name for name in _TEXT_FIELDS if not isinstance(data.get(name), str)]
        if missing:
            raise EnvelopeError(f"envelope field(s) missing or not text: {', '.join(missing)}")
        payload = data.get("payload")
        if not isinstance(payload, dict):
            raise EnvelopeError("envelope payload is not an object")
        try:
            uuid.UUID(data["event_id"])
        except ValueError:
            raise EnvelopeError("envelope event_id is not a UUID") from None
        try:
            datetime.fromisoformat(data["received_at"])
        except ValueError:
            raise EnvelopeError("envelope received_at is not an ISO 8601 time") from None
        return cls(
            event_id=data["event_id"],
            provider=data["provider"],
            event_type=data["event_type"],
            idempotency_key=data["idempotency_key"],
            received_at=data["received_at"],
            payload=payload,
        )


def describe(data: object) -> dict[str, str]:
    """`event_id`, `provider` and `event_type` of whatever was queued, well formed or not, as
    text ('' where absent): what a log line or a metric label names an event by."""
    fields = data if isinstance(data, Mapping) else {}
    return {key: str(fields.get(key) or "") for key in ("event_id", "provider", "event_type")}
