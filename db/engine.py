"""Engine factory. Each process makes its own engine (workers: after fork)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine


def make_engine(url: str, *, pool_size: int = 5, application_name: str = "crm-ingest") -> Engine:
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"application_name": application_name, "connect_timeout": 5},
    )
