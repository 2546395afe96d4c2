"""Load shedding. A Redis that reaches its memory limit refuses every write, the workers'
bookkeeping included; so deliveries get 503 with Retry-After a little before that (or once
the queue is as long as an operator allows), and the sender retries later. Redis is asked
twice a second, not once per delivery."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common import queue

logger = logging.getLogger("crm.ingest")


class Backpressure:
    INTERVAL_SECONDS = 0.5

    def __init__(self, client: aioredis.Redis, *, watermark: float, max_depth: int) -> None:
        self._client = client
        self._watermark = watermark
        self._max_depth = max_depth
        self.reason: str | None = None  # why deliveries are refused now; None: they are not
        self._stopped = asyncio.Event()

    async def watch(self) -> None:
        """Measure until stopped."""
        while not self._stopped.is_set():
            try:
                reason = await self._measure()
            except RedisError:
                reason = None  # the claim itself fails then, and answers 503
            if reason != self.reason:
                logger.warning(
                    "deliveries %s", f"refused: {reason}" if reason else "accepted again"
                )
            self.reason = reason
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.INTERVAL_SECONDS)

    def stop(self) -> None:
        # Not only a cancel: one that lands inside a redis-py call can be lost (seen at a
        # start-up that failed: the call returned, the loop went round, shutdown hung).
        self._stopped.set()

    async def _measure(self) -> str | None:
        memory = await self._client.info("memory")
        used, limit = int(memory["used_memory"]), int(memory["maxmemory"])
        if limit and used >= self._watermark * limit:
            return f"Redis memory at {used / limit:.0%} of maxmemory"
        if self._max_depth:
            waiting = (await queue.depth(self._client)).waiting
            if waiting >= self._max_depth:
                return f"{waiting} events queued (MAX_QUEUE_DEPTH {self._max_depth})"
        return None
