"""Status routes: these may read PostgreSQL (the webhook routes never do)."""

from __future__ import annotations

import uuid
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common import queue
from common.settings import Settings
from db import events
from db.engine import make_engine
from ingest.access import requires_role
from ingest.responses import error


def engine(app: Starlette) -> Engine:
    """Made on first use so the receiver starts, and takes webhooks, without PostgreSQL."""
    if getattr(app.state, "engine", None) is None:
        settings: Settings = app.state.settings
        app.state.engine = make_engine(settings.pg_url(), pool_size=2, application_name="ingest")
    result: Engine = app.state.engine
    return result


def dispose(app: Starlette) -> None:
    if getattr(app.state, "engine", None) is not None:
        app.state.engine.dispose()
        app.state.engine = None


def _stored_event(app: Starlette, event_id: uuid.UUID) -> dict[str, Any] | None:
    with engine(app).connect() as conn:
        return events.get_event(conn, event_id=event_id)


@requires_role("reader", "admin")
async def get_event(request: Request) -> Response:
    try:
        event_id = uuid.UUID(request.path_params["event_id"])
    except ValueError:
        return error(404, "Unknown event")
    try:
        stored = await run_in_threadpool(_stored_event, request.app, event_id)
    except SQLAlchemyError:
        return error(503, "Database unavailable, retry later")
    if stored is not None:
        return JSONResponse(stored)
    try:
        # Accepted, not yet committed: only the queue knows it.
        queued = await queue.queued_envelope(request.app.state.redis, str(event_id))
    except RedisError:
        return error(503, "Queue unavailable, retry later")
    if queued is None:
        return error(404, "Unknown event")
    return JSONResponse(
        {
            "event_id": str(event_id),
            "provider": queued.provider,
            "event_type": queued.event_type,
            "status": "queued",
            "attempts": 0,
            "received_at": queued.received_at,
            "processed_at": None,
            "result": None,
            "error": None,
        }
    )


routes = [Route("/events/{event_id}", get_event, methods=["GET"])]
