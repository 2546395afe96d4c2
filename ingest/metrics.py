"""`GET /metrics` and the receiver's own counting. Bind it privately: it has no auth."""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_left
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


class DeliveryTally:
    """Webhook deliveries counted and timed in plain Python, folded into the Prometheus series
    in bulk: before every scrape of this process, and every `FOLD_SECONDS` (for the scrapes
    another worker process answers). prometheus-client takes a lock per increment, three per
    delivery for a counter and a histogram: tallying instead cut 13k instructions per delivery
    through uvicorn (callgrind), about a twelfth of what the receiver does beyond the floor.

    The histogram is folded bucket by bucket through its children's values (`_buckets`,
    `_sum`): it has no public call to observe many values at once. A unit test compares a
    fold with plain `observe` calls, so a prometheus-client that changes them fails there."""

    FOLD_SECONDS = 0.5

    def __init__(self) -> None:
        # (provider label, status) -> [count, sum of seconds, count per histogram bucket]
        self._pending: dict[tuple[str, int], list[Any]] = {}
        self._series: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._bounds = (*metrics.REQUEST_BUCKETS, math.inf)  # the histogram's, +Inf last

    def add(self, provider: str, status: int, seconds: float) -> None:
        key = (provider, status)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = [0, 0.0, [0] * len(self._bounds)]
        pending[0] += 1
        pending[1] += seconds
        pending[2][bisect_left(self._bounds, seconds)] += 1  # as observe: first bound >= it

    def fold(self) -> None:
        pending, self._pending = self._pending, {}
        for key, (count, total, buckets) in pending.items():
            counter, histogram = self._series_for(*key)
            counter.inc(count)
            histogram._sum.inc(total)
            for bucket, hits in zip(histogram._buckets, buckets, strict=True):
                if hits:
                    bucket.inc(hits)

    def _series_for(self, provider: str, status: int) -> tuple[Any, Any]:
        """The labelled series, looked up once: `labels()` validates and locks on every call."""
        found = self._series.get((provider, status))
        if found is None:
            outcome, reason = _OUTCOMES.get(status, ("rejected", "other"))
            found = self._series[(provider, status)] = (
                metrics.DELIVERIES.labels(provider, outcome, reason),
                metrics.REQUEST_SECONDS.labels(provider),
            )
        return found

    async def fold_every_while(self) -> None:
        """Fold on a timer until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(self.FOLD_SECONDS)
                self.fold()
        finally:
            self.fold()


TALLY = DeliveryTally()


def instrumented(handler: Handler) -> Handler:
    """Count every webhook delivery by outcome and time its answer."""

    async def counted(request: Request) -> Response:
        started = time.perf_counter()
        response = await handler(request)
        provider = request.path_params.get("provider", "")
        if provider not in _KNOWN_PROVIDERS:
            provider = "unknown"  # one label for all: a sender cannot grow the series
        TALLY.add(provider, response.status_code, time.perf_counter() - started)
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
    TALLY.fold()
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
