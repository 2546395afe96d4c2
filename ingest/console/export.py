"""The console's lists as CSV: events, dead letters and the audit trail, for the filter a page
shows. Streamed a page of rows at a time (keyset, as the pages are), at most MAX_ROWS, with the
filter in the file name. A cell a spreadsheet would run as a formula (= + - @, or a tab or
carriage return first) is written with a leading apostrophe, as OWASP advises."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from db import audit, console
from ingest.console.pages import (
    FILTER_FIELDS,
    BadInput,
    dead_letter_filters,
    event_filters,
    failure,
    page,
)
from ingest.console.session import Session
from ingest.status import engine

MAX_ROWS = 100_000
_CHUNK = 500
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

Fetch = Callable[[Connection, Any], list[dict[str, Any]]]  # a page after the cursor


def cell(value: object) -> str:
    """A value as a CSV cell no spreadsheet runs: text that starts like a formula is quoted."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def _file_name(kind: str, params: Mapping[str, str], fields: Sequence[str]) -> str:
    parts = [kind] + [f"{name}-{params[name]}" for name in fields if params.get(name)]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts))[:150] + ".csv"


def _stream(
    db: Engine, columns: Sequence[str], fetch: Fetch, cursor_of: Callable[[dict[str, Any]], Any]
) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    sent, cursor = 0, None
    while sent < MAX_ROWS:
        with db.connect() as conn:
            rows = fetch(conn, cursor)
        for row in rows[: MAX_ROWS - sent]:
            writer.writerow([cell(row.get(column)) for column in columns])
        sent += len(rows)
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < _CHUNK:
            break
        cursor = cursor_of(rows[-1])


def _csv(
    request: Request,
    kind: str,
    fields: Sequence[str],
    columns: Sequence[str],
    fetch: Fetch,
    cursor_of: Callable[[dict[str, Any]], Any],
) -> Response:
    name = _file_name(kind, request.query_params, fields)
    return StreamingResponse(
        _stream(engine(request.app), columns, fetch, cursor_of),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


_EVENT_COLUMNS = (
    "id", "received_at", "occurred_at", "provider", "event_type", "status", "attempts",
    "processed_at", "lead_email",
)  # fmt: skip
_DEAD_LETTER_COLUMNS = (
    "id", "last_failed_at", "provider", "event_type", "reason", "error_class", "error_message",
    "status", "attempts",
)  # fmt: skip
_AUDIT_COLUMNS = (
    "id", "created_at", "actor", "role", "source", "action", "dead_letter_ids", "filters",
    "matched", "replayed", "skipped", "failed", "outcome",
)  # fmt: skip


@page
async def events_csv(request: Request, session: Session) -> Response:
    try:
        filters = event_filters(request.query_params)
    except BadInput as exc:
        return failure(request, 400, str(exc), session)
    return _csv(
        request, "events", ("provider", "event_type", "status", "email", "since", "until"),
        _EVENT_COLUMNS,
        lambda conn, before: console.search_events(conn, filters, before=before, limit=_CHUNK),
        lambda row: (row["received_at"], row["id"]),
    )  # fmt: skip


@page
async def dead_letters_csv(request: Request, session: Session) -> Response:
    try:
        filters = dead_letter_filters(request.query_params)
    except BadInput as exc:
        return failure(request, 400, str(exc), session)
    return _csv(
        request, "dead-letters", FILTER_FIELDS, _DEAD_LETTER_COLUMNS,
        lambda conn, before: console.dead_letter_page(
            conn, filters, before_id=before, limit=_CHUNK
        ),
        lambda row: row["id"],
    )  # fmt: skip


@page
async def audit_csv(request: Request, session: Session) -> Response:
    return _csv(
        request, "audit", (), _AUDIT_COLUMNS,
        lambda conn, before: audit.recent(conn, limit=_CHUNK, before_id=before),
        lambda row: row["id"],
    )  # fmt: skip
