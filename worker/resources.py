"""Per-process resources: one engine, made lazily after fork."""

from __future__ import annotations

import os

from sqlalchemy import Engine

from common.settings import get_settings
from db.engine import make_engine

_engine: Engine | None = None
_engine_pid: int | None = None


def engine() -> Engine:
    global _engine, _engine_pid
    if _engine is None or _engine_pid != os.getpid():
        settings = get_settings()
        _engine = make_engine(
            settings.pg_url(),
            pool_size=1,
            application_name="worker",
            lock_timeout_ms=settings.pg_lock_timeout_ms,
        )
        _engine_pid = os.getpid()
    return _engine


def reset() -> None:
    """Forget (without closing) what the parent process made; close nothing a parent owns."""
    global _engine, _engine_pid
    _engine = None
    _engine_pid = None


def dispose() -> None:
    if _engine is not None and _engine_pid == os.getpid():
        _engine.dispose()
