"""The person an event is about: their contact row (and company)."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import Connection

from common.senders.fields import Lead
from db import crm


def upsert_lead(conn: Connection, lead: Lead, *, source: str) -> tuple[UUID, UUID | None]:
    """The lead's contact (and company, where a domain names one). The contact upsert locks
    the contact's row until commit: events about one person are applied one at a time."""
    company_id = None
    if lead.domain is not None:
        company_id = crm.upsert_company(
            conn, name=lead.company_name or lead.domain, domain=lead.domain
        )
    contact_id = crm.upsert_contact(
        conn,
        email=lead.email,
        first_name=lead.first_name,
        last_name=lead.last_name,
        company_id=company_id,
        source=source,
    )
    return contact_id, company_id
