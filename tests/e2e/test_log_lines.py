"""Log lines a sender cannot forge or flood: every value that came from a sender is escaped
and cut wherever it reaches a line, in both formats, and a refusal names the real peer."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import Engine

from common import queue
from common.envelope import Envelope
from tests.e2e.stack import IsolatedStack, wait_processed
from tests.helpers import wait_for
from tests.payloads import encode, reply, signed_headers

pytestmark = pytest.mark.e2e

FORGED = "\n2026-12-04 12:00:00,000 ERROR crm.worker: FORGED line"
ESCAPE = "\x1b[2J\x1b[31mred"
LONGEST_LINE = 4000  # a message of 2,000 characters at most, with its time, level and event


def _lines(text: str) -> list[str]:
    return text.splitlines()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_sender_values_are_escaped_and_cut_in_every_line(
    isolated: IsolatedStack, superuser_engine: Engine, log_format: str
) -> None:
    worker = isolated.worker(LOG_FORMAT=log_format)
    receiver, url = isolated.receiver(LOG_FORMAT=log_format)
    accepted = []
    for event_type in (f"reply{FORGED}", f"reply{ESCAPE}"):
        raw = encode(reply(f"{uuid.uuid4().hex[:8]}@logs.example.com", event_type=event_type))
        answer = httpx.post(f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw))
        assert answer.status_code == 202, answer.text
        accepted.append(answer.json()["event_id"])
    # A huge event type the receiver would refuse, queued as an older release or a replay
    # might have: the worker logs it cut, never whole.
    huge = Envelope(
        event_id=str(uuid.uuid4()),
        provider="instantly",
        event_type="x" * 1_000_000,
        idempotency_key=f"huge:{uuid.uuid4()}",
        received_at=datetime.now(UTC).isoformat(),
        payload=reply("huge@logs.example.com", event_type="x" * 1_000_000),
    )
    queue.enqueue(isolated.client, huge, grace_seconds=300)
    wait_processed(superuser_engine, [*accepted, huge.event_id])
    refused = httpx.post(
        f"{url}/webhooks/instantly",
        content=encode(reply()),
        headers={"content-type": "application/json", "x-forwarded-for": "6.6.6.6"},
    )
    assert refused.status_code == 401
    wait_for(lambda: "refused" in receiver.output(), message="the refusal was not logged")

    assert "FORGED" in worker.output(), "the worker names the event type, escaped"
    for process in (worker, receiver):
        output = process.output()
        assert not any(line.startswith("2026-12-04 12:00:00,000") for line in _lines(output))
        assert "\x1b" not in output
        assert max(len(line) for line in _lines(output)) < LONGEST_LINE
        if log_format == "json":
            for line in _lines(output):
                json.loads(line)  # each line one JSON object: nothing broke out of one
    [refusal] = [line for line in _lines(receiver.output()) if "refused" in line]
    # The peer is the connection's; what a header says is shown as a claim, not as the peer.
    assert "from 127.0.0.1 (claims to forward for 6.6.6.6)" in refusal


def test_every_refusal_says_why_once_per_kind_and_interval(isolated: IsolatedStack) -> None:
    receiver, url = isolated.receiver()
    body = encode(reply())
    json_type = {"content-type": "application/json"}
    cases = [
        ("POST", "/webhooks/instantly", b"{not json", signed_headers(b"{not json"), 400),
        ("POST", "/webhooks/nope", body, json_type, 404),
        ("GET", "/webhooks/instantly", b"", {}, 405),
        ("POST", "/webhooks/instantly", body, {"content-type": "text/plain"}, 415),
        ("POST", "/webhooks/instantly", b"x" * 2_000_000, json_type, 413),
    ]
    for method, path, content, headers, status in cases:
        for _ in range(20):  # a flood of each: one line each, not twenty
            answer = httpx.request(method, f"{url}{path}", content=content, headers=headers)
            assert answer.status_code == status, answer.text
    head = "x" * 20_000
    # Answered before the app sees the request: which sender it was for is not known.
    too_big = httpx.post(f"{url}/webhooks/instantly", content=body, headers={"x-big": head})
    assert too_big.status_code == 431

    def refusals() -> list[str]:
        return [line for line in _lines(receiver.output()) if " refused: " in line]

    wait_for(lambda: len(refusals()) >= 6, message="not every refusal was logged")
    lines = refusals()
    expected = [
        "instantly delivery from 127.0.0.1 refused: Body is not valid UTF-8 JSON (400)",
        "unknown delivery from 127.0.0.1 refused: Unknown provider; this service takes:"
        " calcom, calendly, instantly, smartlead (404)",
        "instantly delivery from 127.0.0.1 refused: Method not allowed (405)",
        "instantly delivery from 127.0.0.1 refused: Content-Type must be application/json (415)",
        "instantly delivery from 127.0.0.1 refused: Body larger than 1048576 bytes (413)",
        "unknown delivery from 127.0.0.1 refused: Request headers too large (431)",
    ]
    assert len(lines) == len(expected), "\n".join(lines)
    for line, said in zip(lines, expected, strict=True):
        assert said in line
