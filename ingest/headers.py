"""A request's headers as the webhook route reads them: indexed once per request."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class HeaderLookup(Protocol):
    """What the receiver asks of headers; Starlette's `Headers` answers it too."""

    def get(self, key: str) -> str | None: ...

    def getlist(self, key: str) -> list[str]: ...


class HeaderIndex:
    """The raw ASGI headers indexed by lower-case name in one pass. Starlette's `Headers` scans
    the whole list on every lookup and answers a missing header by raising and catching
    KeyError: 6-7k instructions a lookup under callgrind, and a delivery makes four or five.
    Same answers: `get` gives the first value, `getlist` every value in order."""

    __slots__ = ("_values",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        values: dict[str, list[str]] = {}
        for name, value in raw:
            values.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        self._values = values

    def get(self, key: str) -> str | None:
        found = self._values.get(key)
        return found[0] if found else None

    def getlist(self, key: str) -> list[str]:
        return self._values.get(key, [])
