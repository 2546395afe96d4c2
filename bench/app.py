"""The real receiver with three reference routes beside it, served by the same uvicorn process
with the same settings, so the four figures differ only in the work each route does.

- /bench/bare: read the body, answer 202 — the framework's ceiling.
- /bench/floor: verify the HMAC, claim a key and LPUSH the raw body in one EVALSHA — the
  least work our job can do, one Redis round trip per request.
- /bench/floor-pipelined: the same, its EVALSHAs pipelined across concurrent requests as the
  receiver's are (common.queue.pipelined): the like-for-like reference for the receiver's own work.
- /bench/naive: the peer, what a Python team would write instead (bench.naive).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.naive import naive_receiver
from common.queue.pipelined import PipelinedScript
from ingest.app import create_app

FLOOR_LUA = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 600) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


async def bare(request: Request) -> Response:
    await request.body()
    return JSONResponse({"status": "queued"}, status_code=202)


async def _floor(
    request: Request, claim: Callable[[list[str], list[bytes]], Awaitable[Any]]
) -> Response:
    body = await request.body()
    secret = request.app.state.settings.webhook_secrets("instantly")[0].get().encode()
    expected = hmac.digest(secret, body, "sha256").hex()  # as cheap as the receiver's HMAC
    given = request.headers.get("x-instantly-signature", "").removeprefix("sha256=")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return JSONResponse({"error": "Missing or invalid signature"}, status_code=401)
    if not await claim([f"bench:floor:{expected}", "bench:floor:queue"], [body]):
        return JSONResponse({"error": "Duplicate event"}, status_code=409)
    return JSONResponse({"status": "queued"}, status_code=202)


async def floor(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "floor_script", None) is None:
        state.floor_script = state.redis.register_script(FLOOR_LUA)  # no I/O until first call
    return await _floor(request, state.floor_script)  # Script takes (keys, args) as well


async def floor_pipelined(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "floor_pipelined", None) is None:
        state.floor_pipelined = PipelinedScript(state.redis, FLOOR_LUA)
    return await _floor(request, state.floor_pipelined)


def create_bench_app() -> Starlette:
    app = create_app()
    # Starlette tries routes in order. Appended last, the floor tried ten route regexes more
    # than the webhook route (first in the real app): ~58k instructions per request under
    # callgrind, which flattered ingest/floor. Now the floor is first and the webhook route
    # second, one regex behind it; the pipelined floor third (one regex more than the webhook
    # route: a reference slowed by ~1%, which flatters ingest over it by as much); bare last.
    app.router.routes.insert(0, Route("/bench/floor", floor, methods=["POST"]))
    app.router.routes.insert(2, Route("/bench/floor-pipelined", floor_pipelined, methods=["POST"]))
    app.router.routes.insert(3, Route("/bench/bare", bare, methods=["POST"]))
    app.router.routes.insert(4, Route("/bench/naive", naive_receiver, methods=["POST"]))
    return app
