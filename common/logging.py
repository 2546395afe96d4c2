"""One format on stdout for every process, uvicorn's and Celery's own loggers and Python's
warnings included: JSON lines (LOG_FORMAT=json, the default, for log collectors) or plain
lines for a terminal (LOG_FORMAT=text).

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


_EVENT_KEYS = ("event_id", "provider", "event_type")


class _EventFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_EVENT.get() or {}).items():
            setattr(record, key, value)
        # uvicorn adds the message again with terminal colour codes for its own formatter.
        record.__dict__.pop("color_message", None)
        return True


class _TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [event_id=… provider=… event_type=…]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        event = [f"{key}={record.__dict__[key]}" for key in _EVENT_KEYS if key in record.__dict__]
        return f"{line} [{' '.join(event)}]" if event else line


def set_event(event_id: str, provider: str, event_type: str) -> None:
    _EVENT.set({"event_id": event_id, "provider": provider, "event_type": event_type})


def clear_event() -> None:
    _EVENT.set(None)


def configure_logging(level: str, log_format: str = "json") -> None:
    """Route the root logger, the libraries' own and warnings to one handler on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    formatter: logging.Formatter = (
        _TextFormatter()
        if log_format == "text"
        else JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.setFormatter(formatter)
    handler.addFilter(_EventFields())
    logging.captureWarnings(True)  # Celery's SecurityWarning and the like, in the same format
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        # A logger its library switched off (uvicorn's access log under --no-access-log: no
        # handler, no propagation) stays off; the others write through the root's handler.
        foreign.propagate = foreign.propagate or bool(foreign.handlers)
        foreign.handlers[:] = []
