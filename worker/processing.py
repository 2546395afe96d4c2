"""One event, one transaction: the durable guard row, the CRM effects and the event's outcome
commit together, so a redelivered or replayed envelope finds the row and does nothing twice."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine

from common.envelope import Envelope, EnvelopeError
from common.senders import SENDERS, event_time, is_smoke_test, lead_email
from common.settings import get_settings
from db import events
from worker import effects
from worker.effects import effect_for, handle_event
from worker.errors import InvalidPayload, UnknownProvider


def parse_envelope(data: Any) -> Envelope:
    try:
        envelope = Envelope.from_dict(data)
    except EnvelopeError as exc:
        raise InvalidPayload(f"malformed envelope: {exc}") from None
    if envelope.provider not in SENDERS:
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
    if poison and poison == lead_email(envelope.provider, envelope.payload):
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
        lead_email=lead_email(envelope.provider, envelope.payload),
        attempts=attempts,
    )
    if claim.done:
        return Outcome("duplicate", claim.result or {})
    _die_if_poisoned(envelope)
    settings = get_settings()
    effect = effect_for(
        envelope,
        engagement_activities=settings.engagement_activities,
        options=settings.sender_option(envelope.provider),
    )
    # Which time the event's activity carries: the sender's, or our receipt's.
    timing = {"occurred_at": occurred_at.isoformat(), "time_source": time_source}
    if effect is None:
        result = effects.result("ignored") | {"ignored": f"no effect for {envelope.event_type}"}
        result |= timing
        events.finish_event(conn, event_id=claim.event_id, status="ignored", result=result)
        return Outcome("ignored", result)
    if effect.stores_only:
        result = effects.result("stored")  # the webhook_events row is the whole effect
    elif is_smoke_test(envelope.provider, envelope.idempotency_key, envelope.payload):
        # Every statement runs, then the CRM rows go: the event row says it was a smoke test.
        savepoint = conn.begin_nested()
        try:
            result = handle_event(conn, envelope, effect)
        finally:
            savepoint.rollback()
        result |= {"smoke_test": "applied, then rolled back: no CRM rows kept"}
    else:
        result = handle_event(conn, envelope, effect)
    result |= timing
    events.finish_event(conn, event_id=claim.event_id, status="processed", result=result)
    return Outcome("processed", result)
