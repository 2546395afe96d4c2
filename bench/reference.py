"""The drain references, on one connection, with no framework and no queue: a plain psycopg2 loop
running the statements of one event per transaction (what a simple worker does), and the
worker's own set-based statements (db.batch) applied to batches (what the database can take).
A worker is measured against both."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import psycopg2

from common.envelope import Envelope
from db import batch

_CLAIM = """
INSERT INTO webhook_events (id, provider, event_type, idempotency_key, status, attempts,
                            payload, received_at)
VALUES (%s, %s, %s, %s, 'queued', 1, %s, %s)
ON CONFLICT ON CONSTRAINT uniq_webhook_events_key DO NOTHING RETURNING id"""
_COMPANY = """
INSERT INTO companies (name, domain) VALUES (%s, lower(%s))
ON CONFLICT (lower(domain)) DO NOTHING RETURNING id"""
_CONTACT = """
INSERT INTO contacts (email, first_name, last_name, company_id, source)
VALUES (%s, %s, %s, %s, 'instantly')
ON CONFLICT (lower(email)) DO UPDATE SET
  first_name = coalesce(nullif(contacts.first_name, ''), excluded.first_name),
  last_name = coalesce(nullif(contacts.last_name, ''), excluded.last_name),
  company_id = coalesce(contacts.company_id, excluded.company_id),
  source = coalesce(contacts.source, excluded.source),
  updated_at = now()
RETURNING id"""
_DEAL = """
WITH target AS (
    SELECT p.id AS pipeline_id, s.id AS stage_id, s.order_index, s.name
    FROM pipelines p JOIN pipeline_stages s ON s.pipeline_id = p.id
    WHERE p.is_default AND s.name = 'New'
), current_deal AS (
    SELECT d.id, s.order_index, s.name FROM deals d
    JOIN pipeline_stages s ON s.id = d.stage_id JOIN target t ON d.pipeline_id = t.pipeline_id
    WHERE d.contact_id = %(contact)s ORDER BY s.order_index DESC LIMIT 1
), moved AS (
    UPDATE deals SET stage_id = t.stage_id, updated_at = now() FROM current_deal c, target t
    WHERE deals.id = c.id AND c.order_index < t.order_index AND c.name NOT IN ('Won', 'Lost')
    RETURNING deals.id
), created AS (
    INSERT INTO deals (contact_id, pipeline_id, stage_id, title, company_id, source)
    SELECT %(contact)s, t.pipeline_id, t.stage_id, %(title)s, %(company)s, 'instantly'
    FROM target t WHERE NOT EXISTS (SELECT 1 FROM current_deal)
    ON CONFLICT ON CONSTRAINT uniq_deals_contact_stage DO UPDATE SET updated_at = now()
    RETURNING deals.id
)
SELECT coalesce((SELECT id FROM created), (SELECT id FROM moved), (SELECT id FROM current_deal))
"""
_ACTIVITY = """
INSERT INTO activities (type, contact_id, deal_id, subject, body, metadata, event_id)
VALUES ('system_note', %s, %s, %s, %s, %s, %s) RETURNING id"""
_FINISH = """
UPDATE webhook_events SET status = 'processed', result = %s, error = NULL,
  processed_at = clock_timestamp(), updated_at = now()
WHERE id = %s"""


def apply_reference(cursor: Any, envelope: Envelope) -> None:
    payload = envelope.payload
    cursor.execute(
        _CLAIM,
        (envelope.event_id, envelope.provider, envelope.event_type, envelope.idempotency_key,
         json.dumps(payload), envelope.received_at),
    )  # fmt: skip
    email = payload["lead_email"]
    domain = email.rpartition("@")[2]
    cursor.execute(_COMPANY, (payload["companyName"], domain))
    company_id = cursor.fetchone()[0]
    cursor.execute(_CONTACT, (email, payload["firstName"], payload["lastName"], company_id))
    contact_id = cursor.fetchone()[0]
    title = f"{payload['firstName']} — reply"
    cursor.execute(_DEAL, {"contact": contact_id, "title": title, "company": company_id})
    deal_id = cursor.fetchone()[0]
    metadata = {"campaign_id": payload["campaign"], "email_id": payload["email_id"]}
    cursor.execute(
        _ACTIVITY,
        (contact_id, deal_id, payload["reply_subject"], payload["reply_text_snippet"],
         json.dumps(metadata), envelope.event_id),
    )  # fmt: skip
    activity_id = cursor.fetchone()[0]
    result = {
        "step": "E:deal_created_and_logged",
        "deal_id": deal_id,
        "system_activity_id": activity_id,
    }
    cursor.execute(_FINISH, (json.dumps(result), envelope.event_id))


def run_reference(dsn: str, envelopes: list[Envelope]) -> float:
    """Events committed per second."""
    connection = psycopg2.connect(dsn)
    try:
        started = time.perf_counter()
        for envelope in envelopes:
            with connection, connection.cursor() as cursor:  # one transaction per event
                apply_reference(cursor, envelope)
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    return len(envelopes) / elapsed


def _setbased_batch(cursor: Any, envelopes: list[Envelope], stages: dict[str, Any]) -> None:
    """One batch of Step E replies with db.batch's statements, one statement per table."""
    payloads = [envelope.payload for envelope in envelopes]
    emails = [payload["lead_email"] for payload in payloads]
    domains = [email.rpartition("@")[2] for email in emails]
    cursor.execute(
        batch.CLAIM_EVENTS,
        {
            "ids": [envelope.event_id for envelope in envelopes],
            "providers": [envelope.provider for envelope in envelopes],
            "types": [envelope.event_type for envelope in envelopes],
            "keys": [envelope.idempotency_key for envelope in envelopes],
            "attempts": [1] * len(envelopes),
            "payloads": [json.dumps(payload) for payload in payloads],
            "received": [envelope.received_at for envelope in envelopes],
            "occurred": [envelope.received_at for envelope in envelopes],
            "emails": [email.lower() for email in emails],
        },
    )
    cursor.fetchall()
    companies = {
        domain: payload["companyName"] for domain, payload in zip(domains, payloads, strict=True)
    }
    cursor.execute(
        batch.UPSERT_COMPANIES, {"names": list(companies.values()), "domains": list(companies)}
    )
    company_ids = {domain: company_id for company_id, domain in cursor.fetchall()}
    cursor.execute(
        batch.UPSERT_CONTACTS,
        {
            "emails": emails,
            "first_names": [payload["firstName"] for payload in payloads],
            "last_names": [payload["lastName"] for payload in payloads],
            "companies": [str(company_ids[domain]) for domain in domains],
            "sources": ["instantly"] * len(envelopes),
        },
    )
    contact_ids = {email: contact_id for contact_id, email in cursor.fetchall()}
    contacts = [str(contact_ids[email.lower()]) for email in emails]
    cursor.execute(batch.CURRENT_DEALS, {"contacts": contacts})
    current = {str(contact): deal for contact, deal, _ in cursor.fetchall()}
    first_of: dict[str, int] = {}
    for index, contact in enumerate(contacts):
        if contact not in current:
            first_of.setdefault(contact, index)
    new = list(first_of)
    deal_ids = {str(k): str(v) for k, v in current.items()}
    deal_ids |= {contact: str(uuid.uuid4()) for contact in new}
    pipeline_id, stage_id = stages["New"]
    cursor.execute(
        batch.WRITE_DEALS,
        {
            "new_ids": [deal_ids[contact] for contact in new],
            "new_contacts": new,
            "new_pipelines": [pipeline_id] * len(new),
            "new_stages": [stage_id] * len(new),
            "new_titles": [f"{payloads[i]['firstName']} — reply" for i in first_of.values()],
            "new_companies": [str(company_ids[domains[i]]) for i in first_of.values()],
            "new_sources": ["instantly"] * len(new),
            "moved_ids": [],
            "moved_stages": [],
        },
    )
    activity_ids = [str(uuid.uuid4()) for _ in envelopes]
    cursor.execute(
        batch.INSERT_ACTIVITIES,
        {
            "ids": activity_ids,
            "types": ["system_note"] * len(envelopes),
            "contacts": contacts,
            "deals": [deal_ids[contact] for contact in contacts],
            "subjects": [payload["reply_subject"] for payload in payloads],
            "bodies": [payload["reply_text_snippet"] for payload in payloads],
            "metadata": [
                json.dumps({"campaign_id": p["campaign"], "email_id": p["email_id"]})
                for p in payloads
            ],
            "events": [envelope.event_id for envelope in envelopes],
            "occurred": [envelope.received_at for envelope in envelopes],
        },
    )
    results = [
        json.dumps({"step": "E:deal_created_and_logged", "deal_id": deal_ids[contact],
                    "system_activity_id": activity})
        for contact, activity in zip(contacts, activity_ids, strict=True)
    ]  # fmt: skip
    cursor.execute(
        batch.FINISH_EVENTS,
        {
            "ids": [envelope.event_id for envelope in envelopes],
            "statuses": ["processed"] * len(envelopes),
            "results": results,
        },
    )


def run_setbased_reference(dsn: str, envelopes: list[Envelope], batch_size: int) -> float:
    """Events committed per second, `batch_size` per transaction, set-based: what the
    database takes with the worker's own statements and no framework around them."""
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(batch.DEFAULT_STAGES)
            stages = {name: (str(pipeline), str(stage)) for name, pipeline, stage, _ in cursor}
        started = time.perf_counter()
        for start in range(0, len(envelopes), batch_size):
            with connection, connection.cursor() as cursor:  # one transaction per batch
                _setbased_batch(cursor, envelopes[start : start + batch_size], stages)
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    return len(envelopes) / elapsed
