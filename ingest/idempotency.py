"""A delivery's idempotency key: what makes a repeat of it answer 409."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.datastructures import Headers

from common.senders import SENDERS

MAX_KEY_LENGTH = 255


class InvalidIdempotencyKey(ValueError):
    """The sender supplied an unusable idempotency key."""


def derive_key(provider: str, headers: Headers, payload: dict[str, Any]) -> str:
    """`Idempotency-Key` header, else the payload's `idempotency_key`, else a SHA-256 over the
    fields that identify one delivery of one event (the sender's module names them) — or over
    the whole payload when none of them is there beyond the event type, so unrelated events
    never share a key. The payload is hashed in a canonical form (keys sorted, no spaces), so
    a repeat sent with other whitespace or key order is still a repeat."""
    explicit = headers.get("idempotency-key")
    if explicit is None and "idempotency_key" in payload:
        explicit = payload["idempotency_key"]
        if not isinstance(explicit, str):
            raise InvalidIdempotencyKey("idempotency_key must be a string")
    if explicit is not None:
        explicit = explicit.strip()
        if not explicit or len(explicit) > MAX_KEY_LENGTH or not explicit.isprintable():
            raise InvalidIdempotencyKey(
                f"idempotency key must be 1 to {MAX_KEY_LENGTH} printable characters"
            )
        return explicit
    fields = SENDERS[provider].fingerprint(payload)
    if not any(fields[1:]):
        canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return "sha256-payload:" + hashlib.sha256(canonical.encode()).hexdigest()
    # Keys already issued depend on these exact bytes: json.dumps, compact separators.
    fingerprint = json.dumps(fields, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(fingerprint).hexdigest()
