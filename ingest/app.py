"""The receiver. Guard order per delivery: size and content type → authenticate the raw bytes →
parse → claim the idempotency key and enqueue (one Redis round trip) → 202."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive

from common.envelope import Envelope, new_event_id, utc_now_iso
from common.logging import configure_logging
from common.queue import idempotency_redis_key
from common.settings import Settings, SettingsError, load_settings
from ingest import admin, metrics, openapi, status
from ingest.deadlines import BodyDeadlines
from ingest.headers import HeaderIndex
from ingest.idempotency import Claimer, InvalidIdempotencyKey, derive_key
from ingest.providers import Provider, providers_from
from ingest.responses import error, queued

logger = logging.getLogger("crm.ingest")


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit`: a lying Content-Length (`declared`) or a
    chunked body cannot make us buffer more than the limit. Straight from ASGI `receive`, as
    Starlette's `Request.stream` reads it but without an async generator per request; a body
    that came in one message (the usual webhook) is returned without a copy."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        if message["type"] != "http.request":
            continue
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        if not message.get("more_body", False):
            return b"".join([*chunks, chunk]) if chunks else chunk
        chunks.append(chunk)


def _has_nul(value: object) -> bool:
    # A loop, not recursion: the parser accepts nesting deeper than Python's recursion limit.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            pending += item
    return False


def _may_have_run(exc: RedisError) -> bool:
    """A timeout, or a connection lost once the script was sent: Redis may have run it and
    only the reply is missing. (No free connection in the pool: nothing was sent.)"""
    if isinstance(exc, MaxConnectionsError):
        return False
    return isinstance(exc, RedisTimeoutError | RedisConnectionError)


async def _queued_anyway(request: Request, envelope: Envelope) -> bool:
    """When the script may have run with only its reply lost, the event may be queued, and
    answering 503 would leave a claimed key behind a refusal (the retry would get 409)."""
    key = idempotency_redis_key(envelope.provider, envelope.idempotency_key)
    try:
        claimed = await request.app.state.redis.get(key)
    except RedisError:
        return False
    return claimed is not None and claimed.decode() == envelope.event_id


def _fault(settings: Settings, point: str) -> None:
    """Die here, as a crashed process would, when a test asked for it (APP_ENV=test only)."""
    if settings.test_fault_injection == point:
        os._exit(70)


def _is_json(content_type: str | None) -> bool:
    if content_type == "application/json":  # what senders send: no parsing needed
        return True
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


class _Webhooks:
    """What the webhook route reads per delivery, behind one app-state lookup instead of four
    (each a Python-level `State.__getattr__`). The claimer needs the Redis client, so it is
    set when the app starts."""

    __slots__ = ("body_deadlines", "claimer", "providers", "settings")
    claimer: Claimer

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.providers = providers_from(settings)
        self.body_deadlines = BodyDeadlines(settings.body_timeout_seconds)


async def receive_webhook(request: Request) -> Response:
    webhooks: _Webhooks = request.app.state.webhooks
    settings = webhooks.settings
    provider: Provider | None = webhooks.providers.get(request.path_params["provider"])
    if provider is None:
        return error(404, "Unknown provider")
    headers = HeaderIndex(request.scope["headers"])
    if not _is_json(headers.get("content-type")):
        return error(415, "Content-Type must be application/json")
    try:
        # A client trickling its body would otherwise hold the connection open for ever.
        body = await webhooks.body_deadlines.within(
            _read_body(request.receive, headers.get("content-length"), settings.max_body_bytes)
        )
    except _TooLarge:
        return error(413, f"Body larger than {settings.max_body_bytes} bytes")
    except TimeoutError:
        return error(408, f"Body not received within {settings.body_timeout_seconds} s")

    if not provider.verify(headers, body, provider.secrets):
        if not settings.dev_signature_bypass:
            return error(401, "Missing or invalid signature")
        logger.warning("DEV_SIGNATURE_BYPASS let an unauthenticated %s delivery in", provider.name)

    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:  # also invalid UTF-8
        return error(400, "Body is not valid UTF-8 JSON")
    if not isinstance(payload, dict):
        return error(400, "Body must be a JSON object")
    # PostgreSQL text and jsonb cannot hold U+0000: refuse now rather than dead-letter later.
    if b"\\u0000" in body and _has_nul(payload):
        return error(400, "Body contains a NUL character (\\u0000), which cannot be stored")
    event_type = provider.event_type(payload)
    if event_type is None:
        return error(400, f"No event type: '{provider.event_type_field}' is missing or empty")
    try:
        key = derive_key(provider.name, headers, payload, body)
    except InvalidIdempotencyKey as exc:
        return error(400, str(exc))

    envelope = Envelope(
        event_id=new_event_id(),
        provider=provider.name,
        event_type=event_type,
        idempotency_key=key,
        received_at=utc_now_iso(),
        payload=payload,
    )
    _fault(settings, "exit_before_enqueue")
    try:
        first = await webhooks.claimer.claim_and_enqueue(envelope)
        _fault(settings, "exit_after_enqueue")
    except orjson.JSONEncodeError:  # the queue message is built before Redis is touched
        return error(400, "Body is nested too deeply")
    except RedisError as exc:
        if _may_have_run(exc) and await _queued_anyway(request, envelope):
            return queued(envelope.event_id)
        logger.error(
            "queue unavailable, %s delivery refused: %s", provider.name, type(exc).__name__
        )
        return error(503, "Queue unavailable, retry later")
    if first is not None:
        return error(409, "Duplicate event", event_id=first)
    return queued(envelope.event_id)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    clients: dict[str, aioredis.Redis] = request.app.state.ready_clients
    failed = []
    for name, client in clients.items():
        try:
            await client.ping()
        except (RedisError, OSError):
            failed.append(name)
    if failed:
        return error(503, "Not ready", unavailable=failed)
    return JSONResponse({"status": "ready"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)))


async def _server_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log; the sender sees no internals.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error(500, "Internal error")


def _settle_garbage_collector() -> None:
    """Everything imported and built at start-up lives as long as the process: moved out of
    the collector's sight, a collection only walks the objects of the requests in flight.
    Each request allocates a parsed payload; a young generation of 50,000 objects instead of
    700 collects a few times a second under load instead of hundreds. (Profiled with
    callgrind: the collector was a tenth of the instructions a delivery costs beyond the
    floor's.)"""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def create_app(settings: Settings | None = None) -> Starlette:
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            print(f"crm-ingest: refusing to start: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    resolved = settings
    configure_logging(resolved.log_level)
    webhooks = _Webhooks(resolved)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        options: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}
        client = aioredis.Redis.from_url(resolved.redis_url, **options)
        app.state.ready_clients = {"redis": client}
        broker = None
        if resolved.celery_broker_url != resolved.redis_url:
            broker = aioredis.Redis.from_url(resolved.celery_broker_url, **options)
            app.state.ready_clients["broker"] = broker
        # The queue lives on the broker: claim and push must hit the same server in one script.
        webhooks.claimer = Claimer(
            broker or client,
            resolved.idempotency_ttl_seconds,
            inflight_grace=resolved.broker_visibility_timeout,
        )
        app.state.redis = broker or client
        webhooks.body_deadlines.start()
        folding = asyncio.get_running_loop().create_task(metrics.TALLY.fold_every_while())
        _settle_garbage_collector()
        try:
            yield
        finally:
            folding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await folding
            await webhooks.body_deadlines.stop()
            await client.aclose()
            if broker is not None:
                await broker.aclose()
            admin.dispose(app)
            status.dispose(app)

    app = Starlette(
        routes=[
            Route("/webhooks/{provider}", metrics.instrumented(receive_webhook), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *status.routes,
            *admin.routes,
            *openapi.routes,
            *metrics.routes,
        ],
        exception_handlers={HTTPException: _http_error, 500: _server_error},
        lifespan=lifespan,
    )
    app.state.settings = resolved
    app.state.webhooks = webhooks
    if resolved.dev_signature_bypass:
        logger.warning("DEV_SIGNATURE_BYPASS is on: unsigned webhooks will be accepted")
    return app
