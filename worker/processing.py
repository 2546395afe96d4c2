"""A batch of events, one transaction: the durable guard rows, the CRM effects and the events'
outcomes commit together, so a redelivered or replayed envelope finds its row and does nothing
twice. One path for any size: a single event is a batch of one. Each table is written with one
statement for the whole batch (worker.effects, db.batch)."""

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
from db import batch as batch_db
from worker import effects
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
    nothing. A caller whose batch fails runs it again in smaller pieces, down to one event, so
    a single bad event costs the others only a retry."""
    with engine.begin() as conn:
        return apply_batch(conn, batch)


def _die_if_poisoned(email: str | None) -> None:
    """Tests only (APP_ENV=test): die in the middle of the transaction, as a process killed
    by the kernel's OOM killer or a crash in a driver would. `email`: the event's lead e-mail."""
    poison = get_settings().test_poison_lead
    if poison and poison == email:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class _Event:
    envelope: Envelope
    row: batch_db.NewEvent
    time_source: str

    @property
    def key(self) -> tuple[str, str]:
        return self.envelope.provider, self.envelope.idempotency_key


def _event(envelope: Envelope, attempts: int) -> _Event:
    received_at = datetime.fromisoformat(envelope.received_at)
    occurred_at, time_source = event_time(envelope.provider, envelope.payload, received_at)
    row = batch_db.NewEvent(
        event_id=UUID(envelope.event_id),
        provider=envelope.provider,
        event_type=envelope.event_type,
        idempotency_key=envelope.idempotency_key,
        attempts=attempts,
        payload=envelope.payload,
        received_at=received_at,
        occurred_at=occurred_at,
        lead_email=lead_email(envelope.provider, envelope.payload),
    )
    return _Event(envelope, row, time_source)


def apply_batch(conn: Connection, batch: Sequence[tuple[Envelope, int]]) -> list[Outcome]:
    """The events' guard rows, effects and outcomes, inside the caller's transaction; an
    Outcome per event, in order."""
    events = [_event(envelope, attempts) for envelope, attempts in batch]
    # A key twice in one batch (a replay beside its original): the first is applied, and
    # the others are its duplicates, as they would be one after another.
    first: dict[tuple[str, str], int] = {}
    for index, each in enumerate(events):
        first.setdefault(each.key, index)
    claims = batch_db.claim_events(conn, [events[index].row for index in first.values()])
    outcomes: dict[int, Outcome] = {}
    to_apply: list[tuple[int, UUID]] = []
    for key, index in first.items():
        claim = claims[key]
        if claim.done:
            outcomes[index] = Outcome("duplicate", claim.result or {})
            continue
        _die_if_poisoned(events[index].row.lead_email)
        to_apply.append((index, claim.event_id))
    smoke: list[tuple[int, UUID]] = []
    real: list[tuple[int, UUID]] = []
    for entry in to_apply:
        row = events[entry[0]].row
        (smoke if is_smoke_test(row.idempotency_key, row.lead_email) else real).append(entry)
    finished = _apply(conn, events, real)
    if smoke:
        # Every statement runs, then the CRM rows go: the event rows say it was a smoke test.
        savepoint = conn.begin_nested()
        try:
            tried = _apply(conn, events, smoke)
        finally:
            savepoint.rollback()
        note = {"smoke_test": "applied, then rolled back: no CRM rows kept"}
        finished |= {
            index: Outcome(
                each.status, each.result | note if each.status == "processed" else each.result
            )
            for index, each in tried.items()
        }
    batch_db.finish_events(
        conn,
        [(row_id, finished[index].status, finished[index].result) for index, row_id in to_apply],
    )
    outcomes |= finished
    for index, each in enumerate(events):
        if index not in outcomes:
            outcomes[index] = Outcome("duplicate", outcomes[first[each.key]].result)
    return [outcomes[index] for index in range(len(events))]


def _apply(
    conn: Connection, events: list[_Event], entries: list[tuple[int, UUID]]
) -> dict[int, Outcome]:
    """Each event's effect carried out: ignored, stored, or CRM rows (set-based)."""
    settings = get_settings()
    finished: dict[int, Outcome] = {}
    planned: list[tuple[int, effects.Planned]] = []
    for index, _ in entries:
        event = events[index]
        envelope = event.envelope
        effect = effects.effect_for(
            envelope,
            engagement_activities=settings.engagement_activities,
            options=settings.sender_option(envelope.provider),
        )
        if effect is None:
            result = effects.result("ignored") | {"ignored": f"no effect for {envelope.event_type}"}
            finished[index] = Outcome("ignored", result | _timing(event))
        elif effect.stores_only:
            # The webhook_events row is the whole effect.
            finished[index] = Outcome("processed", effects.result("stored") | _timing(event))
        else:
            planned.append((index, effects.plan(envelope, effect, event.row.occurred_at)))
    results = effects.carry_out(conn, [each for _, each in planned]) if planned else []
    for (index, _), result in zip(planned, results, strict=True):
        finished[index] = Outcome("processed", result | _timing(events[index]))
    return finished


def _timing(event: _Event) -> dict[str, str]:
    """Which time the event's activity carries: the sender's, or our receipt's."""
    return {"occurred_at": event.row.occurred_at.isoformat(), "time_source": event.time_source}
