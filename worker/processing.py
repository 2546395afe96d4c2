"""One event, one transaction: the durable guard row, the CRM effects and the event's outcome
commit together, so a redelivered or replayed envelope finds the row and does nothing twice."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine

from common.envelope import Envelope, EnvelopeError, is_smoke_test
from common.providers import PROVIDERS, event_time
from common.settings import get_settings
from db import events
from worker import calcom, effects, instantly
from worker.effects import STORE_ONLY, Effect, effect_for
from worker.errors import InvalidPayload, UnknownProvider

# Each provider's events are carried out by its module's one function, given the effect.
_HANDLERS: dict[str, Callable[[Connection, Envelope, Effect], dict[str, Any]]] = {
    "instantly": instantly.handle_event,
    "calcom": calcom.handle_event,
}


def parse_envelope(data: Any) -> Envelope:
    try:
        envelope = Envelope.from_dict(data)
    except EnvelopeError as exc:
        raise InvalidPayload(f"malformed envelope: {exc}") from None
    if envelope.provider not in PROVIDERS:
        raise UnknownProvider(f"no such provider: {envelope.provider!r}")
    return envelope


@dataclass(frozen=True)
class Outcome:
    status: str  # processed | ignored | duplicate (an earlier delivery already applied it)
    result: dict[str, Any]


def process_batch(engine: Engine, batch: Sequence[tuple[Envelope, int]]) -> list[Outcome]:
    """Events (each with its attempt number) in one transaction: one commit for all, and all or
    nothing. A caller whose batch fails runs its events one by one (a batch of one), so a
    single bad event costs the others only the retry."""
    with engine.begin() as conn:
        return [apply_event(conn, envelope, attempts=attempts) for envelope, attempts in batch]


def _die_if_poisoned(envelope: Envelope) -> None:
    """Tests only (APP_ENV=test): die in the middle of the transaction, as a process killed
    by the kernel's OOM killer or a crash in a driver would."""
    poison = get_settings().test_poison_lead
    if poison and poison in (
        str(envelope.payload.get(f, "")).lower() for f in ("lead_email", "email")
    ):
        os.kill(os.getpid(), signal.SIGKILL)


def apply_event(conn: Connection, envelope: Envelope, *, attempts: int) -> Outcome:
    """The event's guard row, effects and outcome, inside the caller's transaction."""
    received_at = datetime.fromisoformat(envelope.received_at)
    occurred_at, time_source = event_time(envelope.provider, envelope.payload, received_at)
    claim = events.claim_event(
        conn,
        event_id=UUID(envelope.event_id),
        provider=envelope.provider,
        event_type=envelope.event_type,
        idempotency_key=envelope.idempotency_key,
        payload=envelope.payload,
        received_at=received_at,
        occurred_at=occurred_at,
        attempts=attempts,
    )
    if claim.done:
        return Outcome("duplicate", claim.result or {})
    _die_if_poisoned(envelope)
    effect = effect_for(
        envelope.provider,
        envelope.event_type,
        engagement_activities=get_settings().engagement_activities,
    )
    # Which time the event's activity carries: the sender's, or our receipt's.
    timing = {"occurred_at": occurred_at.isoformat(), "time_source": time_source}
    if effect is None:
        result = effects.result("ignored") | {"ignored": f"no effect for {envelope.event_type}"}
        result |= timing
        events.finish_event(conn, event_id=claim.event_id, status="ignored", result=result)
        return Outcome("ignored", result)
    if effect == STORE_ONLY:
        result = effects.result("stored")  # the webhook_events row is the whole effect
    elif is_smoke_test(envelope):
        # Every statement runs, then the CRM rows go: the event row says it was a smoke test.
        savepoint = conn.begin_nested()
        try:
            result = _HANDLERS[envelope.provider](conn, envelope, effect)
        finally:
            savepoint.rollback()
        result |= {"smoke_test": "applied, then rolled back: no CRM rows kept"}
    else:
        result = _HANDLERS[envelope.provider](conn, envelope, effect)
    result |= timing
    events.finish_event(conn, event_id=claim.event_id, status="processed", result=result)
    return Outcome("processed", result)
