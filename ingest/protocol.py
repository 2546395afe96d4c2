"""uvicorn's httptools protocol with the two limits it lacks on a request head.

httptools buffers a request line and headers of any size for as long as the client takes, so
one slow or huge head ties up memory and a connection for ever. Here:

- a head larger than MAX_HEADER_BYTES is answered 431 and the connection closed, before
  anything of it reaches the application;
- a head not complete HEADER_TIMEOUT_SECONDS after it began (or after the connection opened,
  for a client that sends nothing) gets its connection closed.

The size is counted on the raw bytes before the parser sees them, by finding the blank line
that ends the head. A head that starts in the same read as the end of the previous request (a
pipelining client) is counted from its next read on: it can pass the limit by at most one read,
and memory stays bounded. A request whose head arrives in one read, as nearly all do, costs a
substring search and no timer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from common.settings import get_settings
from ingest.refusals import REFUSALS

_END_OF_HEAD = b"\r\n\r\n"
_BODY_431 = b'{"error":"Request headers too large"}'
_RESPONSE_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY_431)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY_431
)


class HeadLimitedProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.max_head_bytes = settings.max_header_bytes
        self.head_timeout = settings.header_timeout_seconds
        self.in_head = True  # waiting for, or reading, a request line and headers
        self.head_begun = False  # its first byte has arrived
        self.head_bytes = 0  # of the current head, in reads before this one
        self.head_tail = b""  # its last bytes: the blank line may straddle two reads
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.in_head and self._head_too_large(data):
            self._disarm_head_deadline()
            address = self.transport.get_extra_info("peername")
            who = str(address[0]) if address else "unknown"
            # Before routing: which sender it was for is not known.
            REFUSALS.refused("unknown", 431, "Request headers too large", who)
            self.transport.write(_RESPONSE_431)
            self.transport.close()
            return
        super().data_received(data)
        if self.head_begun and self.in_head and not self.transport.is_closing():
            self._arm_head_deadline()  # a head split over reads: it has this long to finish

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_begun = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._disarm_head_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head, self.head_begun, self.head_bytes, self.head_tail = True, False, 0, b""

    def _head_too_large(self, data: bytes) -> bool:
        seen = self.head_tail + data if self.head_tail else data
        end = seen.find(_END_OF_HEAD)
        if end >= 0:
            return self.head_bytes - len(self.head_tail) + end > self.max_head_bytes
        self.head_bytes += len(data)
        self.head_tail = seen[-(len(_END_OF_HEAD) - 1) :]
        return self.head_bytes > self.max_head_bytes

    def _arm_head_deadline(self) -> None:
        if self.head_deadline is None:
            self.head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_timed_out(self) -> None:
        self.head_deadline = None
        if self.in_head and not self.transport.is_closing():
            self.transport.close()
