"""Every error the receiver sends is JSON `{"error": ...}`; a 503 says when to come back."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

RETRY_AFTER_SECONDS = "5"


def error(status_code: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status_code == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)
