"""HS256 tokens for the status and admin routes, and the `crm-token` command."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass

import jwt

from common.settings import SettingsError, get_settings

ROLES = ("reader", "admin")
_ALGORITHM = "HS256"


class TokenError(Exception):
    """The token is missing, malformed, expired, wrongly signed or carries no known role."""


@dataclass(frozen=True)
class Claims:
    sub: str
    role: str


def issue_token(secret: str, *, sub: str, role: str, ttl_seconds: int = 3600) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    now = int(time.time())
    claims = {"sub": sub, "role": role, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def verify_token(secret: str, token: str) -> Claims:
    try:
        # A fixed algorithm list is what refuses `alg: none` and key-confusion tokens.
        claims = jwt.decode(
            token, secret, algorithms=[_ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.InvalidTokenError:
        raise TokenError("invalid token") from None
    role = claims.get("role")
    if role not in ROLES:
        raise TokenError("token carries no known role")
    return Claims(sub=str(claims["sub"]), role=role)


# Console sign-in links carry this audience: the API refuses them (a token with an audience
# fails where none is expected), and a plain API token is no sign-in link.
LINK_AUDIENCE = "crm-console-link"


@dataclass(frozen=True)
class LinkClaims:
    sub: str
    role: str
    link_id: str  # one use only: the console records it when the link is used
    expires_at: int


def issue_link_token(secret: str, *, sub: str, role: str, ttl_seconds: int = 600) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    now = int(time.time())
    claims = {
        "sub": sub,
        "role": role,
        "aud": LINK_AUDIENCE,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def verify_link_token(secret: str, token: str) -> LinkClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            audience=LINK_AUDIENCE,
            options={"require": ["exp", "sub", "jti", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("link expired") from None
    except jwt.InvalidTokenError:
        raise TokenError("invalid link") from None
    role = claims.get("role")
    if role not in ROLES:
        raise TokenError("link carries no known role")
    return LinkClaims(str(claims["sub"]), role, str(claims["jti"]), int(claims["exp"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-token",
        description="Print a signed token for the status and admin API (signed with JWT_SECRET).",
    )
    parser.add_argument("--sub", required=True, help="who the token is for, e.g. an e-mail")
    parser.add_argument("--role", required=True, choices=ROLES, help="reader: GET; admin: all")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600)")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"crm-token: {exc}", file=sys.stderr)
        return 2
    print(
        issue_token(settings.jwt_secret.get(), sub=args.sub, role=args.role, ttl_seconds=args.ttl)
    )
    return 0


# The console sessions' generation: a session started under an older one has ended. Raised by
# `crm-console-link --revoke-all` and by an admin's "sign out everywhere" in the console.
CONSOLE_EPOCH_KEY = "crm:console:epoch"
