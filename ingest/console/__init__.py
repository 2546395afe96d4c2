"""The console: server-rendered pages for the people who look after the events — overview,
events and leads, dead letters grouped by cause, replay and discard, the audit trail.

Sign-in and sessions: ingest.console.session. Pages (GET): ingest.console.pages. Actions
(POST, admin and CSRF-checked): ingest.console.actions. Queries: db.console. Assets are served
from this package (static/); no page loads anything from another host or runs inline script.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.console import actions, export, pages
from ingest.console.session import SECURITY_HEADERS

_HEADERS = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]


class _Secured:
    """The security headers on the static files' answers as well."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, sending)


def dispose(app: Starlette) -> None:
    """At shutdown: replay-all jobs stop after the dead letter in hand and say so."""
    actions.stop_jobs(app)


routes = [
    Route("/console", pages.overview_page, methods=["GET"]),
    Route("/console/sign-in", actions.sign_in, methods=["GET"]),
    Route("/console/sign-out", actions.sign_out, methods=["POST"]),
    Route("/console/sign-out-everywhere", actions.sign_out_everywhere, methods=["POST"]),
    Route("/console/events", pages.events_page, methods=["GET"]),
    Route("/console/events.csv", export.events_csv, methods=["GET"]),
    Route("/console/dead-letters.csv", export.dead_letters_csv, methods=["GET"]),
    Route("/console/audit.csv", export.audit_csv, methods=["GET"]),
    Route("/console/events/{event_id}", pages.event_page, methods=["GET"]),
    Route("/console/leads", pages.lead_page, methods=["GET"]),
    Route("/console/dead-letters", pages.dead_letters_page, methods=["GET"]),
    Route("/console/dead-letters/replay", actions.replay_matching, methods=["POST"]),
    Route("/console/dead-letters/{dead_letter_id}", pages.dead_letter_page, methods=["GET"]),
    Route("/console/dead-letters/{dead_letter_id}/replay", actions.replay_one, methods=["POST"]),
    Route("/console/dead-letters/{dead_letter_id}/discard", actions.discard_one, methods=["POST"]),
    Route("/console/jobs/{job_id}", actions.job_page, methods=["GET"]),
    Route("/console/audit", pages.audit_page, methods=["GET"]),
    Mount(
        "/console/static",
        app=_Secured(StaticFiles(directory=Path(__file__).parent / "static")),
        name="console-static",
    ),
]
