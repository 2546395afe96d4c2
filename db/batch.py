"""A batch of events written set-based: one statement per table for the whole batch (arrays
and `unnest`), whatever its size. The worker decides what each event does
(worker.processing); these carry it out. Each takes a Connection first.

The statements are plain SQL in the driver's own parameter style, so bench/reference.py runs
the very same ones on a bare psycopg2 connection. Every statement that takes row locks takes
them in one global order (idempotency keys, company domains, contact e-mails, each sorted),
so two batches never wait for each other in a circle."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

# The guard rows: every new one inserted, and every one already there locked and read.
CLAIM_EVENTS = """
WITH given AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(providers)s::text[], %(types)s::text[],
                         %(keys)s::text[], %(attempts)s::int[], %(payloads)s::text[],
                         %(received)s::timestamptz[], %(occurred)s::timestamptz[],
                         %(emails)s::text[])
        AS g(id, provider, event_type, idempotency_key, attempts, payload, received_at,
             occurred_at, lead_email)
), inserted AS (
    INSERT INTO webhook_events (id, provider, event_type, idempotency_key, status, attempts,
                                payload, received_at, occurred_at, lead_email)
    SELECT id, provider, event_type, idempotency_key, 'queued', attempts, payload::jsonb,
           received_at, occurred_at, lead_email
    FROM given ORDER BY provider, idempotency_key
    ON CONFLICT DO NOTHING
    RETURNING provider, idempotency_key
)
SELECT provider, idempotency_key, NULL::uuid AS id, NULL::text AS status, NULL::jsonb AS result
FROM inserted
"""
LOCK_EVENTS = """
SELECT e.provider, e.idempotency_key, e.id, e.status, e.result
FROM webhook_events e
JOIN unnest(%(providers)s::text[], %(keys)s::text[]) AS g(provider, idempotency_key)
  ON e.provider = g.provider AND e.idempotency_key = g.idempotency_key
ORDER BY e.provider, e.idempotency_key
FOR UPDATE OF e
"""
# A redelivery or replay of an event not finished yet: its attempts count, and a row a dead
# letter wrote before 007 (or without a time) learns the event's time.
RETRY_EVENTS = """
UPDATE webhook_events e SET attempts = e.attempts + g.attempts,
    occurred_at = coalesce(e.occurred_at, g.occurred_at), updated_at = now()
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(occurred)s::timestamptz[])
    AS g(id, attempts, occurred_at)
WHERE e.id = g.id
"""
# DO UPDATE, not DO NOTHING: it returns the rows already there too (locked), in one
# statement. A company is never renamed: the name it is set to is its own.
UPSERT_COMPANIES = """
INSERT INTO companies (name, domain)
SELECT name, lower(domain) FROM unnest(%(names)s::text[], %(domains)s::text[]) AS g(name, domain)
ORDER BY lower(domain)
ON CONFLICT (lower(domain)) DO UPDATE SET name = companies.name
RETURNING id, domain
"""
# Fills empty fields only, so what a person edited in the CRM is never overwritten by what a
# sales tool sends later.
UPSERT_CONTACTS = """
INSERT INTO contacts (email, first_name, last_name, company_id, source)
SELECT email, first_name, last_name, company_id, source
FROM unnest(%(emails)s::text[], %(first_names)s::text[], %(last_names)s::text[],
            %(companies)s::uuid[], %(sources)s::text[])
    AS g(email, first_name, last_name, company_id, source)
ORDER BY lower(email)
ON CONFLICT (lower(email)) DO UPDATE SET
    first_name = coalesce(nullif(contacts.first_name, ''), excluded.first_name),
    last_name = coalesce(nullif(contacts.last_name, ''), excluded.last_name),
    company_id = coalesce(contacts.company_id, excluded.company_id),
    source = coalesce(contacts.source, excluded.source),
    updated_at = now()
RETURNING id, lower(email)
"""
DEFAULT_STAGES = """
SELECT s.name, p.id, s.id, s.order_index
FROM pipelines p JOIN pipeline_stages s ON s.pipeline_id = p.id
WHERE p.is_default
"""
# Each contact's furthest deal in the default pipeline. The contacts' rows are locked by the
# upsert above, which serialises this per contact across batches.
CURRENT_DEALS = """
SELECT DISTINCT ON (d.contact_id) d.contact_id, d.id, s.name
FROM deals d
JOIN pipeline_stages s ON s.id = d.stage_id
JOIN pipelines p ON p.id = d.pipeline_id AND p.is_default
WHERE d.contact_id = ANY(%(contacts)s::uuid[])
ORDER BY d.contact_id, s.order_index DESC
"""
WRITE_DEALS = """
WITH created AS (
    INSERT INTO deals (id, contact_id, pipeline_id, stage_id, title, company_id, source)
    SELECT * FROM unnest(%(new_ids)s::uuid[], %(new_contacts)s::uuid[],
                         %(new_pipelines)s::uuid[], %(new_stages)s::uuid[],
                         %(new_titles)s::text[], %(new_companies)s::uuid[],
                         %(new_sources)s::text[])
    RETURNING id
), moved AS (
    UPDATE deals d SET stage_id = g.stage_id, updated_at = now()
    FROM unnest(%(moved_ids)s::uuid[], %(moved_stages)s::uuid[]) AS g(id, stage_id)
    WHERE d.id = g.id
    RETURNING d.id
)
SELECT (SELECT count(*) FROM created), (SELECT count(*) FROM moved)
"""
INSERT_ACTIVITIES = """
INSERT INTO activities (id, type, contact_id, deal_id, subject, body, metadata, event_id,
                        occurred_at)
SELECT id, type, contact_id, deal_id, subject, body, metadata::jsonb, event_id, occurred_at
FROM unnest(%(ids)s::uuid[], %(types)s::text[], %(contacts)s::uuid[], %(deals)s::uuid[],
            %(subjects)s::text[], %(bodies)s::text[], %(metadata)s::text[],
            %(events)s::uuid[], %(occurred)s::timestamptz[])
    AS g(id, type, contact_id, deal_id, subject, body, metadata, event_id, occurred_at)
"""
# Bounced or unsubscribed: never contact again. Nothing here ever clears the flag.
MARK_DO_NOT_CONTACT = """
UPDATE contacts SET do_not_contact = true, updated_at = now() WHERE id = ANY(%(ids)s::uuid[])
"""
FINISH_EVENTS = """
UPDATE webhook_events e SET status = g.status, result = g.result::jsonb, error = NULL,
    processed_at = clock_timestamp(), updated_at = now()
FROM unnest(%(ids)s::uuid[], %(statuses)s::text[], %(results)s::text[]) AS g(id, status, result)
WHERE e.id = g.id
"""


def _text(values: Sequence[object | None]) -> list[str | None]:
    """UUIDs (and anything else) as text, for an array the statement casts."""
    return [None if value is None else str(value) for value in values]


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value)


@dataclass(frozen=True)
class NewEvent:
    event_id: UUID
    provider: str
    event_type: str
    idempotency_key: str
    attempts: int
    payload: dict[str, Any]
    received_at: datetime
    occurred_at: datetime
    lead_email: str | None


@dataclass(frozen=True)
class Claim:
    event_id: UUID  # the row's: a redelivery under another id finds the first one's
    done: bool  # already processed or ignored: nothing to do again
    result: dict[str, Any] | None


def claim_events(conn: Connection, batch: Sequence[NewEvent]) -> dict[tuple[str, str], Claim]:
    """Each event's guard row, by (provider, idempotency key): inserted, or the one already
    there locked. `batch` holds each key once. Must run in the transaction that writes the
    events' effects, so the rows and the effects commit or vanish together."""
    inserted = conn.exec_driver_sql(
        CLAIM_EVENTS,
        {
            "ids": _text([each.event_id for each in batch]),
            "providers": [each.provider for each in batch],
            "types": [each.event_type for each in batch],
            "keys": [each.idempotency_key for each in batch],
            "attempts": [each.attempts for each in batch],
            "payloads": [_json(each.payload) for each in batch],
            "received": [each.received_at for each in batch],
            "occurred": [each.occurred_at for each in batch],
            "emails": [each.lead_email for each in batch],
        },
    ).all()
    new = {(row[0], row[1]) for row in inserted}
    claims = {
        (each.provider, each.idempotency_key): Claim(each.event_id, done=False, result=None)
        for each in batch
        if (each.provider, each.idempotency_key) in new
    }
    rest = [each for each in batch if (each.provider, each.idempotency_key) not in new]
    if not rest:
        return claims
    rows = conn.exec_driver_sql(
        LOCK_EVENTS,
        {
            "providers": [each.provider for each in rest],
            "keys": [each.idempotency_key for each in rest],
        },
    ).all()
    found = {(row[0], row[1]): row for row in rows}
    retried = []
    for each in rest:
        provider, key, row_id, status, result = found[(each.provider, each.idempotency_key)]
        done = status in ("processed", "ignored")
        claims[(provider, key)] = Claim(UUID(str(row_id)), done=done, result=result)
        if not done:
            retried.append((UUID(str(row_id)), each))
    if retried:
        conn.exec_driver_sql(
            RETRY_EVENTS,
            {
                "ids": _text([row_id for row_id, _ in retried]),
                "attempts": [each.attempts for _, each in retried],
                "occurred": [each.occurred_at for _, each in retried],
            },
        )
    return claims


def upsert_companies(conn: Connection, companies: Sequence[tuple[str, str]]) -> dict[str, UUID]:
    """(name, domain) pairs, one per domain: each company's id by lower-case domain."""
    if not companies:
        return {}
    rows = conn.exec_driver_sql(
        UPSERT_COMPANIES,
        {"names": [name for name, _ in companies], "domains": [d for _, d in companies]},
    ).all()
    return {str(row[1]).lower(): UUID(str(row[0])) for row in rows}


@dataclass(frozen=True)
class ContactRow:
    email: str
    first_name: str | None
    last_name: str | None
    company_id: UUID | None
    source: str


def upsert_contacts(conn: Connection, contacts: Sequence[ContactRow]) -> dict[str, UUID]:
    """One row per lower-case e-mail: each contact's id by lower-case e-mail."""
    if not contacts:
        return {}
    rows = conn.exec_driver_sql(
        UPSERT_CONTACTS,
        {
            "emails": [row.email for row in contacts],
            "first_names": [row.first_name for row in contacts],
            "last_names": [row.last_name for row in contacts],
            "companies": _text([row.company_id for row in contacts]),
            "sources": [row.source for row in contacts],
        },
    ).all()
    return {str(row[1]): UUID(str(row[0])) for row in rows}


@dataclass(frozen=True)
class Stage:
    pipeline_id: UUID
    stage_id: UUID
    order: int


def default_stages(conn: Connection) -> dict[str, Stage]:
    """The default pipeline's stages by name (none when there is no default pipeline)."""
    rows = conn.exec_driver_sql(DEFAULT_STAGES).all()
    return {row[0]: Stage(UUID(str(row[1])), UUID(str(row[2])), row[3]) for row in rows}


def current_deals(conn: Connection, contact_ids: Sequence[UUID]) -> dict[UUID, tuple[UUID, str]]:
    """Each contact's furthest deal in the default pipeline: (deal id, stage name)."""
    if not contact_ids:
        return {}
    rows = conn.exec_driver_sql(CURRENT_DEALS, {"contacts": _text(contact_ids)}).all()
    return {UUID(str(row[0])): (UUID(str(row[1])), row[2]) for row in rows}


@dataclass(frozen=True)
class NewDeal:
    deal_id: UUID
    contact_id: UUID
    stage: Stage
    title: str
    company_id: UUID | None
    source: str


def write_deals(
    conn: Connection, created: Sequence[NewDeal], moved: Sequence[tuple[UUID, UUID]]
) -> None:
    """New deals, and (deal id, stage id) moves: one statement for both."""
    if not created and not moved:
        return
    conn.exec_driver_sql(
        WRITE_DEALS,
        {
            "new_ids": _text([deal.deal_id for deal in created]),
            "new_contacts": _text([deal.contact_id for deal in created]),
            "new_pipelines": _text([deal.stage.pipeline_id for deal in created]),
            "new_stages": _text([deal.stage.stage_id for deal in created]),
            "new_titles": [deal.title for deal in created],
            "new_companies": _text([deal.company_id for deal in created]),
            "new_sources": [deal.source for deal in created],
            "moved_ids": _text([deal_id for deal_id, _ in moved]),
            "moved_stages": _text([stage_id for _, stage_id in moved]),
        },
    )


@dataclass(frozen=True)
class ActivityRow:
    activity_id: UUID
    type: str
    contact_id: UUID
    deal_id: UUID | None
    subject: str | None
    body: str | None
    metadata: dict[str, Any]
    event_id: UUID
    occurred_at: datetime


def insert_activities(conn: Connection, rows: Sequence[ActivityRow]) -> None:
    if not rows:
        return
    conn.exec_driver_sql(
        INSERT_ACTIVITIES,
        {
            "ids": _text([row.activity_id for row in rows]),
            "types": [row.type for row in rows],
            "contacts": _text([row.contact_id for row in rows]),
            "deals": _text([row.deal_id for row in rows]),
            "subjects": [row.subject for row in rows],
            "bodies": [row.body for row in rows],
            "metadata": [_json(row.metadata) for row in rows],
            "events": _text([row.event_id for row in rows]),
            "occurred": [row.occurred_at for row in rows],
        },
    )


def mark_do_not_contact(conn: Connection, contact_ids: Sequence[UUID]) -> None:
    if contact_ids:
        conn.exec_driver_sql(MARK_DO_NOT_CONTACT, {"ids": _text(contact_ids)})


def finish_events(conn: Connection, outcomes: Sequence[tuple[UUID, str, dict[str, Any]]]) -> None:
    """(event row id, status, result) for each event: its outcome, in one statement."""
    if outcomes:
        conn.exec_driver_sql(
            FINISH_EVENTS,
            {
                "ids": _text([row_id for row_id, _, _ in outcomes]),
                "statuses": [status for _, status, _ in outcomes],
                "results": [_json(result) for _, _, result in outcomes],
            },
        )
