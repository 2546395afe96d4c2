"""Reading the durable guard rows (webhook_events) back: one event's status, and how many
finished lately. They are written with the batch that applies them (db.batch)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import Connection, func, select

from db.tables import webhook_events


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
