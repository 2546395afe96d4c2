"""Which function carries out which event: a table built from worker.effects. An event type
not in it is stored as `ignored`, never dead-lettered."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import Connection

from common.envelope import PROVIDERS, Envelope
from common.settings import get_settings
from worker import calcom, instantly
from worker.effects import CALCOM_EFFECTS, ENGAGEMENT_TYPES, INSTANTLY_EFFECTS, Effect

Handler = Callable[[Connection, Envelope], dict[str, Any]]


def store_only(conn: Connection, envelope: Envelope) -> dict[str, Any]:
    """The webhook_events row is the whole effect: no contact, deal or activity."""
    return {"effect": "stored"}


def _handler(module_handler: Callable[..., dict[str, Any]], effect: Effect) -> Handler:
    return store_only if effect == Effect() else partial(module_handler, effect=effect)


def _instantly_effects() -> dict[str, Effect]:
    if not get_settings().engagement_activities:
        return INSTANTLY_EFFECTS
    noted = Effect(activity="system_note")
    return INSTANTLY_EFFECTS | {event_type: noted for event_type in ENGAGEMENT_TYPES}


EVENT_HANDLERS: dict[tuple[str, str], Handler] = {
    ("instantly", "reply_received"): instantly.handle_reply,
    **{
        ("instantly", event_type): _handler(instantly.handle_event, effect)
        for event_type, effect in _instantly_effects().items()
    },
    **{
        ("calcom", event_type): _handler(calcom.handle_event, effect)
        for event_type, effect in CALCOM_EFFECTS.items()
    },
}

KNOWN_PROVIDERS = frozenset(PROVIDERS)


def handler_for(provider: str, event_type: str) -> Handler | None:
    return EVENT_HANDLERS.get((provider, event_type))
