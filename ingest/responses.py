"""Every error the receiver sends is JSON `{"error": ...}`; a 503 says when to come back."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

RETRY_AFTER_SECONDS = "5"


def error(status_code: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status_code == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)


def queued(event_id: str) -> Response:
    """The 202 of an accepted delivery: `{"status":"queued","event_id":...}`. Rendered by hand
    because it is on every delivery's path and the id is a UUID (nothing to escape)."""
    body = b'{"status":"queued","event_id":"' + event_id.encode() + b'"}'
    return Response(body, status_code=202, media_type="application/json")
