"""Step E: the CRM writes an Instantly reply turns into. Each takes a Connection first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Text, func, literal, select
from sqlalchemy.dialects.postgresql import UUID as UUID_TYPE
from sqlalchemy.dialects.postgresql import insert

from db.tables import activities, companies, contacts, deals, pipeline_stages, pipelines


@dataclass(frozen=True)
class DefaultStage:
    pipeline_id: UUID
    stage_id: UUID


def get_default_stage(conn: Connection, *, stage_name: str = "New") -> DefaultStage | None:
    """The named stage of the default pipeline, or None when either is missing."""
    row = conn.execute(
        select(pipelines.c.id, pipeline_stages.c.id)
        .join(pipeline_stages, pipeline_stages.c.pipeline_id == pipelines.c.id)
        .where(pipelines.c.is_default, pipeline_stages.c.name == stage_name)
    ).first()
    return None if row is None else DefaultStage(pipeline_id=row[0], stage_id=row[1])


def upsert_company(conn: Connection, *, name: str, domain: str) -> UUID:
    """The company with this domain (case-insensitive), created if new; a name is never renamed."""
    inserted = conn.execute(
        insert(companies)
        .values(name=name, domain=domain.lower())
        .on_conflict_do_nothing(index_elements=[func.lower(companies.c.domain)])
        .returning(companies.c.id)
    ).scalar()
    if inserted is not None:
        return UUID(str(inserted))
    # DO NOTHING waited for any concurrent insert of this domain to commit, so the row is visible.
    existing = conn.execute(
        select(companies.c.id).where(func.lower(companies.c.domain) == domain.lower())
    ).scalar_one()
    return UUID(str(existing))


def upsert_contact(
    conn: Connection,
    *,
    email: str,
    first_name: str | None = None,
    last_name: str | None = None,
    company_id: UUID | None = None,
    source: str | None = None,
) -> UUID:
    """The contact with this e-mail (case-insensitive). Fills empty fields only, so what a person
    edited in the CRM is never overwritten by what a sales tool sends later."""
    stmt = insert(contacts).values(
        email=email,
        first_name=first_name,
        last_name=last_name,
        company_id=company_id,
        source=source,
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[func.lower(contacts.c.email)],
        set_={
            "first_name": func.coalesce(
                func.nullif(contacts.c.first_name, ""), stmt.excluded.first_name
            ),
            "last_name": func.coalesce(
                func.nullif(contacts.c.last_name, ""), stmt.excluded.last_name
            ),
            "company_id": func.coalesce(contacts.c.company_id, stmt.excluded.company_id),
            "source": func.coalesce(contacts.c.source, stmt.excluded.source),
            "updated_at": func.now(),
        },
    ).returning(contacts.c.id)
    return UUID(str(conn.execute(upsert).scalar_one()))


def upsert_deal(
    conn: Connection,
    *,
    contact_id: UUID,
    title: str,
    stage_name: str = "New",
    company_id: UUID | None = None,
    source: str | None = None,
) -> UUID | None:
    """The contact's deal in the default pipeline's stage `stage_name`: one per
    (contact_id, stage_id), created if new. None when there is no default pipeline or it has no
    such stage. The stage is looked up inside the same statement, so it is never stale and costs
    no round trip of its own."""
    stage = (
        select(
            literal(contact_id, UUID_TYPE).label("contact_id"),
            pipelines.c.id.label("pipeline_id"),
            pipeline_stages.c.id.label("stage_id"),
            literal(title, Text).label("title"),
            literal(company_id, UUID_TYPE).label("company_id"),
            literal(source, Text).label("source"),
        )
        .join(pipeline_stages, pipeline_stages.c.pipeline_id == pipelines.c.id)
        .where(pipelines.c.is_default, pipeline_stages.c.name == stage_name)
    )
    stmt = insert(deals).from_select(
        ["contact_id", "pipeline_id", "stage_id", "title", "company_id", "source"], stage
    )
    upsert = stmt.on_conflict_do_update(
        constraint="uniq_deals_contact_stage",
        set_={
            "company_id": func.coalesce(deals.c.company_id, stmt.excluded.company_id),
            "updated_at": func.now(),
        },
    ).returning(deals.c.id)
    deal_id = conn.execute(upsert).scalar()
    return None if deal_id is None else UUID(str(deal_id))


def insert_activity(
    conn: Connection,
    *,
    type: str,
    contact_id: UUID | None,
    deal_id: UUID | None,
    subject: str | None,
    body: str | None,
    metadata: dict[str, Any],
    event_id: UUID | None = None,
    occurred_at: datetime | None = None,
) -> UUID:
    values: dict[str, Any] = {
        "type": type,
        "contact_id": contact_id,
        "deal_id": deal_id,
        "subject": subject,
        "body": body,
        "metadata": metadata,
        "event_id": event_id,
    }
    if occurred_at is not None:
        values["occurred_at"] = occurred_at
    inserted = conn.execute(insert(activities).values(**values).returning(activities.c.id))
    return UUID(str(inserted.scalar_one()))
