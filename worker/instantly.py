"""Instantly events. `reply_received` is Step E: contact, deal in 'New', a system_note."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from sqlalchemy import Connection

from common.envelope import Envelope
from db import crm
from worker.errors import ConfigError, InvalidPayload

STEP_E = "E:deal_created_and_logged"

# Addresses at these domains say nothing about the lead's employer: no company is made for them.
FREE_MAIL_DOMAINS = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.uk",
        "hotmail.com",
        "outlook.com",
        "live.com",
        "msn.com",
        "aol.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "proton.me",
        "protonmail.com",
        "gmx.de",
        "gmx.net",
        "gmx.com",
        "web.de",
        "t-online.de",
        "yandex.ru",
        "mail.ru",
        "zoho.com",
        "fastmail.com",
        "hey.com",
        "mail.com",
        "qq.com",
        "163.com",
    }
)


@dataclass(frozen=True)
class Lead:
    email: str
    first_name: str | None
    last_name: str | None
    company_name: str | None
    domain: str | None


def _optional_text(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidPayload(f"'{name}' must be a string, got {type(value).__name__}")
    return value.strip() or None


def _optional_int(payload: dict[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPayload(f"'{name}' must be a whole number, got {type(value).__name__}")
    return value


def _email(payload: dict[str, Any]) -> str:
    email = _optional_text(payload, "lead_email") or _optional_text(payload, "email")
    if email is None:
        raise InvalidPayload("no lead e-mail: neither 'lead_email' nor 'email' is set")
    local, at, domain = email.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain
        or len(email) > 320
        or any(c.isspace() for c in email)
    ):
        raise InvalidPayload("lead e-mail is not an address")
    return email


def _website_domain(website: str | None) -> str | None:
    if website is None:
        return None
    host = urlsplit(website if "//" in website else f"//{website}").hostname
    if not host or "." not in host:
        return None
    return host.lower().removeprefix("www.")


def parse_lead(payload: dict[str, Any]) -> Lead:
    email = _email(payload)
    email_domain = email.rpartition("@")[2].lower()
    domain = _website_domain(_optional_text(payload, "website"))
    if domain is None and email_domain not in FREE_MAIL_DOMAINS:
        domain = email_domain
    return Lead(
        email=email,
        first_name=_optional_text(payload, "firstName") or _optional_text(payload, "first_name"),
        last_name=_optional_text(payload, "lastName") or _optional_text(payload, "last_name"),
        company_name=_optional_text(payload, "companyName"),
        domain=domain,
    )


def _campaign(payload: dict[str, Any]) -> str | None:
    # A lead variable named `campaign_id` shadows Instantly's own id; `campaign` keeps the real one.
    return _optional_text(payload, "campaign") or _optional_text(payload, "campaign_id")


def upsert_lead(conn: Connection, lead: Lead) -> tuple[UUID, UUID | None]:
    """The lead's contact (and company, where a domain names one)."""
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
        source="instantly",
    )
    return contact_id, company_id


def display_name(lead: Lead) -> str:
    name = " ".join(part for part in (lead.first_name, lead.last_name) if part)
    return name or lead.email


def handle_reply(conn: Connection, envelope: Envelope) -> dict[str, Any]:
    payload = envelope.payload
    lead = parse_lead(payload)
    campaign_name = _optional_text(payload, "campaign_name")
    subject = _optional_text(payload, "reply_subject")
    text = _optional_text(payload, "reply_text")
    snippet = _optional_text(payload, "reply_text_snippet") or (text[:280] if text else None)
    metadata = {
        "unibox_url": _optional_text(payload, "unibox_url"),
        "campaign_id": _campaign(payload),
        "campaign_name": campaign_name,
        "workspace": _optional_text(payload, "workspace"),
        "email_account": _optional_text(payload, "email_account"),
        "step": _optional_int(payload, "step"),
        "variant": _optional_int(payload, "variant"),
        "email_id": _optional_text(payload, "email_id"),
        "timestamp": _optional_text(payload, "timestamp"),
    }

    contact_id, company_id = upsert_lead(conn, lead)
    who = display_name(lead)
    deal_id = crm.upsert_deal(
        conn,
        contact_id=contact_id,
        stage_name="New",
        title=f"{who} — {campaign_name}" if campaign_name else who,
        company_id=company_id,
        source="instantly",
    )
    if deal_id is None:
        raise ConfigError("no default pipeline with a stage named 'New'")
    note = f"{who} <{lead.email}> replied"
    if campaign_name:
        note += f" to campaign '{campaign_name}'"
    activity_id = crm.insert_activity(
        conn,
        type="system_note",
        contact_id=contact_id,
        deal_id=deal_id,
        subject=f"{note}: {subject}" if subject else note,
        body=snippet,
        metadata={k: v for k, v in metadata.items() if v is not None},
        event_id=UUID(envelope.event_id),
    )
    return {"step": STEP_E, "deal_id": str(deal_id), "system_activity_id": str(activity_id)}
