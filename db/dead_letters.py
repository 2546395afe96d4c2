"""The dead-letter store: one row per event that could not be processed, until replayed."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import Connection, Engine, Select, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError

from common.envelope import Envelope, EnvelopeError, describe
from common.logging import printable
from common.senders import event_time, lead_email
from db.engine import is_transient
from db.tables import FINAL_EVENT_STATUSES, dead_letters, webhook_events

logger = logging.getLogger("crm.worker")

# What of a sender's value a minimal dead letter keeps in a listed column.
_MINIMAL_TEXT = 200

_SUMMARY = (
    dead_letters.c.id,
    dead_letters.c.event_id,
    dead_letters.c.provider,
    dead_letters.c.event_type,
    dead_letters.c.reason,
    dead_letters.c.error_class,
    dead_letters.c.error_message,
    dead_letters.c.attempts,
    dead_letters.c.status,
    dead_letters.c.replay_count,
    dead_letters.c.first_failed_at,
    dead_letters.c.last_failed_at,
    dead_letters.c.replayed_at,
)


@dataclass(frozen=True)
class Filters:
    provider: str | None = None
    reason: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = 100  # None: every match (the console's "replay all that match")
    error_class: str | None = None
    lead_email: str | None = None  # case-insensitive


def record(
    conn: Connection,
    *,
    event_id: UUID,
    provider: str,
    event_type: str,
    envelope: dict[str, Any],
    reason: str,
    error_class: str,
    error_message: str,
    traceback: str | None,
    attempts: int,
    lead: str | None = None,
) -> int:
    """Open (or reopen) the event's dead letter; a replay that fails again grows the same row."""
    stmt = insert(dead_letters).values(
        event_id=event_id,
        provider=provider,
        event_type=event_type,
        envelope=envelope,
        lead_email=lead,
        reason=reason,
        error_class=error_class,
        error_message=error_message,
        traceback=traceback,
        attempts=attempts,
        status="open",
    )
    upsert = stmt.on_conflict_do_update(
        constraint="uniq_dead_letters_event",
        set_={
            "reason": stmt.excluded.reason,
            "error_class": stmt.excluded.error_class,
            "error_message": stmt.excluded.error_message,
            "traceback": stmt.excluded.traceback,
            "attempts": dead_letters.c.attempts + stmt.excluded.attempts,
            "status": "open",
            "last_failed_at": func.now(),
            "updated_at": func.now(),
        },
    ).returning(dead_letters.c.id)
    return int(conn.execute(upsert).scalar_one())


def mark_event_dead(
    conn: Connection,
    *,
    event_id: UUID,
    provider: str,
    event_type: str,
    idempotency_key: str,
    payload: dict[str, Any],
    received_at: datetime,
    attempts: int,
    error: str,
    lead: str | None,
    occurred_at: datetime | None = None,
) -> None:
    """Let `GET /events/{id}` say `dead`, unless another delivery already processed the event.
    `lead`: the lead's e-mail as common.senders reads it from the payload."""
    stmt = insert(webhook_events).values(
        id=event_id,
        provider=provider,
        event_type=event_type,
        idempotency_key=idempotency_key,
        payload=payload,
        received_at=received_at,
        occurred_at=occurred_at,
        lead_email=lead,
        status="dead",
        attempts=attempts,
        error=error,
    )
    conn.execute(
        stmt.on_conflict_do_update(
            constraint="uniq_webhook_events_key",
            set_={
                "status": "dead",
                "attempts": webhook_events.c.attempts + stmt.excluded.attempts,
                "error": stmt.excluded.error,
                "updated_at": func.now(),
            },
            where=webhook_events.c.status.not_in(FINAL_EVENT_STATUSES),
        )
    )


def write(
    engine: Engine,
    *,
    task_id: str,
    envelope: Any,
    reason: str,
    error_class: str,
    error_message: str,
    trace: str | None,
    attempts: int,
) -> tuple[int, str]:
    """Write an event's dead letter, whatever its envelope holds; its id and reason. When
    PostgreSQL refuses the full row for good (a value an index or a column cannot take), a
    minimal one is written instead, as `unstorable`. A transient failure is raised."""
    try:
        return _write_full(
            engine,
            task_id=task_id,
            envelope=envelope,
            reason=reason,
            error_class=error_class,
            error_message=error_message,
            trace=trace,
            attempts=attempts,
        ), reason
    except SQLAlchemyError as refused:
        if is_transient(refused):
            raise
        logger.error(
            "event %s: PostgreSQL refused its dead letter (%s); storing a minimal one",
            task_id, type(refused).__name__,
        )  # fmt: skip
        why = str(getattr(refused, "orig", None) or refused).strip()
        error = f"{reason}: {error_message}; the full row was refused: {why}"
    minimal = _write_minimal(
        engine,
        task_id=task_id,
        envelope=envelope,
        error_class=error_class,
        error_message=error,
        attempts=attempts,
    )
    return minimal, "unstorable"


def _write_full(
    engine: Engine,
    *,
    task_id: str,
    envelope: Any,
    reason: str,
    error_class: str,
    error_message: str,
    trace: str | None,
    attempts: int,
) -> int:
    data = envelope if isinstance(envelope, dict) else {"raw": envelope}
    parsed = _parsed(data)
    fields = describe(data)
    event_id = _event_id(parsed, task_id)
    lead = lead_email(parsed.provider, parsed.payload) if parsed else None
    with engine.begin() as conn:
        dead_letter_id = record(
            conn,
            event_id=event_id,
            provider=fields["provider"] or "unknown",
            event_type=fields["event_type"] or "unknown",
            envelope=data,
            reason=reason,
            error_class=error_class,
            error_message=error_message[:4000],
            traceback=trace[-20000:] if trace else None,
            attempts=attempts,
            lead=lead,
        )
        if parsed is not None:
            received_at = datetime.fromisoformat(parsed.received_at)
            mark_event_dead(
                conn,
                event_id=event_id,
                provider=parsed.provider,
                event_type=parsed.event_type,
                idempotency_key=parsed.idempotency_key,
                payload=parsed.payload,
                received_at=received_at,
                occurred_at=event_time(parsed.provider, parsed.payload, received_at)[0],
                attempts=attempts,
                error=f"{reason}: {error_message}"[:4000],
                lead=lead,
            )
    return dead_letter_id


def _write_minimal(
    engine: Engine,
    *,
    task_id: str,
    envelope: Any,
    error_class: str,
    error_message: str,
    attempts: int,
) -> int:
    """Nothing in it an index or a text column could refuse: the envelope as ASCII JSON text
    inside an object (no payload path there to index), each value from the sender made
    printable (NUL and lone surrogates escaped, as in a log line) and cut. The event row says
    `dead` too, when even a minimal one fits."""
    parsed = _parsed(envelope)
    fields = describe(envelope)
    event_id = _event_id(parsed, task_id)
    provider = printable(fields["provider"] or "unknown", _MINIMAL_TEXT)
    event_type = printable(fields["event_type"] or "unknown", _MINIMAL_TEXT)
    error = printable(error_message, 4000)
    with engine.begin() as conn:
        dead_letter_id = record(
            conn,
            event_id=event_id,
            provider=provider,
            event_type=event_type,
            envelope={"unstorable": json.dumps(envelope, ensure_ascii=True, default=str)},
            reason="unstorable",
            error_class=printable(error_class, _MINIMAL_TEXT),
            error_message=error,
            traceback=None,
            attempts=attempts,
        )
        if parsed is not None:
            try:
                with conn.begin_nested():
                    mark_event_dead(
                        conn,
                        event_id=event_id,
                        provider=provider,
                        event_type=event_type,
                        idempotency_key=printable(parsed.idempotency_key, 255),
                        payload={},
                        received_at=datetime.fromisoformat(parsed.received_at),
                        attempts=attempts,
                        error=error,
                        lead=None,
                    )
            except SQLAlchemyError as exc:
                logger.error("event %s: no event row either (%s)", task_id, type(exc).__name__)
    return dead_letter_id


def _parsed(data: Any) -> Envelope | None:
    try:
        return Envelope.from_dict(data)
    except EnvelopeError:
        return None


def _event_id(parsed: Envelope | None, task_id: str) -> UUID:
    """The event's id: its envelope's, else its task's (the same, when the receiver built it)."""
    for candidate in (parsed.event_id if parsed else "", task_id):
        try:
            return UUID(candidate)
        except ValueError:
            continue
    return uuid.uuid4()


QueryT = TypeVar("QueryT", bound="Select[*tuple[Any, ...]]")


def matching(query: QueryT, filters: Filters) -> QueryT:
    """`query` narrowed to the dead letters the filters match (no order, no limit)."""
    if filters.provider:
        query = query.where(dead_letters.c.provider == filters.provider)
    if filters.reason:
        query = query.where(dead_letters.c.reason == filters.reason)
    if filters.status:
        query = query.where(dead_letters.c.status == filters.status)
    if filters.since:
        query = query.where(dead_letters.c.last_failed_at >= filters.since)
    if filters.until:
        query = query.where(dead_letters.c.last_failed_at < filters.until)
    if filters.error_class:
        query = query.where(dead_letters.c.error_class == filters.error_class)
    if filters.lead_email:
        query = query.where(dead_letters.c.lead_email == filters.lead_email.strip().lower())
    return query


def _filtered(query: Select[Any], filters: Filters) -> Select[Any]:
    return matching(query, filters).order_by(dead_letters.c.id).limit(filters.limit)


def _plain(row: Any) -> dict[str, Any]:
    return {
        key: (value.isoformat() if isinstance(value, datetime) else value)
        for key, value in row._mapping.items()
    } | {"event_id": str(row.event_id)}


def list_dead_letters(conn: Connection, filters: Filters) -> list[dict[str, Any]]:
    return [_plain(row) for row in conn.execute(_filtered(select(*_SUMMARY), filters))]


def get_dead_letter(conn: Connection, *, dead_letter_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        select(*_SUMMARY, dead_letters.c.envelope, dead_letters.c.traceback).where(
            dead_letters.c.id == dead_letter_id
        )
    ).first()
    return None if row is None else _plain(row)


def matching_ids(conn: Connection, filters: Filters) -> list[int]:
    return list(conn.execute(_filtered(select(dead_letters.c.id), filters)).scalars())


def claim_for_replay(conn: Connection, *, dead_letter_id: int) -> dict[str, Any] | None:
    """Mark one open dead letter replayed and return its envelope; None if it does not exist or
    is not open (discarded, or replayed already: of concurrent replays exactly one wins, since
    a second UPDATE waits for the first's commit and then finds the row no longer open). The
    row stays locked until the caller commits, after queueing the envelope, so a worker that
    fails the replay again reopens the row only after this mark."""
    row = conn.execute(
        update(dead_letters)
        .where(dead_letters.c.id == dead_letter_id, dead_letters.c.status == "open")
        .values(
            status="replayed",
            replay_count=dead_letters.c.replay_count + 1,
            replayed_at=func.now(),
            updated_at=func.now(),
        )
        .returning(dead_letters.c.envelope)
    ).first()
    return None if row is None else dict(row.envelope)


def discard(conn: Connection, *, dead_letter_id: int) -> bool:
    """Take a dead letter off the open list. The row stays, for the record."""
    done = conn.execute(
        update(dead_letters)
        .where(dead_letters.c.id == dead_letter_id, dead_letters.c.status != "discarded")
        .values(status="discarded", updated_at=func.now())
    )
    return bool(done.rowcount)


def open_by_reason(conn: Connection) -> dict[str, int]:
    """How many dead letters wait for an admin, by reason."""
    query = (
        select(dead_letters.c.reason, func.count())
        .where(dead_letters.c.status == "open")
        .group_by(dead_letters.c.reason)
        .order_by(dead_letters.c.reason)
    )
    return {reason: int(count) for reason, count in conn.execute(query)}


def id_for_event(conn: Connection, *, event_id: UUID) -> int | None:
    found = conn.execute(select(dead_letters.c.id).where(dead_letters.c.event_id == event_id))
    value = found.scalar_one_or_none()
    return None if value is None else int(value)
