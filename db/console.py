"""The console's queries: events by lead e-mail and filter (newest first, keyset pages), a
lead's whole story, recent counts, dead letters grouped by cause. Each one is served by an
index of migration 006 (or older), so pages stay fast on large tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, func, select, tuple_

from db import dead_letters as dead_letter_queries
from db.tables import (
    activities,
    companies,
    contacts,
    dead_letters,
    deals,
    pipeline_stages,
    webhook_events,
)


@dataclass(frozen=True)
class EventFilters:
    lead_email: str | None = None
    provider: str | None = None
    event_type: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _rows(result: Any) -> list[dict[str, Any]]:
    return [dict(row) for row in result.mappings()]


_EVENT_SUMMARY = (
    webhook_events.c.id,
    webhook_events.c.provider,
    webhook_events.c.event_type,
    webhook_events.c.status,
    webhook_events.c.attempts,
    webhook_events.c.received_at,
    webhook_events.c.occurred_at,
    webhook_events.c.processed_at,
    webhook_events.c.lead_email,
)


def search_events(
    conn: Connection,
    filters: EventFilters,
    *,
    before: tuple[datetime, UUID] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first; `before` is the (received_at, id) of the last row of the previous page."""
    query = select(*_EVENT_SUMMARY)
    if filters.lead_email:
        query = query.where(webhook_events.c.lead_email == filters.lead_email.strip().lower())
    if filters.provider:
        query = query.where(webhook_events.c.provider == filters.provider)
    if filters.event_type:
        query = query.where(webhook_events.c.event_type == filters.event_type)
    if filters.status:
        query = query.where(webhook_events.c.status == filters.status)
    if filters.since:
        query = query.where(webhook_events.c.received_at >= filters.since)
    if filters.until:
        query = query.where(webhook_events.c.received_at < filters.until)
    if before is not None:
        query = query.where(
            tuple_(webhook_events.c.received_at, webhook_events.c.id) < tuple_(*before)
        )
    order = (webhook_events.c.received_at.desc(), webhook_events.c.id.desc())
    return _rows(conn.execute(query.order_by(*order).limit(limit)))


def event(conn: Connection, *, event_id: UUID) -> dict[str, Any] | None:
    row = (
        conn.execute(select(webhook_events).where(webhook_events.c.id == event_id))
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


def last_day(conn: Connection) -> tuple[list[dict[str, Any]], dict[str, dict[Any, int]]]:
    """The last day's events, from one scan: their counts by provider, type and status for the
    last hour and the day (the overview's table), and minute by minute what was received by
    status (`received:<status>`) and how many dead letters were opened (`opened`), each
    {minute: count} (its pictures)."""
    day = func.now() - func.make_interval(0, 0, 0, 1)
    hour = datetime.now(UTC) - timedelta(hours=1)
    minute = func.date_trunc("minute", webhook_events.c.received_at)
    rows = conn.execute(
        select(
            webhook_events.c.provider,
            webhook_events.c.event_type,
            webhook_events.c.status,
            minute,
            func.count(),
        )
        .where(webhook_events.c.received_at >= day)
        .group_by(
            webhook_events.c.provider, webhook_events.c.event_type, webhook_events.c.status, minute
        )
    )
    counts: dict[tuple[str, str, str], dict[str, Any]] = {}
    minutes: dict[str, dict[Any, int]] = {}
    for provider, event_type, status, at, count in rows:
        row = counts.setdefault(
            (provider, event_type, status),
            {"provider": provider, "event_type": event_type, "status": status,
             "last_hour": 0, "last_day": 0},
        )  # fmt: skip
        row["last_day"] += count
        if at + timedelta(minutes=1) > hour:  # a minute that reaches into the last hour
            row["last_hour"] += count
        received = minutes.setdefault(f"received:{status}", {})
        received[at] = received.get(at, 0) + count
    opened_minute = func.date_trunc("minute", dead_letters.c.first_failed_at)
    opened = conn.execute(
        select(opened_minute, func.count())
        .where(dead_letters.c.first_failed_at >= day)
        .group_by(opened_minute)
    )
    minutes["opened"] = {at: int(count) for at, count in opened}
    table = sorted(counts.values(), key=lambda row: row["last_day"], reverse=True)
    return table, minutes


def last_failures(conn: Connection, *, limit: int = 10) -> list[dict[str, Any]]:
    query = (
        select(
            dead_letters.c.id,
            dead_letters.c.provider,
            dead_letters.c.event_type,
            dead_letters.c.reason,
            dead_letters.c.error_class,
            dead_letters.c.error_message,
            dead_letters.c.last_failed_at,
        )
        .where(dead_letters.c.status == "open")
        .order_by(dead_letters.c.last_failed_at.desc())
        .limit(limit)
    )
    return _rows(conn.execute(query))


def dead_letter_groups(conn: Connection, *, status: str | None) -> list[dict[str, Any]]:
    """Dead letters grouped by provider, reason and error class, with counts and first and
    last seen: the causes, biggest first."""
    query = select(
        dead_letters.c.provider,
        dead_letters.c.reason,
        dead_letters.c.error_class,
        func.count().label("count"),
        func.min(dead_letters.c.first_failed_at).label("first_seen"),
        func.max(dead_letters.c.last_failed_at).label("last_seen"),
    )
    if status:
        query = query.where(dead_letters.c.status == status)
    query = query.group_by(
        dead_letters.c.provider, dead_letters.c.reason, dead_letters.c.error_class
    ).order_by(func.count().desc())
    return _rows(conn.execute(query))


def dead_letter_page(
    conn: Connection,
    filters: dead_letter_queries.Filters,
    *,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first, a page at a time (`before_id`: the last id of the previous page)."""
    query = dead_letter_queries.matching(
        select(
            dead_letters.c.id,
            dead_letters.c.provider,
            dead_letters.c.event_type,
            dead_letters.c.reason,
            dead_letters.c.error_class,
            dead_letters.c.error_message,
            dead_letters.c.status,
            dead_letters.c.attempts,
            dead_letters.c.last_failed_at,
        ),
        filters,
    )
    if before_id is not None:
        query = query.where(dead_letters.c.id < before_id)
    return _rows(conn.execute(query.order_by(dead_letters.c.id.desc()).limit(limit)))


def count_matching(conn: Connection, filters: dead_letter_queries.Filters) -> dict[str, int]:
    """How many dead letters match, and how many of them a replay would skip (not open:
    discarded, or replayed already)."""
    query = dead_letter_queries.matching(
        select(
            func.count().label("matched"),
            func.count().filter(dead_letters.c.status != "open").label("skipped"),
        ),
        filters,
    )
    row = conn.execute(query).one()
    return {"matched": int(row.matched), "skipped": int(row.skipped)}


def dead_letter_choices(conn: Connection) -> dict[str, list[str]]:
    """The providers, reasons and error classes dead letters have: the console's filters offer
    these, not free text."""
    found: dict[str, set[str]] = {"provider": set(), "reason": set(), "error_class": set()}
    rows = conn.execute(
        select(
            dead_letters.c.provider, dead_letters.c.reason, dead_letters.c.error_class
        ).distinct()
    )
    for provider, reason, error_class in rows:
        found["provider"].add(provider)
        found["reason"].add(reason)
        found["error_class"].add(error_class)
    return {name: sorted(values) for name, values in found.items()}


def lead(conn: Connection, *, email: str) -> dict[str, Any] | None:
    """A lead's contact, company, deal and stage, activities and events: None if no contact
    and no event has this e-mail."""
    wanted = email.strip().lower()
    found = (
        conn.execute(
            select(contacts, companies.c.name.label("company_name"), companies.c.domain)
            .select_from(contacts.outerjoin(companies, companies.c.id == contacts.c.company_id))
            .where(func.lower(contacts.c.email) == wanted)
        )
        .mappings()
        .first()
    )
    contact = None if found is None else dict(found)
    found_events = search_events(conn, EventFilters(lead_email=wanted), limit=200)
    if contact is None and not found_events:
        return None
    lead_deals: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    if contact is not None:
        lead_deals = _rows(
            conn.execute(
                select(deals, pipeline_stages.c.name.label("stage"))
                .join(pipeline_stages, pipeline_stages.c.id == deals.c.stage_id)
                .where(deals.c.contact_id == contact["id"])
                .order_by(deals.c.created_at)
            )
        )
        notes = _rows(
            conn.execute(
                select(activities)
                .where(activities.c.contact_id == contact["id"])
                .order_by(activities.c.occurred_at)
            )
        )
    # In the order things happened, as the senders tell it (a replayed or late event keeps
    # its place), not in the order they reached us.
    timeline = sorted(
        [
            {"at": e["occurred_at"] or e["received_at"], "kind": "event", "item": e}
            for e in found_events
        ]
        + [{"at": n["occurred_at"], "kind": "activity", "item": n} for n in notes],
        key=lambda entry: entry["at"],
    )
    return {
        "email": wanted,
        "contact": contact,
        "deals": lead_deals,
        "timeline": timeline,
    }


def activities_of_event(conn: Connection, *, event_id: UUID) -> list[dict[str, Any]]:
    query = select(activities.c.id, activities.c.type, activities.c.subject).where(
        activities.c.event_id == event_id
    )
    return _rows(conn.execute(query))
