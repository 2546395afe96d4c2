"""The receiver. Guard order per delivery: size and content type → authenticate the raw bytes →
parse → claim the idempotency key and enqueue (common.queue, one atomic script) → 202."""

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

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common import jsonexact, overview, queue
from common import metrics as common_metrics
from common.envelope import Envelope, new_event_id, utc_now_iso
from common.logging import configure_logging
from common.queue import Claimer, NotReplicated
from common.queue.durability import warn_if_not_durable
from common.redis_clients import connect_async
from common.senders import MAX_EVENT_TYPE_LENGTH, SENDERS
from common.senders.fields import MAX_LEAD_EMAIL_LENGTH
from common.senders.kit import Sender, value_at
from common.settings import RedisTarget, Settings, SettingsError, load_settings
from ingest import admin, auth, console, metrics, openapi, status
from ingest.backpressure import Backpressure
from ingest.deadlines import BodyDeadlines
from ingest.idempotency import InvalidIdempotencyKey, derive_key
from ingest.refusals import REFUSALS
from ingest.responses import CLIENT_DISCONNECTED, error, peer

logger = logging.getLogger("crm.ingest")


class _TooLarge(Exception):
    pass


# A body over the limit is still read, up to this many times the limit, and thrown away, for
# as long as the client keeps sending: a client that writes its whole body before it reads
# (urllib, most HTTP libraries) would otherwise meet a connection reset instead of the 413.
_DISCARD_FACTOR = 4
_DISCARD_PATIENCE_SECONDS = 1.0


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or _TooLarge once it passes `limit`: a lying Content-Length or a chunked body
    cannot make us buffer more than the limit."""
    stream = request.stream()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= limit * _DISCARD_FACTOR:
            await _discard(stream, limit * _DISCARD_FACTOR)
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            await _discard(stream, limit * _DISCARD_FACTOR - size)
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(stream: AsyncIterator[bytes], budget: int) -> None:
    """Read and drop up to `budget` bytes more, while they keep coming."""
    with contextlib.suppress(TimeoutError, StopAsyncIteration):
        while budget > 0:
            async with asyncio.timeout(_DISCARD_PATIENCE_SECONDS):
                budget -= len(await anext(stream))


# Deeper payloads cannot be queued (the queue message nests the payload a few levels further).
MAX_NESTING = 250


def _unstorable(payload: object, body: bytes) -> str | None:
    """Why the payload could not be queued and stored, if it could not: a NUL character
    (PostgreSQL text and jsonb cannot hold U+0000) or nesting deeper than MAX_NESTING. The
    walk is skipped when the raw body shows neither is possible."""
    look_for_nul = b"\\u0000" in body
    if not look_for_nul and body.count(b"[") + body.count(b"{") <= MAX_NESTING:
        return None
    # A loop, not recursion: the parser accepts nesting deeper than Python's recursion limit.
    too_deep = False
    pending: list[tuple[object, int]] = [(payload, 1)]
    while pending:
        item, depth = pending.pop()
        too_deep = too_deep or depth > MAX_NESTING
        if look_for_nul and isinstance(item, str) and "\x00" in item:
            return "Body contains a NUL character (\\u0000), which cannot be stored"
        if isinstance(item, dict):
            pending += [(key, depth) for key in item]
            pending += [(value, depth + 1) for value in item.values()]
        elif isinstance(item, list):
            pending += [(value, depth + 1) for value in item]
    return "Body is nested too deeply" if too_deep else None


def _path_name(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)[1:]


def _too_long(payload: dict[str, Any], provider: Sender, event_type: str) -> str | None:
    """Why the lead's e-mail (which the database keeps in a bounded column) or the event type
    is too long to accept, if one is. A non-string lead e-mail counts as its JSON text."""
    for path in provider.lead_email_paths:
        value = value_at(payload, path)
        if value is None:
            continue
        length = len(value) if isinstance(value, str) else len(jsonexact.dumps(value))
        if length > MAX_LEAD_EMAIL_LENGTH:
            name = _path_name(path)
            return f"Field '{name}' is longer than {MAX_LEAD_EMAIL_LENGTH} characters"
    if len(event_type) > MAX_EVENT_TYPE_LENGTH:
        name = provider.event_type_field
        return f"Field '{name}' is longer than {MAX_EVENT_TYPE_LENGTH} characters"
    return None


def _may_have_run(exc: RedisError) -> bool:
    """A timeout, or a connection lost once the script was sent: Redis may have run it and
    only the reply is missing. (No free connection in the pool: nothing was sent.)"""
    if isinstance(exc, MaxConnectionsError):
        return False
    return isinstance(exc, RedisTimeoutError | RedisConnectionError)


async def _queued_anyway(claimer: Claimer, envelope: Envelope) -> bool:
    """When the script may have run with only its reply lost, the event may be queued, and
    answering 503 would leave a claimed key behind a refusal (the retry would get 409)."""
    try:
        return await claimer.claimed_by(envelope) == envelope.event_id
    except RedisError:
        return False


def _fault(settings: Settings, point: str) -> None:
    """Die here, as a crashed process would, when a test asked for it (APP_ENV=test only)."""
    if settings.test_fault_injection == point:
        os._exit(70)


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


async def receive_webhook(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    provider = SENDERS.get(request.path_params["provider"])
    if provider is None:
        return error(404, f"Unknown provider; this service takes: {', '.join(sorted(SENDERS))}")
    if not _is_json(request.headers.get("content-type")):
        return error(415, "Content-Type must be application/json")
    try:
        # A client trickling its body would otherwise hold the connection open for ever.
        deadlines: BodyDeadlines = request.app.state.body_deadlines
        body = await deadlines.within(_read_body(request, settings.max_body_bytes))
    except _TooLarge:
        return error(413, f"Body larger than {settings.max_body_bytes} bytes", close=True)
    except ClientDisconnect:
        logger.info("%s delivery: the client went away before its body was complete", provider.name)
        return error(CLIENT_DISCONNECTED, "Client disconnected")
    except TimeoutError:
        return error(408, f"Body not received within {settings.body_timeout_seconds} s")

    refused = auth.refusal(provider.name, request.headers, body, settings)
    if refused is not None:
        if not settings.dev_signature_bypass:
            REFUSALS.refused(provider.name, 401, auth.DESCRIPTIONS[refused], peer(request))
            common_metrics.AUTH_REFUSALS.labels(provider.name, refused).inc()
            return error(401, "Missing or invalid signature")
        logger.warning("DEV_SIGNATURE_BYPASS let an unauthenticated %s delivery in", provider.name)

    try:
        payload = jsonexact.loads(body)
    except ValueError:  # also invalid UTF-8
        return error(400, "Body is not valid UTF-8 JSON")
    if not isinstance(payload, dict):
        return error(400, "Body must be a JSON object")
    for name in provider.secret_fields:
        payload.pop(name, None)  # a secret the sender put in the body is neither queued nor kept
    # Refused now rather than dead-lettered later.
    problem = _unstorable(payload, body)
    if problem is not None:
        return error(400, problem)
    event_type = provider.event_type(payload)
    if event_type is None:
        return error(400, f"No event type: '{provider.event_type_field}' is missing or empty")
    too_long = _too_long(payload, provider, event_type)
    if too_long is not None:
        return error(400, too_long)
    try:
        key = derive_key(provider.name, request.headers, payload)
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
    if request.app.state.backpressure.reason is not None:
        return error(503, "Queue is full, retry later")
    claimer: Claimer = request.app.state.claimer
    _fault(settings, "exit_before_enqueue")
    try:
        first = await claimer.claim_and_enqueue(envelope)
        _fault(settings, "exit_after_enqueue")
    except NotReplicated as exc:
        # Queued on the master, perhaps, but a 2xx would promise more than one machine holds.
        # The sender's retry finds the claim (answered once it is replicated) or, if this
        # master is lost meanwhile, is queued anew on the next.
        logger.warning("%s delivery answered 503: %s", provider.name, exc)
        return error(503, "Queue not yet replicated, retry later")
    except RedisError as exc:
        if _may_have_run(exc) and await _queued_anyway(claimer, envelope):
            return _queued(envelope)
        logger.error(
            "queue unavailable, %s delivery refused: %s", provider.name, type(exc).__name__
        )
        return error(503, "Queue unavailable, retry later")
    if first is not None:
        return _duplicate(settings.duplicate_status(provider.name), first)
    return _queued(envelope)


def _duplicate(status_code: int, first: str) -> Response:
    """A repeat, answered as DUPLICATE_STATUS_<PROVIDER> says; nothing was queued either way."""
    if status_code == 200:
        return JSONResponse({"status": "duplicate", "event_id": first})
    return error(409, "Duplicate event", event_id=first)


def _queued(envelope: Envelope) -> Response:
    return JSONResponse({"status": "queued", "event_id": envelope.event_id}, status_code=202)


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


async def healthz_details(request: Request) -> Response:
    """Each dependency's state, for people and dashboards; /readyz keeps its meaning (Redis
    answers) for load balancers, since webhooks are taken while PostgreSQL is down."""
    settings: Settings = request.app.state.settings
    states = await run_in_threadpool(
        overview.dependencies,
        overview.redis_targets(settings.redis, settings.broker),
        status.engine(request.app),
    )
    refused = request.app.state.backpressure.reason
    try:
        parked: int | None = await request.app.state.redis.hlen(queue.PARKED_KEY)
    except RedisError:
        parked = None
    return JSONResponse(
        {
            "status": "ok" if all(state == "ok" for state in states.values()) else "degraded",
            "dependencies": states,
            "deliveries": f"refused: {refused}" if refused else "accepted",
            # Events PostgreSQL refused even a minimal dead letter for: crm-dlq rescue.
            "parked": parked,
            # What a repeat gets, per provider: crm-smoke expects it.
            "duplicate_status": {name: settings.duplicate_status(name) for name in SENDERS},
        }
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    if request.url.path.startswith("/webhooks/"):
        name = request.url.path.split("/")[2]
        provider = name if name in SENDERS else "unknown"
        reason = messages.get(exc.status_code, str(exc.detail))
        REFUSALS.refused(provider, exc.status_code, reason, peer(request))
    return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)))


async def _server_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log; the sender sees no internals.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error(500, "Internal error")


def _settle_garbage_collector() -> None:
    # What start-up built lives as long as the process: out of the collector's sight, and a
    # young generation of 50,000 objects instead of 700, a delivery costs ~11 % less CPU
    # (interleaved A/B runs, bench/README.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _redis(target: RedisTarget, settings: Settings) -> aioredis.Redis:
    # A claim may wait REDIS_WAIT_TIMEOUT_MS for the replicas on top of the usual 2 s.
    timeout = 2 + (settings.redis_wait_timeout_ms / 1000 if settings.redis_wait_replicas else 0)
    return connect_async(target, timeout=timeout, connect_timeout=2)


def create_app(settings: Settings | None = None) -> Starlette:
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            print(f"crm-ingest: refusing to start: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    resolved = settings
    configure_logging(resolved.log_level, resolved.log_format)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = _redis(resolved.redis, resolved)
        app.state.ready_clients = {"redis": client}
        broker = client
        if resolved.broker != resolved.redis:
            broker = _redis(resolved.broker, resolved)
            app.state.ready_clients["broker"] = broker
        # The queue lives on the broker: claim and push must hit the same server in one script.
        app.state.redis = broker
        app.state.claimer = Claimer(
            broker,
            ttl_seconds=resolved.idempotency_ttl_seconds,
            grace_seconds=resolved.broker_visibility_timeout,
            wait_replicas=resolved.redis_wait_replicas,
            wait_ms=resolved.redis_wait_timeout_ms,
        )
        app.state.body_deadlines = BodyDeadlines(resolved.body_timeout_seconds)
        app.state.body_deadlines.start()
        app.state.backpressure = Backpressure(
            broker,
            watermark=resolved.redis_memory_high_watermark,
            max_depth=resolved.max_queue_depth,
        )
        watching = asyncio.get_running_loop().create_task(app.state.backpressure.watch())
        if resolved.is_production:
            await asyncio.to_thread(warn_if_not_durable, resolved.broker, logger)
        _settle_garbage_collector()
        try:
            yield
        finally:
            app.state.backpressure.stop()
            await asyncio.to_thread(console.dispose, app)  # before the replayer it uses closes
            await app.state.body_deadlines.stop()
            watching.cancel()
            await asyncio.wait([watching], timeout=1)  # a Redis call in progress may hang
            for each in app.state.ready_clients.values():
                await each.aclose()
            admin.dispose(app)
            status.dispose(app)

    app = Starlette(
        routes=[
            Route("/webhooks/{provider}", metrics.instrumented(receive_webhook), methods=["POST"]),
            # A trailing slash, a common paste error in a sender's settings, is the same route:
            # a redirect would lose the event with senders that do not follow one on POST.
            Route("/webhooks/{provider}/", metrics.instrumented(receive_webhook), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/healthz/details", healthz_details, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *status.routes,
            *admin.routes,
            *openapi.routes,
            *metrics.routes,
            *console.routes,
        ],
        exception_handlers={HTTPException: _http_error, 500: _server_error},
        lifespan=lifespan,
    )
    app.state.settings = resolved
    if resolved.dev_signature_bypass:
        logger.warning("DEV_SIGNATURE_BYPASS is on: unsigned webhooks will be accepted")
    return app
