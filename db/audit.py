"""The audit trail of admin actions on dead letters: written once, never changed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select

from db.tables import admin_actions


def record(
    conn: Connection,
    *,
    actor: str,
    role: str,
    source: str,
    action: str,
    dead_letter_ids: list[int],
    filters: dict[str, Any] | None,
    replayed: int,
    skipped: int,
    failed: int,
    outcome: str,
    matched: int | None = None,
) -> int:
    return int(
        conn.execute(
            insert(admin_actions)
            .values(
                actor=actor,
                role=role,
                source=source,
                action=action,
                dead_letter_ids=dead_letter_ids,
                filters=filters,
                matched=len(dead_letter_ids) if matched is None else matched,
                replayed=replayed,
                skipped=skipped,
                failed=failed,
                outcome=outcome,
            )
            .returning(admin_actions.c.id)
        ).scalar_one()
    )


def recent(
    conn: Connection, *, limit: int = 50, before_id: int | None = None
) -> list[dict[str, Any]]:
    """Newest first; `before_id` pages further back (keyset)."""
    query = select(admin_actions).order_by(admin_actions.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(admin_actions.c.id < before_id)
    return [dict(row) for row in conn.execute(query).mappings()]


def for_dead_letter(conn: Connection, *, dead_letter_id: int) -> list[dict[str, Any]]:
    """Every action that named this dead letter, oldest first: its history."""
    query = (
        select(admin_actions)
        .where(admin_actions.c.dead_letter_ids.contains([dead_letter_id]))
        .order_by(admin_actions.c.id)
    )
    return [dict(row) for row in conn.execute(query).mappings()]
