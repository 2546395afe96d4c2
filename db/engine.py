"""Engine factory. Each process makes its own engine (workers: after fork)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError, DisconnectionError

# SQLSTATEs a later attempt can succeed after: connection exceptions (class 08), serialization
# failure, deadlock, lock timeout, server shutting down or starting, too many connections.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"})


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    application_name: str = "crm-ingest",
    lock_timeout_ms: int = 0,
) -> Engine:
    connect_args: dict[str, object] = {"application_name": application_name, "connect_timeout": 5}
    if lock_timeout_ms:
        connect_args["options"] = f"-c lock_timeout={lock_timeout_ms}"
    return create_engine(
        url,
        pool_pre_ping=True,
        # Errors (dead letters, logs) never carry bound values: e-mails, payloads, passwords.
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=connect_args,
    )


def server_reason(exc: BaseException) -> str:
    """What PostgreSQL (or libpq) said, on one line, without the driver's framing: libpq puts
    the reason ("FATAL: database ... does not exist") after the address, and never a password."""
    detail = str(getattr(exc, "orig", None) or exc).strip()
    return " ".join(detail.rsplit("failed:", 1)[-1].split("\n", 1)[0].split())


_CAUSES = {"40P01": "deadlock", "40001": "serialization_failure", "55P03": "lock_timeout"}


def failure_cause(exc: BaseException) -> str:
    """A short, bounded name for why a transaction failed: a metric label, a log word."""
    code = getattr(getattr(exc, "orig", None), "pgcode", None)
    return _CAUSES.get(code or "", type(exc).__name__)


def is_transient(exc: BaseException) -> bool:
    """Whether a later attempt can succeed where this database error failed."""
    if isinstance(exc, DisconnectionError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "pgcode", None)
    if code is None:
        # No SQLSTATE at all: the server never answered (refused, reset, timed out).
        return True
    return code in _TRANSIENT_SQLSTATES or code.startswith("08")
