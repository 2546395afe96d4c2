"""Part 7 of `make bench`: the console's pages with 100,000 events and 10,000 dead letters in
the database. Each page is fetched in turn, signed in as an admin, one request at a time; the
figure is each page's p99 (target: under 200 ms)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
from sqlalchemy import create_engine, pool, text

from common.settings import Settings
from common.tokens import issue_link_token
from db.cli import superuser_url

EVENTS = 100_000
DEAD_LETTERS = 10_000
LEADS = 20_000  # distinct lead e-mails among the events
LEAD = "lead42@console.example.com"

_SEED = [
    # Four in five Instantly replies, one in five Cal.com bookings, a second apart.
    f"""
    INSERT INTO webhook_events (id, provider, event_type, idempotency_key, status, attempts,
                                payload, result, received_at, processed_at)
    SELECT gen_random_uuid(),
           CASE WHEN i % 5 = 0 THEN 'calcom' ELSE 'instantly' END,
           CASE WHEN i % 5 = 0 THEN 'BOOKING_CREATED' ELSE 'reply_received' END,
           'bench-console:' || i,
           CASE WHEN i <= {DEAD_LETTERS} THEN 'dead' ELSE 'processed' END,
           1,
           CASE WHEN i % 5 = 0 THEN jsonb_build_object('triggerEvent', 'BOOKING_CREATED',
                    'payload', jsonb_build_object('uid', 'u' || i, 'attendees',
                    jsonb_build_array(jsonb_build_object(
                        'email', 'lead' || (i % {LEADS}) || '@console.example.com'))))
                ELSE jsonb_build_object('event_type', 'reply_received',
                    'lead_email', 'lead' || (i % {LEADS}) || '@console.example.com',
                    'campaign_name', 'Bench campaign', 'reply_text_snippet', 'Thanks!') END,
           '{{"effect": "reply_received"}}'::jsonb,
           now() - make_interval(secs => i), now() - make_interval(secs => i)
    FROM generate_series(1, {EVENTS}) AS i
    """,  # noqa: S608 - the module's own constants
    """
    INSERT INTO dead_letters (event_id, provider, event_type, envelope, reason, error_class,
                              error_message, traceback, attempts, first_failed_at,
                              last_failed_at)
    SELECT id, provider, event_type,
           jsonb_build_object('event_id', id::text, 'provider', provider,
                              'event_type', event_type, 'idempotency_key', idempotency_key,
                              'received_at', received_at::text, 'payload', payload),
           (ARRAY['config_error', 'invalid_payload', 'retries_exhausted',
                  'processing_error'])[1 + (abs(hashtext(idempotency_key)) % 4)],
           'BenchError', 'seeded for the console bench', 'Traceback (seeded)', 1,
           received_at, received_at
    FROM webhook_events WHERE status = 'dead'
    """,
    f"INSERT INTO contacts (email, first_name) VALUES ('{LEAD}', 'Lead')"  # noqa: S608 - a constant
    " ON CONFLICT DO NOTHING",
    "ANALYZE webhook_events",
    "ANALYZE dead_letters",
]


def seed(settings: Settings) -> dict[str, Any]:
    engine = create_engine(
        superuser_url(settings, database=settings.pg_database), poolclass=pool.NullPool
    )
    try:
        with engine.begin() as conn:
            for statement in _SEED:
                conn.execute(text(statement))
        with engine.connect() as conn:
            event_id = conn.execute(text("SELECT id FROM webhook_events LIMIT 1")).scalar_one()
            letter_id = conn.execute(text("SELECT max(id) FROM dead_letters")).scalar_one()
    finally:
        engine.dispose()
    return {"event_id": str(event_id), "dead_letter_id": int(letter_id)}


def measure_console(url: str, settings: Settings, requests: int = 200) -> dict[str, Any]:
    ids = seed(settings)
    pages = {
        "overview": "/console",
        "events": "/console/events",
        "events by lead e-mail": f"/console/events?email={LEAD}",
        "events by provider and status": "/console/events?provider=calcom&status=dead",
        "event": f"/console/events/{ids['event_id']}",
        "lead": f"/console/leads?email={LEAD}",
        "dead letters": "/console/dead-letters",
        "dead letters by reason": "/console/dead-letters?reason=config_error",
        "dead letters by lead e-mail": f"/console/dead-letters?email={LEAD}&status=all",
        "dead letter": f"/console/dead-letters/{ids['dead_letter_id']}",
        "audit": "/console/audit",
    }
    token = issue_link_token(settings.jwt_secret.get(), sub="bench", role="admin")
    results: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=30, follow_redirects=True) as client:
        assert client.get(f"/console/sign-in?token={token}").status_code == 200
        for name, path in pages.items():
            assert client.get(path).status_code == 200, path  # warm: plans, pool, templates
            timings = []
            for _ in range(requests):
                started = time.perf_counter()
                answer = client.get(path)
                timings.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200, path
            timings.sort()
            results[name] = {
                "path": path,
                "p50_ms": round(statistics.median(timings), 2),
                "p99_ms": round(timings[int(len(timings) * 0.99) - 1], 2),
            }
    worst = max(results.values(), key=lambda page: page["p99_ms"])
    return {
        "events": EVENTS,
        "dead_letters": DEAD_LETTERS,
        "requests_per_page": requests,
        "pages": results,
        "worst_p99_ms": worst["p99_ms"],
    }
