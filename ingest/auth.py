"""Sender authentication over the raw body, before anything parses it."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.datastructures import Headers

from common.settings import Secret

_SHA256_HEX_LEN = 64


def _single(headers: Headers, name: str) -> str | None:
    """The header's value; None when absent or repeated (a repeat is ambiguous, so refused)."""
    values = headers.getlist(name)
    return values[0] if len(values) == 1 else None


def _matches_hmac(signature: str, body: bytes, secrets: Sequence[Secret]) -> bool:
    signature = signature.removeprefix("sha256=")
    if len(signature) != _SHA256_HEX_LEN:
        return False
    try:
        given = bytes.fromhex(signature)  # either case; 64 digits leave no room for spaces
    except ValueError:
        return False
    # Every secret is compared, so timing does not reveal which one (if any) matched.
    # hmac.digest is OpenSSL's one-shot HMAC: no HMAC object built per delivery.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given, hmac.digest(secret.get().encode(), body, "sha256"))
    return matched


def _matches_bearer(authorization: str, secrets: Sequence[Secret]) -> bool:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(token.encode(), secret.get().encode())
    return matched


def verify_instantly(headers: Headers, body: bytes, secrets: Sequence[Secret]) -> bool:
    """Instantly cannot sign; its webhook settings add fixed headers. So either an HMAC-SHA256
    of the body in `X-Instantly-Signature` (from a relay that can sign) or the shared secret as
    a bearer token. A present but wrong signature fails even when a bearer token is also sent."""
    secrets = [s for s in secrets if s.get()]
    if not secrets:
        return False
    if "x-instantly-signature" in headers:
        signature = _single(headers, "x-instantly-signature")
        return signature is not None and _matches_hmac(signature, body, secrets)
    authorization = _single(headers, "authorization")
    return authorization is not None and _matches_bearer(authorization, secrets)


def verify_calcom(headers: Headers, body: bytes, secrets: Sequence[Secret]) -> bool:
    """Cal.com signs every delivery; with no secret set on its side it sends the literal
    `no-secret-provided`, which never matches a 64-hex-digit digest."""
    secrets = [s for s in secrets if s.get()]
    signature = _single(headers, "x-cal-signature-256")
    return bool(secrets) and signature is not None and _matches_hmac(signature, body, secrets)
