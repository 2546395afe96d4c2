"""Sample deliveries, read from one place, and how a sender signs them."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"

INSTANTLY_SECRET = "test-instantly-secret-A"
INSTANTLY_SECRET_ROTATED = "test-instantly-secret-B"
CALCOM_SECRET = "test-calcom-secret"
SMARTLEAD_SECRET = "test-smartlead-secret-A"
SMARTLEAD_SECRET_ROTATED = "test-smartlead-secret-B"
CALENDLY_SECRET = "test-calendly-signing-key"


@cache
def _load(provider: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / provider / f"{name}.json").read_text())
    return loaded


def fixture(provider: str, name: str, **overrides: Any) -> dict[str, Any]:
    """A fresh copy of a sample body, with top-level fields replaced (None deletes a field)."""
    body = copy.deepcopy(_load(provider, name))
    for key, value in overrides.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def reply(lead: str | None = None, **overrides: Any) -> dict[str, Any]:
    """An Instantly reply; with `lead`, from that address (both e-mail fields set)."""
    if lead is not None:
        overrides.setdefault("lead_email", lead)
        overrides.setdefault("email", lead)
    return fixture("instantly", "reply_received", **overrides)


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def hmac_hex(raw: bytes, secret: str = INSTANTLY_SECRET) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def signed_headers(raw: bytes, secret: str = INSTANTLY_SECRET, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Instantly-Signature": f"sha256={hmac_hex(raw, secret)}",
        **extra,
    }


def bearer_headers(secret: str = INSTANTLY_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}


def smartlead(
    name: str = "email_reply", secret: str | None = SMARTLEAD_SECRET, **overrides: Any
) -> dict[str, Any]:
    """A Smartlead body carrying `secret` as its secret_key (None: no secret_key at all)."""
    return fixture("smartlead", name, secret_key=secret, **overrides)


def calendly_headers(
    raw: bytes, secret: str = CALENDLY_SECRET, at: int | None = None
) -> dict[str, str]:
    """Calendly's signature of `raw` made at `at` (now by default), as Calendly sends it."""
    stamp = int(time.time()) if at is None else at
    signature = hmac.new(secret.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "Calendly-Webhook-Signature": f"t={stamp},v1={signature}",
    }
