"""`GET /metrics` and the receiver's own counting. Bind it privately: it has no auth."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common import metrics
from common.envelope import QUEUE_NAME
from common.queue import read_message
from db.tables import dead_letters
from ingest.status import engine

Handler = Callable[[Request], Awaitable[Response]]

# What each answer of the webhook route means for the deliveries counter.
_OUTCOMES = {
    202: ("accepted", ""),
    409: ("duplicate", ""),
    400: ("rejected", "invalid_body"),
    401: ("rejected", "unauthorized"),
    404: ("rejected", "unknown_provider"),
    408: ("rejected", "body_timeout"),
    413: ("rejected", "too_large"),
    415: ("rejected", "unsupported_media_type"),
    503: ("rejected", "queue_unavailable"),
}
_KNOWN_PROVIDERS = frozenset(metrics.KNOWN_EVENT_TYPES)


def instrumented(handler: Handler) -> Handler:
    """Count every webhook delivery by outcome and time its answer."""
    # The labelled series per (provider, status), looked up once: `labels()` validates and
    # locks on every call. Only known providers are kept, so the cache stays small.
    series: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def counted(request: Request) -> Response:
        started = time.perf_counter()
        response = await handler(request)
        provider = request.path_params.get("provider", "")
        key = (provider, response.status_code)
        found = series.get(key)
        if found is None:
            known = provider in _KNOWN_PROVIDERS
            label = provider if known else "unknown"
            outcome, reason = _OUTCOMES.get(response.status_code, ("rejected", "other"))
            found = (
                metrics.DELIVERIES.labels(label, outcome, reason),
                metrics.REQUEST_SECONDS.labels(label),
            )
            if known:
                series[key] = found
        found[0].inc()
        found[1].observe(time.perf_counter() - started)
        return response

    return counted


def _oldest_age_seconds(message: bytes | None) -> float:
    """Age of the message at the consuming end of the list (LPUSH in, BRPOP out)."""
    if message is None:
        return 0.0
    try:
        received = datetime.fromisoformat(read_message(message).envelope["received_at"])
    except (ValueError, KeyError, TypeError):
        return 0.0
    return max(0.0, (datetime.now(UTC) - received).total_seconds())


def _open_dead_letters(request: Request) -> int:
    query = select(func.count()).select_from(dead_letters).where(dead_letters.c.status == "open")
    with engine(request.app).connect() as conn:
        return int(conn.execute(query).scalar_one())


async def serve_metrics(request: Request) -> Response:
    gauges: dict[str, tuple[str, float]] = {}
    client = request.app.state.redis
    try:
        pipe = client.pipeline(transaction=False)
        pipe.llen(QUEUE_NAME).hlen("unacked").lindex(QUEUE_NAME, -1)
        depth, unacked, oldest = await pipe.execute()
        gauges["crm_queue_depth"] = ("Events waiting in the webhooks queue.", depth)
        gauges["crm_queue_unacked"] = (
            "Events delivered to a worker, not yet acknowledged.",
            unacked,
        )
        gauges["crm_queue_oldest_age_seconds"] = (
            "Age of the oldest waiting event.",
            _oldest_age_seconds(oldest),
        )
    except RedisError:
        pass  # the gauges go missing; /readyz says why
    try:
        count = await run_in_threadpool(_open_dead_letters, request)
        gauges["crm_dead_letters_open"] = ("Dead letters waiting for an admin.", count)
    except SQLAlchemyError:
        pass
    return Response(metrics.render(gauges), media_type=metrics.CONTENT_TYPE)


routes = [Route("/metrics", serve_metrics, methods=["GET"])]
