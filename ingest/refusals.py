"""A refused delivery says why in the log — without letting a flood fill the disk.

Each refusal is logged with its provider, the peer's address and the reason; past the first of
a kind (provider, status, reason) in an interval, refusals of that kind are only counted, and
the next line of that kind says how many there were meanwhile. Kinds are few (providers,
status codes and the receiver's own reasons), so the bookkeeping stays small."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("crm.ingest")

INTERVAL_SECONDS = 60.0
Kind = tuple[str, int, str]  # provider, status code, reason


class RefusalLog:
    def __init__(
        self, interval: float = INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._logged_at: dict[Kind, float] = {}
        self._unlogged: dict[Kind, int] = {}
        self._lock = threading.Lock()  # the protocol layer and the app share it

    def refused(self, provider: str, status: int, reason: str, peer: str) -> None:
        kind = (provider, status, reason)
        now = self._clock()
        with self._lock:
            last = self._logged_at.get(kind)
            if last is not None and now - last < self._interval:
                self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
                return
            self._logged_at[kind] = now
            more = self._unlogged.pop(kind, 0)
        since = f"; {more} more like it since the last such line" if more else ""
        logger.warning(
            "%s delivery from %s refused: %s (%d)%s", provider, peer, reason, status, since
        )


REFUSALS = RefusalLog()
