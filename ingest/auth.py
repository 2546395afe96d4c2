"""Sender authentication over the raw body, before anything parses it. A refusal says why, for
the log line and the metric an operator reads when a sender's deliveries get 401 (the sender
itself only sees the 401)."""

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


# Why a delivery was refused: the values of the refusal metric's `reason` label.
NO_CREDENTIALS = "no_credentials"
REPEATED_HEADER = "repeated_header"
MALFORMED_SIGNATURE = "malformed_signature"
NOT_BEARER = "not_bearer"
NO_SECRET_CONFIGURED = "no_secret_configured"  # noqa: S105 - a label, not a secret
NO_SECRET_MATCHED = "no_secret_matched"  # noqa: S105 - a label, not a secret
DESCRIPTIONS = {
    NO_CREDENTIALS: "no signature or bearer header",
    REPEATED_HEADER: "the signature or Authorization header was sent more than once",
    MALFORMED_SIGNATURE: "the signature is not 64 hex digits (optionally after sha256=)",
    NOT_BEARER: "the Authorization header is not 'Bearer <secret>'",
    NO_SECRET_CONFIGURED: "no secret is configured for this provider",
    NO_SECRET_MATCHED: "no configured secret matched",
}


def _check_hmac(signature: str, body: bytes, secrets: Sequence[Secret]) -> str | None:
    signature = signature.removeprefix("sha256=")
    if len(signature) != _SHA256_HEX_LEN:
        return MALFORMED_SIGNATURE
    try:
        # Either case. Spaces, which fromhex skips, leave under 32 bytes: never a match.
        given = bytes.fromhex(signature)
    except ValueError:
        return MALFORMED_SIGNATURE
    # Every secret is compared, so timing does not reveal which one (if any) matched.
    # hmac.digest is OpenSSL's one-shot HMAC: no HMAC object built per delivery.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given, hmac.digest(secret.get().encode(), body, "sha256"))
    return None if matched else NO_SECRET_MATCHED


def _check_bearer(authorization: str, secrets: Sequence[Secret]) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return NOT_BEARER
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(token.encode(), secret.get().encode())
    return None if matched else NO_SECRET_MATCHED


def _check_instantly(headers: Headers, body: bytes, secrets: Sequence[Secret]) -> str | None:
    """Instantly cannot sign; its webhook settings add fixed headers. So either an HMAC-SHA256
    of the body in `X-Instantly-Signature` (from a relay that can sign) or the shared secret as
    a bearer token. A present but wrong signature fails even when a bearer token is also sent."""
    signatures = headers.getlist("x-instantly-signature")
    authorizations = headers.getlist("authorization")
    if len(signatures) > 1 or (not signatures and len(authorizations) > 1):
        return REPEATED_HEADER
    if not signatures and not authorizations:
        return NO_CREDENTIALS
    if not secrets:
        return NO_SECRET_CONFIGURED
    if signatures:
        return _check_hmac(signatures[0], body, secrets)
    return _check_bearer(authorizations[0], secrets)


def _check_calcom(headers: Headers, body: bytes, secrets: Sequence[Secret]) -> str | None:
    """Cal.com signs every delivery; with no secret set on its side it sends the literal
    `no-secret-provided`, which never matches a 64-hex-digit digest."""
    signatures = headers.getlist("x-cal-signature-256")
    if len(signatures) > 1:
        return REPEATED_HEADER
    if not signatures:
        return NO_CREDENTIALS
    if not secrets:
        return NO_SECRET_CONFIGURED
    return _check_hmac(signatures[0], body, secrets)


_CHECKS = {"instantly": _check_instantly, "calcom": _check_calcom}


def refusal(provider: str, headers: Headers, body: bytes, settings: Settings) -> str | None:
    """None when the raw body carries a valid signature (or bearer secret) of `provider`; else
    why not, a key of DESCRIPTIONS. Never a secret, a signature or the body."""
    # An empty secret would let anyone sign.
    secrets = [secret for secret in settings.webhook_secrets(provider) if secret.get()]
    return _CHECKS[provider](headers, body, secrets)
