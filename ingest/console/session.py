"""Console sign-in and sessions.

A one-time link from `crm-console-link` (a signed token with its own audience, ten minutes by
default) is exchanged at /console/sign-in for a session: a random id in an HttpOnly,
SameSite=Lax cookie (Secure in production), whose record lives in Redis under a hash of the id
for CONSOLE_SESSION_HOURS. The 303 that sets it takes the token out of the address bar; the
link's id is recorded so the link works once. Sign-out deletes the record.

A session is bound to the JWT_SECRET that signed its link (a fingerprint of it in the record)
and to the sessions' generation (`EPOCH_KEY`): rotating the secret ends every session, and
so does `revoke_all` (`crm-console-link --revoke-all`, or an admin's "sign out everywhere").

Every form carries the session's CSRF token; `page` and `action` check the session, the role
and (for a POST) the token, and set the security headers on every answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from common.settings import Settings
from common.tokens import CONSOLE_EPOCH_KEY, TokenError, verify_link_token

COOKIE = "crm_console"
_SESSION_PREFIX = "crm:console:session:"
EPOCH_KEY = CONSOLE_EPOCH_KEY
_USED_LINK_PREFIX = "crm:console:link:"

# No inline script or style, no framing, no referrer, nothing from another host.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Session:
    sub: str
    role: str
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _key(session_id: str) -> str:
    # Hashed: a copy of Redis does not hand out live cookies.
    return _SESSION_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def _client(request: Request) -> aioredis.Redis:
    client: aioredis.Redis = request.app.state.ready_clients["redis"]
    return client


def secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _secret_mark(settings: Settings) -> str:
    """Names the secret without revealing it: a session of another secret does not match."""
    key = settings.jwt_secret.get().encode()
    return hmac.new(key, b"crm-console-session", hashlib.sha256).hexdigest()


def _epoch(raw: bytes | str | None) -> int:
    return int(raw or 0)


async def current(request: Request) -> Session | None:
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    raw, epoch = await _client(request).mget([_key(session_id), EPOCH_KEY])
    if raw is None:
        return None
    data = json.loads(raw)
    settings: Settings = request.app.state.settings
    bound = data.get("secret") == _secret_mark(settings) and data.get("epoch") == _epoch(epoch)
    if not bound:  # signed with a secret since rotated, or revoked
        return None
    return Session(data["sub"], data["role"], data["csrf"])


async def revoke_all(request: Request) -> None:
    """End every console session there is."""
    await _client(request).incr(EPOCH_KEY)


class LinkRefused(Exception):
    """The sign-in link is invalid, expired or used; the message says which."""


async def sign_in(request: Request, token: str) -> Response:
    """Exchange a one-time link for a session; 303 to the overview with the cookie set."""
    settings: Settings = request.app.state.settings
    try:
        link = verify_link_token(settings.jwt_secret.get(), token)
    except TokenError as exc:
        raise LinkRefused(str(exc)) from None
    client = _client(request)
    # Recorded until the link would expire anyway: a second visit finds it.
    ttl = max(1, link.expires_at - int(time.time()))
    if not await client.set(_USED_LINK_PREFIX + link.link_id, "1", nx=True, ex=ttl):
        raise LinkRefused("link already used")
    session_id = secrets.token_urlsafe(32)
    record = {
        "sub": link.sub,
        "role": link.role,
        "csrf": secrets.token_urlsafe(32),
        "secret": _secret_mark(settings),
        "epoch": _epoch(await client.get(EPOCH_KEY)),
    }
    lifetime = settings.console_session_hours * 3600
    await client.set(_key(session_id), json.dumps(record), ex=lifetime)
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=lifetime,
        path="/console",
        httponly=True,
        samesite="lax",
        secure=settings.is_production,
    )
    return secure(response)


async def sign_out(request: Request) -> None:
    session_id = request.cookies.get(COOKIE)
    if session_id:
        await _client(request).delete(_key(session_id))


def csrf_ok(session: Session, given: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), session.csrf.encode())


Page = Callable[[Request, Session], Awaitable[Response]]
Failure = Callable[[Request, int, str, Session | None], Response]


def guarded(
    *, admin: bool, csrf: bool, failure: Failure
) -> Callable[[Page], Callable[[Request], Awaitable[Response]]]:
    """A console endpoint: signed in (else 401 and how to sign in), an admin where `admin`, a
    valid CSRF token in the form where `csrf` (else 403, nothing done); security headers on
    whatever it answers."""

    def decorate(endpoint: Page) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                session = await current(request)
            except RedisError:
                return secure(failure(request, 503, "Redis is unavailable; retry later", None))
            if session is None:
                return secure(failure(request, 401, "signed_out", None))
            if admin and not session.is_admin:
                return secure(failure(request, 403, "Only an admin may do this", session))
            if csrf:
                form = await request.form()
                if not csrf_ok(session, form.get("csrf")):
                    return secure(
                        failure(request, 403, "The form's CSRF token is missing or wrong", session)
                    )
            return secure(await endpoint(request, session))

        return run

    return decorate
