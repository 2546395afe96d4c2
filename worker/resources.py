"""Per-process resources: one engine and one broker client, made lazily after fork."""

from __future__ import annotations

import os

import redis
from sqlalchemy import Engine

from common.redis_clients import connect
from common.settings import get_settings
from db.engine import make_engine

_engine: Engine | None = None
_engine_pid: int | None = None
_broker: redis.Redis | None = None
_broker_pid: int | None = None


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


def broker() -> redis.Redis:
    """A plain client of the broker's Redis, for the in-flight record."""
    global _broker, _broker_pid
    if _broker is None or _broker_pid != os.getpid():
        _broker = connect(get_settings().broker, timeout=5)
        _broker_pid = os.getpid()
    return _broker


def reset() -> None:
    """Forget (without closing) what the parent process made; close nothing a parent owns."""
    global _engine, _engine_pid, _broker, _broker_pid
    _engine = None
    _engine_pid = None
    _broker = None
    _broker_pid = None


def dispose() -> None:
    if _engine is not None and _engine_pid == os.getpid():
        _engine.dispose()
    if _broker is not None and _broker_pid == os.getpid():
        _broker.close()
