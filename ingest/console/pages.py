"""The console's pages (GET): overview, events, an event, a lead, dead letters, a dead letter,
the audit trail. Server-rendered, autoescaped: a payload's values are always shown as text."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from markupsafe import Markup
from redis.exceptions import RedisError
from sqlalchemy import Connection
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from common import overview, queue
from common.replay import ANY_STATUS, WHAT_TO_DO, filters_from, parse_time, text_filter
from common.senders import SENDERS
from common.settings import RedisTarget, Settings
from db import audit, console, dead_letters, events
from db.tables import DEAD_LETTER_STATUSES, EVENT_STATUSES
from ingest.admin import dead_letter_id_of, parse_id
from ingest.console import charts
from ingest.console.session import Session, guarded
from ingest.status import engine

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _when(value: object) -> str:
    """A time as people read it; stored rows come as datetimes or ISO 8601 text."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return "—"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "—"


templates.env.filters["when"] = _when

PAGE_SIZE = 50
T = TypeVar("T")


class BadInput(ValueError):
    """A filter value the page cannot use; the message names the field."""


def render(
    request: Request,
    template: str,
    session: Session | None,
    title: str,
    status_code: int = 200,
    **context: Any,
) -> Response:
    return templates.TemplateResponse(
        request,
        template,
        {"session": session, "title": title, **context},
        status_code=status_code,
    )


def failure(request: Request, status_code: int, message: str, session: Session | None) -> Response:
    if message == "signed_out":
        return render(
            request, "message.html", None, "Signed out", status_code,
            message="You are not signed in, or your session has ended.", signed_out=True,
        )  # fmt: skip
    titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 503: "Unavailable"}
    return render(request, "message.html", session, titles.get(status_code, "Error"),
                  status_code, message=message)  # fmt: skip


page = guarded(admin=False, csrf=False, failure=failure)


async def query(request: Request, work: Callable[[Connection], T]) -> T:
    """Run `work` on a read-only connection, off the event loop."""

    def run() -> T:
        with engine(request.app).connect() as conn:
            return work(conn)

    return await run_in_threadpool(run)


async def guarded_query(
    request: Request, session: Session, work: Callable[[Connection], T]
) -> T | Response:
    try:
        return await query(request, work)
    except DataError:
        return failure(request, 400, "A filter value is out of range", session)
    except SQLAlchemyError:
        return failure(request, 503, "The database is unavailable; retry later", session)


class _WorkerPing:
    """The workers' last answer to a ping, refreshed in the background at most every few
    seconds: a broadcast ping waits its whole timeout, which no page should — except the first,
    which waits for the first answer so that the page arrives complete."""

    MAX_AGE_SECONDS = 10.0
    PING_SECONDS = 0.5

    def __init__(self) -> None:
        self.workers: list[str] | None = None
        self.asked_at = -self.MAX_AGE_SECONDS
        self._lock = threading.Lock()
        self._answered = threading.Event()

    def latest(self, broker: RedisTarget) -> list[str] | None:
        with self._lock:
            if time.monotonic() - self.asked_at > self.MAX_AGE_SECONDS:
                self.asked_at = time.monotonic()
                threading.Thread(target=self._ask, args=(broker,), daemon=True).start()
        self._answered.wait(timeout=self.PING_SECONDS * 2)  # at once once it has an answer
        return self.workers

    def _ask(self, broker: RedisTarget) -> None:
        self.workers = overview.ping_workers(broker, timeout=self.PING_SECONDS)
        self._answered.set()


_PINGS = _WorkerPing()


@page
async def overview_page(request: Request, session: Session) -> Response:
    settings: Settings = request.app.state.settings
    snapshot = await run_in_threadpool(
        overview.take,
        settings.redis,
        settings.broker,
        engine(request.app),
        workers=lambda: _PINGS.latest(settings.broker),
    )
    extra = await guarded_query(
        request,
        session,
        lambda conn: (console.last_day(conn), console.last_failures(conn)),
    )
    if isinstance(extra, Response):
        extra = (([], {}), [])
    (counts, minutes), failures = extra
    try:
        minutes["depth"] = await queue.depth_history(request.app.state.redis)
    except RedisError:
        minutes["depth"] = {}
    return render(
        request, "overview.html", session, "Overview", o=snapshot, counts=counts,
        failures=failures, workers_note="none answered a ping", refresh=30,
        pictures=_pictures(minutes),
    )  # fmt: skip


_STATUS_ORDER = ("processed", "ignored", "queued", "dead")


def _binned(
    values: dict[datetime, int], step: timedelta, *, largest: bool = False
) -> dict[datetime, int]:
    """Minute counts summed (or, `largest`, the most of them) into bars of `step`."""
    seconds = int(step.total_seconds())
    out: dict[datetime, int] = {}
    for at, count in values.items():
        key = datetime.fromtimestamp(int(at.timestamp()) // seconds * seconds, tz=UTC)
        out[key] = max(out.get(key, 0), count) if largest else out.get(key, 0) + count
    return out


def _pictures(
    minutes: dict[str, dict[datetime, int]],
) -> list[tuple[str, list[tuple[str, Markup]]]]:
    """The last hour minute by minute, and the last day in 20-minute bars: events received by
    status, dead letters opened, the queue's depth (its largest in a bar)."""
    now = datetime.now(UTC)
    shown = []
    for title, span, step in (
        ("Last hour", timedelta(hours=1), timedelta(minutes=1)),
        ("Last day", timedelta(days=1), timedelta(minutes=20)),
    ):
        starts = charts.buckets(now, span, step)
        received = {
            status: _binned(minutes.get(f"received:{status}", {}), step) for status in _STATUS_ORDER
        }
        drawn = {
            "Events received, by status": received,
            "Dead letters opened": {"opened": _binned(minutes.get("opened", {}), step)},
            "Queue depth": {"depth": _binned(minutes.get("depth", {}), step, largest=True)},
        }
        shown.append(
            (
                title,
                [
                    (caption, charts.stacked_bars(caption, starts, series, step))
                    for caption, series in drawn.items()
                ],
            )
        )
    return shown


def _text(
    params: Mapping[str, str], name: str, choices: tuple[str, ...] | None = None
) -> str | None:
    try:
        return text_filter(name, params.get(name), choices)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    try:
        return parse_time(name, _text(params, name))
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _next_link(path: str, params: Mapping[str, str], **cursor: str) -> str:
    kept = {k: v for k, v in params.items() if v and k not in ("before", "before_id")}
    return f"{path}?{urlencode(kept | cursor)}"


@page
async def events_page(request: Request, session: Session) -> Response:
    params = request.query_params
    try:
        filters = event_filters(params)
        before = _event_cursor(params.get("before"))
    except BadInput as exc:
        return failure(request, 400, str(exc), session)
    rows = await guarded_query(
        request, session,
        lambda conn: console.search_events(conn, filters, before=before, limit=PAGE_SIZE),
    )  # fmt: skip
    if isinstance(rows, Response):
        return rows
    next_page = None
    if len(rows) == PAGE_SIZE:
        last = rows[-1]
        next_page = _next_link(
            "/console/events", params, before=f"{last['received_at'].isoformat()}|{last['id']}"
        )
    return render(
        request, "events.html", session, "Events", rows=rows, form=dict(params),
        providers=tuple(SENDERS), statuses=EVENT_STATUSES, next_page=next_page,
    )  # fmt: skip


def event_filters(params: Mapping[str, str]) -> console.EventFilters:
    """The events page's filter: every field checked, BadInput naming a bad one."""
    return console.EventFilters(
        lead_email=_text(params, "email"),
        provider=_text(params, "provider", tuple(SENDERS)),
        event_type=_text(params, "event_type"),
        status=_text(params, "status", EVENT_STATUSES),
        since=_time(params, "since"),
        until=_time(params, "until"),
    )


def _event_cursor(raw: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not raw:
        return None
    at, _, event_id = raw.partition("|")
    try:
        return datetime.fromisoformat(at), uuid.UUID(event_id)
    except ValueError:
        raise BadInput("'before' is not a page cursor") from None


@page
async def event_page(request: Request, session: Session) -> Response:
    try:
        event_id = uuid.UUID(request.path_params["event_id"])
    except ValueError:
        return failure(request, 404, "No such event", session)

    def load(conn: Connection) -> tuple[Any, Any, Any]:
        found = console.event(conn, event_id=event_id)
        letters = dead_letters.id_for_event(conn, event_id=event_id) if found else None
        linked = console.activities_of_event(conn, event_id=event_id) if found else []
        return found, letters, linked

    loaded = await guarded_query(request, session, load)
    if isinstance(loaded, Response):
        return loaded
    found, dead_letter, linked = loaded
    if found is None:
        return failure(request, 404, "No such event", session)
    return render(
        request, "event.html", session, f"Event {event_id}", e=found, activities=linked,
        dead_letter=dead_letter, payload_json=json.dumps(found["payload"], indent=2,
        ensure_ascii=False), result_json=json.dumps(found["result"], indent=2),
    )  # fmt: skip


@page
async def lead_page(request: Request, session: Session) -> Response:
    try:
        email = _text(request.query_params, "email")
    except BadInput as exc:
        return failure(request, 400, str(exc), session)
    if email is None:
        return failure(request, 400, "'email' is missing: give the lead's e-mail", session)
    found = await guarded_query(request, session, lambda conn: console.lead(conn, email=email))
    if isinstance(found, Response):
        return found
    if found is None:
        return failure(request, 404, f"No lead and no event with the e-mail {email}", session)
    return render(request, "lead.html", session, f"Lead {found['email']}", lead=found)


def dead_letter_filters(params: Mapping[str, str]) -> dead_letters.Filters:
    """The dead-letter filter of a page or a form: every field checked, BadInput naming one."""
    try:
        base = filters_from(
            {key: params.get(key) for key in ("provider", "reason", "status", "since", "until")},
            default_status="open",
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return dead_letters.Filters(
        provider=base.provider,
        reason=base.reason,
        status=base.status,
        since=base.since,
        until=base.until,
        limit=None,
        error_class=_text(params, "error_class"),
        lead_email=_text(params, "email"),
    )


FILTER_FIELDS = ("provider", "reason", "error_class", "status", "email", "since", "until")


@page
async def dead_letters_page(request: Request, session: Session) -> Response:
    params = request.query_params
    try:
        filters = dead_letter_filters(params)
        raw_before = params.get("before_id", "")
        before_id = parse_id(raw_before)
        if raw_before and before_id is None:
            raise BadInput("'before_id' must be a dead letter id")
    except BadInput as exc:
        return failure(request, 400, str(exc), session)

    def load(conn: Connection) -> tuple[Any, Any, Any]:
        groups = console.dead_letter_groups(conn, status=filters.status)
        rows = console.dead_letter_page(conn, filters, before_id=before_id, limit=PAGE_SIZE)
        return groups, rows, console.dead_letter_choices(conn)

    loaded = await guarded_query(request, session, load)
    if isinstance(loaded, Response):
        return loaded
    groups, rows, choices = loaded
    next_page = None
    if len(rows) == PAGE_SIZE:
        next_page = _next_link("/console/dead-letters", params, before_id=str(rows[-1]["id"]))
    form = dict(params) | {"status": params.get("status") or "open"}
    filter_fields = [(name, form[name]) for name in FILTER_FIELDS if form.get(name)]
    return render(
        request, "dead_letters.html", session, "Dead letters", groups=groups, rows=rows,
        form=form, statuses=(*DEAD_LETTER_STATUSES, ANY_STATUS), next_page=next_page,
        filter_fields=filter_fields, choices=choices, what_to_do=WHAT_TO_DO,
    )  # fmt: skip


# What an action's redirect may announce: fixed texts, so a crafted link cannot put words here.
_NOTICES = {
    "replayed": "Replayed: the event is back on the queue.",
    "discarded": "Discarded: off the open list; the row stays, for the record.",
    "skipped": "Nothing done: the dead letter was discarded already.",
    "failed": "The replay failed; the dead letter is unchanged. See the log.",
}


@page
async def dead_letter_page(request: Request, session: Session) -> Response:
    letter_id = dead_letter_id_of(request)
    if letter_id is None:
        return failure(request, 404, "No such dead letter", session)

    def load(conn: Connection) -> tuple[Any, Any, Any]:
        found = dead_letters.get_dead_letter(conn, dead_letter_id=letter_id)
        if found is None:
            return None, [], None
        history = audit.for_dead_letter(conn, dead_letter_id=letter_id)
        event = events.get_event(conn, event_id=uuid.UUID(found["event_id"]))
        return found, history, event

    loaded = await guarded_query(request, session, load)
    if isinstance(loaded, Response):
        return loaded
    found, history, event = loaded
    if found is None:
        return failure(request, 404, "No such dead letter", session)
    return render(
        request, "dead_letter.html", session, f"Dead letter #{letter_id}", d=found,
        history=history, envelope_json=json.dumps(found["envelope"], indent=2, ensure_ascii=False),
        notice=_NOTICES.get(request.query_params.get("done", "")), event=event,
        what_to_do=WHAT_TO_DO.get(found["reason"], ""),
    )  # fmt: skip


@page
async def audit_page(request: Request, session: Session) -> Response:
    raw_before = request.query_params.get("before_id", "")
    before_id = parse_id(raw_before)
    if raw_before and before_id is None:
        return failure(request, 400, "'before_id' must be an action id", session)
    rows = await guarded_query(
        request, session, lambda conn: audit.recent(conn, limit=PAGE_SIZE, before_id=before_id)
    )
    if isinstance(rows, Response):
        return rows
    next_page = None
    if len(rows) == PAGE_SIZE:
        next_page = f"/console/audit?before_id={rows[-1]['id']}"
    return render(request, "audit.html", session, "Audit", rows=rows, next_page=next_page)
