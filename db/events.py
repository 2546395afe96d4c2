"""The durable idempotency guard: one webhook_events row per (provider, idempotency_key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert

from db.tables import FINAL_EVENT_STATUSES, webhook_events


@dataclass(frozen=True)
class Claim:
    """Who owns the event now. `done` means an earlier delivery already applied its effects."""

    event_id: UUID
    done: bool
    result: dict[str, Any] | None


# Built once: constructing Core statements per call costs more than executing them.
_INSERT_EVENT = (
    insert(webhook_events)
    .values(
        id=bindparam("event_id"),
        provider=bindparam("provider"),
        event_type=bindparam("event_type"),
        idempotency_key=bindparam("idempotency_key"),
        status="queued",
        attempts=bindparam("attempts"),
        payload=bindparam("payload", type_=webhook_events.c.payload.type),
        received_at=bindparam("received_at"),
        occurred_at=bindparam("occurred_at"),
        lead_email=bindparam("lead_email"),
    )
    # Any conflict: on the key (another delivery), or on the id too (two copies of one
    # message inserting at once would otherwise collide on the primary key first).
    .on_conflict_do_nothing()
    .returning(webhook_events.c.id)
)
_LOCK_EVENT = (
    select(webhook_events.c.id, webhook_events.c.status, webhook_events.c.result)
    .where(
        webhook_events.c.provider == bindparam("provider"),
        webhook_events.c.idempotency_key == bindparam("idempotency_key"),
    )
    .with_for_update()
)
_FINISH_EVENT = (
    update(webhook_events)
    .where(webhook_events.c.id == bindparam("event_id"))
    .values(
        status=bindparam("new_status"),
        result=bindparam("new_result", type_=webhook_events.c.result.type),
        error=bindparam("new_error"),
        processed_at=func.clock_timestamp(),
        updated_at=func.now(),
    )
)


def claim_event(
    conn: Connection,
    *,
    event_id: UUID,
    provider: str,
    event_type: str,
    idempotency_key: str,
    payload: dict[str, Any],
    received_at: datetime,
    occurred_at: datetime,
    lead_email: str | None,
    attempts: int,
) -> Claim:
    """Insert the event row, or lock the existing one. Must run inside the transaction that
    writes the event's effects, so the row and the effects commit or vanish together."""
    params = {
        "event_id": event_id,
        "provider": provider,
        "event_type": event_type,
        "idempotency_key": idempotency_key,
        "attempts": attempts,
        "payload": payload,
        "received_at": received_at,
        "occurred_at": occurred_at,
        "lead_email": lead_email,
    }
    inserted = conn.execute(_INSERT_EVENT, params).scalar()
    if inserted is not None:
        return Claim(event_id=UUID(str(inserted)), done=False, result=None)
    # A redelivery or a replay. The row lock serialises it against any concurrent copy.
    row = conn.execute(_LOCK_EVENT, params).one()
    if row.status in FINAL_EVENT_STATUSES:
        return Claim(event_id=UUID(str(row.id)), done=True, result=row.result)
    conn.execute(
        update(webhook_events)
        .where(webhook_events.c.id == row.id)
        .values(
            attempts=webhook_events.c.attempts + attempts,
            # A row a dead letter wrote before 007 (or without a time) learns it now.
            occurred_at=func.coalesce(webhook_events.c.occurred_at, occurred_at),
            updated_at=func.now(),
        )
    )
    return Claim(event_id=UUID(str(row.id)), done=False, result=None)


def finish_event(
    conn: Connection,
    *,
    event_id: UUID,
    status: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    conn.execute(
        _FINISH_EVENT,
        {"event_id": event_id, "new_status": status, "new_result": result, "new_error": error},
    )


def get_event(conn: Connection, *, event_id: UUID) -> dict[str, Any] | None:
    row = conn.execute(
        select(
            webhook_events.c.id,
            webhook_events.c.provider,
            webhook_events.c.event_type,
            webhook_events.c.status,
            webhook_events.c.attempts,
            webhook_events.c.received_at,
            webhook_events.c.occurred_at,
            webhook_events.c.processed_at,
            webhook_events.c.result,
            webhook_events.c.error,
        ).where(webhook_events.c.id == event_id)
    ).first()
    if row is None:
        return None
    return {
        "event_id": str(row.id),
        "provider": row.provider,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "received_at": row.received_at.isoformat(),
        "occurred_at": row.occurred_at.isoformat() if row.occurred_at else None,
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
        "result": row.result,
        "error": row.error,
    }


def finished_since(conn: Connection, *, seconds: float) -> int:
    """Events whose outcome was committed in the last `seconds`."""
    query = select(func.count()).where(
        webhook_events.c.processed_at > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)
    )
    return int(conn.execute(query).scalar_one())
