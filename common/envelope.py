"""The event envelope: the only thing that crosses the queue, as plain JSON."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

QUEUE_NAME = "webhooks"
TASK_NAME = "crm.process_event"
PROVIDERS = ("instantly", "calcom")

_FIELDS = ("event_id", "provider", "event_type", "idempotency_key", "received_at")


def new_event_id() -> str:
    """A random (version 4) UUID in its canonical text form, as `str(uuid.uuid4())` gives, for
    a third of its cost: the text is cut from the random bytes' hex without building a UUID.
    Same source (os.urandom), same 122 random bits."""
    digits = os.urandom(16).hex()
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


_second_text: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """Now in UTC as `datetime.now(UTC).isoformat()` writes it with microseconds, for a third
    of the cost: the date and time of day are formatted once per second."""
    global _second_text
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    if _second_text[0] != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_text = (second, text)
    return f"{_second_text[1]}.{micro:06d}+00:00"


class EnvelopeError(ValueError):
    """A message on the queue is not a well-formed envelope."""


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made building
# one cost 11k instructions against 3k now (callgrind). Nothing mutates an envelope.
@dataclass(slots=True)
class Envelope:
    event_id: str
    provider: str
    event_type: str
    idempotency_key: str
    received_at: str
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies the payload, which cost more than
        # the rest of building a queue message (profiled at ~40 µs per delivery).
        return {
            "event_id": self.event_id,
            "provider": self.provider,
            "event_type": self.event_type,
            "idempotency_key": self.idempotency_key,
            "received_at": self.received_at,
            "payload": self.payload,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        if not isinstance(data, Mapping):
            raise EnvelopeError("envelope is not an object")
        missing = [name for name in _FIELDS if not isinstance(data.get(name), str)]
        if missing:
            raise EnvelopeError(f"envelope field(s) missing or not text: {', '.join(missing)}")
        payload = data.get("payload")
        if not isinstance(payload, dict):
            raise EnvelopeError("envelope payload is not an object")
        return cls(
            event_id=data["event_id"],
            provider=data["provider"],
            event_type=data["event_type"],
            idempotency_key=data["idempotency_key"],
            received_at=data["received_at"],
            payload=payload,
        )
