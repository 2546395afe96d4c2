"""The drain reference: a plain psycopg2 loop running the worker's statements for each event,
one transaction per event, on one connection. No framework, no queue: the floor a worker is
measured against."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg2

from common.envelope import Envelope

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
