"""`GET /metrics` and the receiver's own counting. Bind it privately: it has no auth."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

import orjson
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common import metrics, queue
from common.senders import SENDERS
from db.tables import dead_letters
from ingest.refusals import REFUSALS
from ingest.responses import CLIENT_DISCONNECTED, peer
from ingest.status import engine

Handler = Callable[[Request], Awaitable[Response]]

# What each answer of the webhook route means for the deliveries counter.
_OUTCOMES = {
    202: ("accepted", ""),
    409: ("duplicate", ""),
    200: ("duplicate", ""),  # the route's only 200: a repeat under DUPLICATE_STATUS_*=200
    400: ("rejected", "invalid_body"),
    401: ("rejected", "unauthorized"),
    404: ("rejected", "unknown_provider"),
    408: ("rejected", "body_timeout"),
    413: ("rejected", "too_large"),
    415: ("rejected", "unsupported_media_type"),
    500: ("rejected", "server_error"),
    503: ("rejected", "queue_unavailable"),
    CLIENT_DISCONNECTED: ("client_disconnected", ""),
}


# Refusals the route answers itself that the log names (a 401 is logged where its reason is
# known, in the route; 405 and 431 never reach it: ingest.app and ingest.protocol log those).
_LOGGED_REFUSALS = frozenset({400, 404, 408, 413, 415})


def _reason(response: Response) -> str:
    try:
        return str(orjson.loads(response.body)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "refused"


@functools.cache
def _series(provider: str, status_code: int) -> tuple[Counter, Histogram]:
    # The label lookup is two thirds of the counting's cost (~3 µs a delivery); the series
    # are few (providers by outcomes), so each is looked up once per process.
    outcome, reason = _OUTCOMES.get(status_code, ("rejected", "other"))
    return (
        metrics.DELIVERIES.labels(provider, outcome, reason),
        metrics.REQUEST_SECONDS.labels(provider),
    )


def instrumented(handler: Handler) -> Handler:
    """Count every webhook delivery by outcome and time its answer."""

    async def counted(request: Request) -> Response:
        started = time.perf_counter()
        provider = request.path_params.get("provider", "")
        if provider not in SENDERS:
            provider = "unknown"  # one label for all: a sender cannot grow the series
        status = 500  # what an exception from the handler becomes, further out
        try:
            response = await handler(request)
            status = response.status_code
            if status in _LOGGED_REFUSALS:
                REFUSALS.refused(provider, status, _reason(response), peer(request))
            return response
        finally:
            deliveries, seconds = _series(provider, status)
            deliveries.inc()
            seconds.observe(time.perf_counter() - started)

    return counted


def _open_dead_letters(request: Request) -> int:
    query = select(func.count()).select_from(dead_letters).where(dead_letters.c.status == "open")
    with engine(request.app).connect() as conn:
        return int(conn.execute(query).scalar_one())


async def serve_metrics(request: Request) -> Response:
    gauges: dict[str, tuple[str, float]] = {}
    try:
        depth = await queue.depth(request.app.state.redis)
        gauges["crm_queue_depth"] = ("Events waiting in the webhooks queue.", depth.waiting)
        gauges["crm_queue_unacked"] = (
            "Events delivered to a worker, not yet acknowledged.",
            depth.unacked,
        )
        gauges["crm_queue_oldest_age_seconds"] = (
            "Age of the oldest waiting event.",
            depth.oldest_age_seconds,
        )
        gauges["crm_events_parked"] = (
            "Events parked in Redis because PostgreSQL refused their dead letter.",
            await request.app.state.redis.hlen(queue.PARKED_KEY),
        )
        memory = await request.app.state.redis.info("memory")
        gauges["crm_redis_used_memory_bytes"] = (
            "Memory the broker Redis uses.",
            memory["used_memory"],
        )
        gauges["crm_redis_maxmemory_bytes"] = (
            "The broker Redis's maxmemory; 0: no limit.",
            memory["maxmemory"],
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
