"""JSON lines to stdout for every process, uvicorn's and Celery's own loggers included.

A line written while an event is being handled carries its `event_id`, `provider` and
`event_type` (set with `set_event`). Payload bodies are never logged: handlers log ids.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

_EVENT: ContextVar[dict[str, str] | None] = ContextVar("crm_event", default=None)
_FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "kombu", "amqp")


class _EventFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_EVENT.get() or {}).items():
            setattr(record, key, value)
        return True


def set_event(event_id: str, provider: str, event_type: str) -> None:
    _EVENT.set({"event_id": event_id, "provider": provider, "event_type": event_type})


def clear_event() -> None:
    _EVENT.set(None)


def configure_logging(level: str) -> None:
    """Route the root logger, and the libraries' own, to one JSON handler on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_EventFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        # A logger its library switched off (uvicorn's access log under --no-access-log: no
        # handler, no propagation) stays off; the others write through the root's handler.
        foreign.propagate = foreign.propagate or bool(foreign.handlers)
        foreign.handlers[:] = []
