"""What each event does, as a table. An event type not in it is stored as `ignored`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from common.envelope import PROVIDERS, Envelope
from worker import instantly

Handler = Callable[[Connection, Envelope], dict[str, Any]]

EVENT_HANDLERS: dict[tuple[str, str], Handler] = {
    ("instantly", "reply_received"): instantly.handle_reply,
}

KNOWN_PROVIDERS = frozenset(PROVIDERS)


def handler_for(provider: str, event_type: str) -> Handler | None:
    return EVENT_HANDLERS.get((provider, event_type))
