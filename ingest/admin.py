"""Admin routes over the dead-letter store: GET for readers and admins, replay for admins."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.redis_clients import connect
from common.replay import Actor, Replayer, Summary, filters_from
from common.settings import Settings
from db import dead_letters
from ingest.access import requires_role
from ingest.responses import error
from ingest.status import engine

_MAX_FILTER_BODY = 64 * 1024


def replayer(app: Starlette) -> Replayer:
    """The app's one Replayer (the admin API's and the console's), made on first use."""
    if getattr(app.state, "replayer", None) is None:
        settings: Settings = app.state.settings
        client = connect(settings.broker, timeout=5)
        app.state.replayer = Replayer(
            engine(app),
            client,
            settings.broker_visibility_timeout,
        )
    made: Replayer = app.state.replayer
    return made


def _actor(request: Request) -> Actor:
    claims = request.state.claims
    return Actor(claims.sub, claims.role, "api")


def _filters(params: Mapping[str, object]) -> dead_letters.Filters:
    """Filters from query parameters or a JSON body; ValueError names a bad one."""
    return filters_from(params, default_status="open")


# PostgreSQL refuses some values Python accepts (a time zone offset beyond ±15:59).
_OUT_OF_RANGE = "A filter value is out of range"


def parse_id(raw: str) -> int | None:
    """A row id from a URL: ASCII digits only, few enough for a bigint; None otherwise."""
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


def dead_letter_id_of(request: Request) -> int | None:
    return parse_id(request.path_params["dead_letter_id"])


@requires_role("reader", "admin")
async def list_dead_letters(request: Request) -> Response:
    try:
        filters = _filters(request.query_params)
    except ValueError as exc:
        return error(400, str(exc))

    def query() -> list[dict[str, Any]]:
        with engine(request.app).connect() as conn:
            return dead_letters.list_dead_letters(conn, filters)

    try:
        rows = await run_in_threadpool(query)
    except DataError:
        return error(400, _OUT_OF_RANGE)
    except SQLAlchemyError:
        return error(503, "Database unavailable, retry later")
    return JSONResponse({"dead_letters": rows, "count": len(rows)})


@requires_role("reader", "admin")
async def show_dead_letter(request: Request) -> Response:
    dead_letter_id = dead_letter_id_of(request)
    if dead_letter_id is None:
        return error(404, "Unknown dead letter")

    def query() -> dict[str, Any] | None:
        with engine(request.app).connect() as conn:
            return dead_letters.get_dead_letter(conn, dead_letter_id=dead_letter_id)

    try:
        row = await run_in_threadpool(query)
    except SQLAlchemyError:
        return error(503, "Database unavailable, retry later")
    if row is None:
        return error(404, "Unknown dead letter")
    return JSONResponse(row)


def _exists(app: Any, dead_letter_id: int) -> bool:
    with engine(app).connect() as conn:
        return dead_letters.get_dead_letter(conn, dead_letter_id=dead_letter_id) is not None


@requires_role("admin")
async def replay_dead_letter(request: Request) -> Response:
    dead_letter_id = dead_letter_id_of(request)
    if dead_letter_id is None:
        return error(404, "Unknown dead letter")
    worker = replayer(request.app)
    outcome = await run_in_threadpool(worker.replay_one, dead_letter_id)
    summary = Summary.of([outcome])
    await run_in_threadpool(worker.audit, _actor(request), "replay", [dead_letter_id], summary)
    if outcome.status == "skipped":
        try:
            exists = await run_in_threadpool(_exists, request.app, dead_letter_id)
        except SQLAlchemyError:
            return error(503, "Database unavailable, retry later")
        if exists:
            return error(409, "Dead letter is not open: replayed or discarded already")
        return error(404, "Unknown dead letter")
    if outcome.status == "failed" and not outcome.retryable:
        return error(422, f"Replay impossible: {outcome.detail}")
    if outcome.status == "failed":
        return error(503, f"Replay failed: {outcome.detail}")
    return JSONResponse(
        {"status": "replayed", "dead_letter_id": dead_letter_id, "event_id": outcome.detail},
        status_code=202,
    )


@requires_role("admin")
async def replay_matching(request: Request) -> Response:
    body = await request.body()
    if len(body) > _MAX_FILTER_BODY:
        return error(413, "Body too large")
    try:
        params = json.loads(body) if body.strip() else {}
    except (UnicodeDecodeError, ValueError):
        return error(400, "Body is not valid UTF-8 JSON")
    if not isinstance(params, dict):
        return error(400, "Body must be a JSON object")
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        return error(400, "'dry_run' must be true or false")
    try:
        filters = _filters(params)
    except ValueError as exc:
        return error(400, str(exc))
    worker = replayer(request.app)
    try:
        ids = await run_in_threadpool(worker.matching, filters)
    except DataError:
        return error(400, _OUT_OF_RANGE)
    except SQLAlchemyError:
        return error(503, "Database unavailable, retry later")
    if dry_run:
        return JSONResponse({"matched": len(ids), "replayed": 0, "dry_run": True, "ids": ids})
    summary = await run_in_threadpool(worker.replay_many, ids)
    await run_in_threadpool(
        functools.partial(
            worker.audit, _actor(request), "replay_matching", ids, summary, filters=filters
        )
    )
    return JSONResponse(
        {"matched": len(ids), "dry_run": False, "ids": ids, **asdict(summary)}, status_code=202
    )


def dispose(app: Starlette) -> None:
    replayer = getattr(app.state, "replayer", None)
    if replayer is not None:
        replayer.close()
        app.state.replayer = None


routes = [
    Route("/admin/dead-letters", list_dead_letters, methods=["GET"]),
    Route("/admin/dead-letters/replay", replay_matching, methods=["POST"]),
    Route("/admin/dead-letters/{dead_letter_id}", show_dead_letter, methods=["GET"]),
    Route("/admin/dead-letters/{dead_letter_id}/replay", replay_dead_letter, methods=["POST"]),
]
