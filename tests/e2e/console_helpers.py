"""Helpers for the console's tests: sign-in links, signed-in clients, dead letters made the
real way (a default pipeline briefly missing), and the CSRF token of a page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import Engine, text

from common.settings import Settings
from common.tokens import issue_link_token
from tests.e2e.stack import scalar
from tests.helpers import wait_for
from tests.payloads import encode, reply, signed_headers


def link(url: str, settings: Settings, *, sub: str = "tests", role: str = "admin",
         ttl: int = 600) -> str:  # fmt: skip
    token = issue_link_token(settings.jwt_secret.get(), sub=sub, role=role, ttl_seconds=ttl)
    return f"{url}/console/sign-in?token={token}"


@contextmanager
def signed_in(
    url: str, settings: Settings, *, sub: str = "tests", role: str = "admin"
) -> Iterator[httpx.Client]:
    """A client with a console session of its own."""
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as client:
        answer = client.get(link(url, settings, sub=sub, role=role))
        assert answer.status_code == 303, answer.text
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@contextmanager
def broken_pipeline(engine: Engine) -> Iterator[None]:
    """No default pipeline for a while (an admin's mistake): replies become config_error dead
    letters, which a replay turns into rows once it is back."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE pipelines SET is_default = false WHERE name = 'Sales'"))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE pipelines SET is_default = true WHERE name = 'Sales'"))


def dead_letters_of(url: str, engine: Engine, bodies: list[dict[str, Any]]) -> list[int]:
    """Deliver the bodies while the pipeline is broken; the ids of their dead letters."""
    with broken_pipeline(engine), httpx.Client(base_url=url, timeout=30) as client:
        event_ids = []
        for body in bodies:
            raw = encode(body)
            answer = client.post("/webhooks/instantly", content=raw, headers=signed_headers(raw))
            assert answer.status_code == 202, answer.text
            event_ids.append(answer.json()["event_id"])
        wait_for(
            lambda: (
                scalar(
                    engine,
                    "SELECT count(*) FROM dead_letters WHERE event_id = ANY(CAST(:ids AS uuid[]))",
                    ids=event_ids,
                )
                == len(event_ids)
            ),
            timeout=120,
            message="the dead letters did not all appear",
        )
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id FROM dead_letters WHERE event_id = ANY(CAST(:ids AS uuid[])) ORDER BY id"
            ),
            {"ids": event_ids},
        )
        return [int(row[0]) for row in rows]


def leads(count: int, tag: str) -> list[dict[str, Any]]:
    return [reply(f"{tag}{i}@{tag}.example.com", email_id=f"{tag}-{i}") for i in range(count)]
