"""How the receiver reads a body off ASGI `receive`, message by message as a server hands it
over (over the network a whole webhook usually arrives as one message, so the e2e tests
rarely see the others)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from ingest.app import _read_body, _TooLarge


def _receiver(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


def _read(*messages: dict[str, Any], declared: str | None = None, limit: int = 10) -> bytes:
    return asyncio.run(_read_body(_receiver(*messages), declared, limit))


def test_a_body_in_one_message() -> None:
    assert _read({"type": "http.request", "body": b"abc"}) == b"abc"


def test_a_body_in_several_messages_is_joined_in_order() -> None:
    body = _read(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": True},
        {"type": "http.request", "body": b"e"},
    )
    assert body == b"abcde"


def test_a_body_over_the_limit_across_messages_is_refused() -> None:
    with pytest.raises(_TooLarge):
        _read(
            {"type": "http.request", "body": b"123456", "more_body": True},
            {"type": "http.request", "body": b"78901"},
        )


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    with pytest.raises(_TooLarge):
        _read(declared="11")  # no message: reading one would fail the test


def test_a_client_gone_mid_body_is_a_disconnect() -> None:
    with pytest.raises(ClientDisconnect):
        _read(
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.disconnect"},
        )
