"""Every error the receiver sends is JSON `{"error": ...}`; a 503 says when to come back."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from common.logging import printable

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


def peer(request: Request) -> str:
    """Who sent a request, for a log line: the connection's address, and what an
    X-Forwarded-For header claims, labelled as a claim (anyone can send one)."""
    address = request.client.host if request.client else "unknown"
    claimed = request.headers.get("x-forwarded-for")
    return f"{address} (claims to forward for {printable(claimed, 100)})" if claimed else address
