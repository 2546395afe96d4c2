"""The receiver's header index answers as Starlette's Headers would."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from ingest.headers import HeaderIndex

RAW = [
    (b"host", b"127.0.0.1:8000"),
    (b"content-type", b"application/json"),
    (b"x-instantly-signature", b"sha256=aa"),
    (b"x-instantly-signature", b"sha256=bb"),  # ASGI servers send names in lower case
    (b"authorization", b"Bearer \xe9t\xe9"),
]


@pytest.mark.parametrize(
    "name",
    ["host", "content-type", "x-instantly-signature", "authorization", "idempotency-key"],
)
def test_lookups_match_starlette_headers(name: str) -> None:
    index, reference = HeaderIndex(RAW), Headers(raw=RAW)

    assert index.get(name) == reference.get(name)
    assert index.getlist(name) == reference.getlist(name)


def test_a_repeated_header_keeps_every_value_in_order() -> None:
    assert HeaderIndex(RAW).getlist("x-instantly-signature") == ["sha256=aa", "sha256=bb"]
    assert HeaderIndex(RAW).get("x-instantly-signature") == "sha256=aa"


def test_a_missing_header_is_none_and_an_empty_list() -> None:
    assert HeaderIndex([]).get("content-type") is None
    assert HeaderIndex([]).getlist("content-type") == []
