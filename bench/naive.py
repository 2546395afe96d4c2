"""What a Python team would write instead, measured beside ours in the same run:

- `naive_receiver`: a route that checks the signature, claims the key with `SET NX`, then
  queues the event with Celery's `send_task` — two Redis round trips, and Celery's publishing
  machinery per delivery (called straight from the handler, as such code usually is).
- `app` / `process_reply`: a stock Celery task (default settings, prefork) that runs the worker's
  statements for one event per task: bench/reference.py's psycopg2 statements, one transaction
  each, on one connection per pool process.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2
import redis.asyncio as aioredis
from celery import Celery
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bench.reference import apply_reference
from common.envelope import Envelope, new_event_id, utc_now_iso
from common.settings import get_settings
from ingest.auth import refusal
from ingest.idempotency import derive_key

NAIVE_QUEUE = "bench-naive"
NAIVE_TASK = "bench.process_reply"

app = Celery("bench-naive")
app.add_defaults(lambda: {"broker_url": get_settings().redis_url})

_connection: Any = None


@app.task(name=NAIVE_TASK)
def process_reply(envelope: dict[str, Any]) -> None:
    global _connection
    if _connection is None:
        dsn = get_settings().pg_url().replace("postgresql+psycopg2://", "postgresql://")
        _connection = psycopg2.connect(dsn)
    with _connection, _connection.cursor() as cursor:  # one transaction per event
        apply_reference(cursor, Envelope.from_dict(envelope))


async def naive_receiver(request: Request) -> Response:
    settings = request.app.state.settings
    body = await request.body()
    if refusal("instantly", request.headers, body, settings) is not None:
        return JSONResponse({"error": "Missing or invalid signature"}, status_code=401)
    payload = json.loads(body)
    key = derive_key("instantly", request.headers, payload)
    event_id = new_event_id()
    client: aioredis.Redis = request.app.state.redis
    if not await client.set(f"bench:naive:{key}", event_id, nx=True, ex=600):
        return JSONResponse({"error": "Duplicate event"}, status_code=409)
    envelope = Envelope(event_id, "instantly", payload["event_type"], key, utc_now_iso(), payload)
    app.send_task(NAIVE_TASK, args=[envelope.to_dict()], task_id=event_id, queue=NAIVE_QUEUE)
    return JSONResponse({"status": "queued", "event_id": event_id}, status_code=202)
