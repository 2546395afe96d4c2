"""Sender authentication over the raw body, before anything parses it."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.datastructures import Headers

from common.settings import Secret, Settings

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
        # Either case. Spaces, which fromhex skips, leave under 32 bytes: never a match.
        given = bytes.fromhex(signature)
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


def _verify_instantly(headers: Headers, body: bytes, secrets: Sequence[Secret]) -> bool:
    """Instantly cannot sign; its webhook settings add fixed headers. So either an HMAC-SHA256
    of the body in `X-Instantly-Signature` (from a relay that can sign) or the shared secret as
    a bearer token. A present but wrong signature fails even when a bearer token is also sent."""
    if not secrets:
        return False
    signatures = headers.getlist("x-instantly-signature")
    if signatures:
        return len(signatures) == 1 and _matches_hmac(signatures[0], body, secrets)
    authorization = _single(headers, "authorization")
    return authorization is not None and _matches_bearer(authorization, secrets)


def _verify_calcom(headers: Headers, body: bytes, secrets: Sequence[Secret]) -> bool:
    """Cal.com signs every delivery; with no secret set on its side it sends the literal
    `no-secret-provided`, which never matches a 64-hex-digit digest."""
    signature = _single(headers, "x-cal-signature-256")
    return bool(secrets) and signature is not None and _matches_hmac(signature, body, secrets)


_VERIFIERS = {"instantly": _verify_instantly, "calcom": _verify_calcom}


def authentic(provider: str, headers: Headers, body: bytes, settings: Settings) -> bool:
    """Whether the raw body carries a valid signature (or bearer secret) of `provider`."""
    # An empty secret would let anyone sign.
    secrets = [secret for secret in settings.webhook_secrets(provider) if secret.get()]
    return _VERIFIERS[provider](headers, body, secrets)
