"""Who may call the status and admin routes: a bearer token (`crm-token`) with a role."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from common.settings import Settings
from common.tokens import TokenError, verify_token
from ingest.responses import error

Endpoint = Callable[[Request], Awaitable[Response]]


def requires_role(*roles: str) -> Callable[[Endpoint], Endpoint]:
    """Answer 401 without a valid token and 403 for a role not in `roles`; otherwise run the
    endpoint with the caller's claims in `request.state.claims`."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            settings: Settings = request.app.state.settings
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return error(401, "Missing bearer token")
            try:
                claims = verify_token(settings.jwt_secret.get(), token.strip())
            except TokenError as exc:
                return error(401, str(exc).capitalize())
            if claims.role not in roles:
                return error(403, f"Role '{claims.role}' may not do this")
            request.state.claims = claims
            return await endpoint(request)

        return guarded

    return decorate
