"""Engine factory. Each process makes its own engine (workers: after fork)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine


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
