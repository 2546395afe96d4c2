"""Every error the receiver sends is JSON `{"error": ...}`; a 503 says when to come back."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

RETRY_AFTER_SECONDS = "5"
# Nobody reads this answer: nginx's code for a client that closed its request, so that
# the deliveries metric can tell it apart.
CLIENT_DISCONNECTED = 499


def error(status_code: int, message: str, *, close: bool = False, **extra: Any) -> JSONResponse:
    """`close`: the connection is closed after this answer (the request was not read whole)."""
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status_code == 503 else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)
