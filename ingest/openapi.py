"""The HTTP API as OpenAPI 3.1, served at `GET /openapi.json`. Written by hand, as plain data;
tests/e2e/test_hostile_input.py runs schemathesis against it, which holds code and spec together.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.senders import SENDERS
from db.tables import DEAD_LETTER_STATUSES, EVENT_STATUSES

_JSON = "application/json"
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_UUID = {"type": "string", "format": "uuid"}
_TEXT = {"type": "string"}
_INT = {"type": "integer"}
_COUNT = {"type": "integer", "minimum": 0}
_DEAD_LETTER_STATUS = {"type": "string", "enum": list(DEAD_LETTER_STATUSES)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(*optional: str, **properties: Any) -> dict[str, Any]:
    """An object with these properties, all required except those named in `optional`."""
    required = [name for name in properties if name not in optional]
    return {"type": "object", "required": required, "properties": properties}


def _reply(description: str, schema: str = "Error") -> dict[str, Any]:
    content = {_JSON: {"schema": _ref(schema)}}
    reply: dict[str, Any] = {"description": description, "content": content}
    if description.endswith("retry later"):  # every 503 says when to come back
        reply["headers"] = {"Retry-After": {"description": "Seconds", "schema": _TEXT}}
    return reply


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    security: list[dict[str, list[str]]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An operation; without `security`, it needs a token (`crm-token`)."""
    if security is None:
        responses = {
            "401": _reply("Missing, invalid or expired token"),
            "403": _reply("The token's role may not do this"),
        } | responses
    operation = {
        "operationId": operation_id,
        "summary": summary,
        "security": [{"token": []}] if security is None else security,
        "responses": responses,
        **extra,
    }
    if parameters:
        operation["parameters"] = parameters
    return operation


def _header_key(name: str, value: str) -> dict[str, str]:
    return {"type": "apiKey", "in": "header", "name": name, "description": f"`{name}: {value}`"}


def _parameter(name: str, where: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": schema}


_FILTERS: dict[str, Any] = {
    "provider": _TEXT | {"description": "a sender: " + ", ".join(SENDERS)},
    "reason": _TEXT | {"description": "e.g. invalid_payload, config_error, retries_exhausted"},
    "status": _DEAD_LETTER_STATUS | {"default": "open"},
    "since": _TIME | {"description": "last failure at or after this time"},
    "until": _TIME | {"description": "last failure before this time"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
}
_DEAD_LETTER_ID = _parameter("dead_letter_id", "path", {"type": "integer", "minimum": 1})
_SUMMARY: dict[str, Any] = {
    "id": _INT,
    "event_id": _UUID,
    **dict.fromkeys(["provider", "event_type", "reason", "error_class", "error_message"], _TEXT),
    **dict.fromkeys(["attempts", "replay_count"], _INT),
    "status": _DEAD_LETTER_STATUS,
    **dict.fromkeys(["first_failed_at", "last_failed_at"], _TIME),
    "replayed_at": _NULLABLE_TIME,
}

_SCHEMAS: dict[str, Any] = {
    "Error": _object(error=_TEXT),
    "Duplicate": _object(error=_TEXT, event_id=_TEXT),
    "DuplicateAccepted": _object(status={"const": "duplicate"}, event_id=_TEXT),
    "Status": _object(status=_TEXT),
    "Details": _object(
        "parked",
        status={"type": "string", "enum": ["ok", "degraded"]},
        dependencies={"type": "object", "additionalProperties": _TEXT},
        deliveries=_TEXT,
        # Events whose dead letter PostgreSQL refused, held in Redis (null: Redis unreadable).
        parked={"type": ["integer", "null"]},
        duplicate_status={"type": "object", "additionalProperties": {"enum": [200, 409]}},
    ),
    "Queued": _object(status={"const": "queued"}, event_id=_UUID),
    "EventStatus": _object(
        "occurred_at",
        event_id=_UUID,
        provider=_TEXT,
        event_type=_TEXT,
        status={"type": "string", "enum": list(EVENT_STATUSES)},
        attempts=_INT,
        received_at=_TIME,
        # When the sender says it happened; null when it gave no usable time (or not yet known).
        occurred_at=_NULLABLE_TIME,
        processed_at=_NULLABLE_TIME,
        result={"type": ["object", "null"]},
        error={"type": ["string", "null"]},
    ),
    "DeadLetterSummary": _object(**_SUMMARY),
    "DeadLetter": _object(
        **_SUMMARY, envelope={"type": "object"}, traceback={"type": ["string", "null"]}
    ),
    "DeadLetterList": _object(
        dead_letters={"type": "array", "items": _ref("DeadLetterSummary")}, count=_COUNT
    ),
    "ReplayFilters": _object(*_FILTERS, "dry_run", **_FILTERS, dry_run={"type": "boolean"}),
    "Replayed": _object(status={"const": "replayed"}, dead_letter_id=_INT, event_id=_UUID),
    "ReplayResult": _object(  # skipped, failed and failures: not on a dry run
        "skipped",
        "failed",
        "failures",
        **dict.fromkeys(["matched", "replayed", "skipped", "failed"], _COUNT),
        dry_run={"type": "boolean"},
        ids={"type": "array", "items": _INT},
        failures={"type": "array", "items": _object(id=_INT, reason=_TEXT)},
    ),
}

_WEBHOOK = _operation(
    "receiveWebhook",
    "Receive one webhook delivery and queue it",
    {
        "202": _reply("Queued", "Queued"),
        "200": _reply(
            "Duplicate delivery, with DUPLICATE_STATUS_<PROVIDER>=200; nothing queued",
            "DuplicateAccepted",
        ),
        "400": _reply(
            "Not UTF-8 JSON, not an object, no event type, a bad idempotency key, a NUL "
            "character (\\u0000), or nested too deeply to be queued"
        ),
        "401": _reply("Missing or invalid signature"),
        "404": _reply("Unknown provider"),
        "408": _reply("Body not received within BODY_TIMEOUT_SECONDS"),
        "409": _reply(
            "Duplicate delivery (the default); event_id is the first delivery's", "Duplicate"
        ),
        "413": _reply("Body larger than MAX_BODY_BYTES"),
        "415": _reply("Content-Type is not application/json"),
        "503": _reply("Queue unavailable, retry later"),
    },
    description=" ".join(f"{name}: {sender.auth_doc}." for name, sender in SENDERS.items())
    + " A 2xx is sent only once the event is queued; an error leaves nothing behind.",
    parameters=[
        _parameter("provider", "path", {"type": "string", "enum": list(SENDERS)}),
        _parameter("Idempotency-Key", "header", _TEXT | {"minLength": 1, "maxLength": 255}),
    ],
    security=[{scheme: []} for sender in SENDERS.values() for scheme in sender.security_schemes],
    requestBody={"required": True, "content": {_JSON: {"schema": {"type": "object"}}}},
)

_PATHS: dict[str, Any] = {
    "/webhooks/{provider}": {"post": _WEBHOOK},
    "/events/{event_id}": {
        "get": _operation(
            "getEvent",
            "The processing status of one event (reader or admin)",
            {
                "200": _reply("Event status", "EventStatus"),
                "404": _reply("Unknown event"),
                "503": _reply("Database or queue unavailable, retry later"),
            },
            parameters=[_parameter("event_id", "path", _UUID)],
        )
    },
    "/admin/dead-letters": {
        "get": _operation(
            "listDeadLetters",
            "Dead letters matching the filters, oldest first (reader or admin)",
            {
                "200": _reply("The dead letters", "DeadLetterList"),
                "400": _reply("A bad filter value (also a NUL, or a time PostgreSQL refuses)"),
                "503": _reply("Database unavailable, retry later"),
            },
            parameters=[_parameter(name, "query", schema) for name, schema in _FILTERS.items()],
        )
    },
    "/admin/dead-letters/replay": {
        "post": _operation(
            "replayMatching",
            "Replay every dead letter matching the filters (admin)",
            {
                "200": _reply("Dry run: what would be replayed", "ReplayResult"),
                "202": _reply("Replayed", "ReplayResult"),
                "400": _reply("Not a JSON object, or a bad filter value or dry_run"),
                "413": _reply("Body larger than 64 KiB"),
                "503": _reply("Database unavailable, retry later"),
            },
            requestBody={"required": False, "content": {_JSON: {"schema": _ref("ReplayFilters")}}},
        )
    },
    "/admin/dead-letters/{dead_letter_id}": {
        "get": _operation(
            "getDeadLetter",
            "One dead letter with its envelope, error, traceback and attempts (reader or admin)",
            {
                "200": _reply("The dead letter", "DeadLetter"),
                "404": _reply("Unknown dead letter"),
                "503": _reply("Database unavailable, retry later"),
            },
            parameters=[_DEAD_LETTER_ID],
        )
    },
    "/admin/dead-letters/{dead_letter_id}/replay": {
        "post": _operation(
            "replayDeadLetter",
            "Put one dead letter's envelope back on the queue (admin)",
            {
                "202": _reply("Queued again", "Replayed"),
                "404": _reply("Unknown dead letter"),
                "409": _reply("Not open: replayed (and not failed again) or discarded already"),
                "422": _reply("The stored envelope cannot be queued; discard it"),
                "503": _reply("Replay failed: database or queue unavailable, retry later"),
            },
            parameters=[_DEAD_LETTER_ID],
        )
    },
    "/healthz": {
        "get": _operation("healthz", "Liveness", {"200": _reply("Running", "Status")}, security=[])
    },
    "/healthz/details": {
        "get": _operation(
            "healthz_details",
            "Each dependency's state ('ok' or its error), and whether deliveries are shed",
            {"200": _reply("The dependencies", "Details")},
            security=[],
        )
    },
    "/readyz": {
        "get": _operation(
            "readyz",
            "Readiness: Redis and the broker answer",
            {
                "200": _reply("Ready", "Status"),
                "503": _reply("Redis or broker unavailable, retry later"),
            },
            security=[],
        )
    },
    "/openapi.json": {
        "get": _operation(
            "openapi",
            "This description",
            {"200": {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {}}}}},
            security=[],
        )
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "crm-ingest",
        "version": "0.1.0",
        "description": "Receives sales-tool webhooks and turns them into CRM rows, exactly once. "
        'Every error is JSON `{"error": "..."}`.',
    },
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            **{
                scheme: _header_key(header, value)
                for sender in SENDERS.values()
                for scheme, (header, value) in sender.security_schemes.items()
            },
            "token": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        },
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(SPEC)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
