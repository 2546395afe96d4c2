"""One format on stdout for every process, uvicorn's and Celery's own loggers and Python's
warnings included: JSON lines (LOG_FORMAT=json, the default, for log collectors) or plain
lines for a terminal (LOG_FORMAT=text).

A line written while an event is being handled carries its `event_id`, `provider` and
`event_type` (set with `set_event`). Payload bodies are never logged: handlers log ids.

Whatever a sender chose can reach a line all the same (an event type, a header, an error that
quotes a value), so every message and event field is made `printable` on its way out, in
both formats: control characters shown as escapes, never written (no forged lines, no
terminal escape sequences), and the whole cut to a bound.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

_EVENT: ContextVar[dict[str, str] | None] = ContextVar("crm_event", default=None)
_FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "kombu", "amqp")


_EVENT_KEYS = ("event_id", "provider", "event_type")
MAX_MESSAGE = 2000  # characters of one message; a traceback comes after it, whole
MAX_FIELD = 200  # characters of one event field


def printable(value: object, limit: int = MAX_FIELD) -> str:
    """`value` as text fit for one log line: each character that is not printable (newline,
    ESC, a bidi override…) as its escape, and at most `limit` characters, marked where cut."""
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > limit:
        text = f"{text[:limit]}…(cut, {len(text)} characters)"
    return text


class _EventFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_EVENT.get() or {}).items():
            setattr(record, key, value)
        # uvicorn adds the message again with terminal colour codes for its own formatter.
        record.__dict__.pop("color_message", None)
        message = record.getMessage()
        if len(message) > MAX_MESSAGE or not message.isprintable():
            record.msg, record.args = printable(message, MAX_MESSAGE), None
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
    _EVENT.set(
        {
            "event_id": printable(event_id),
            "provider": printable(provider),
            "event_type": printable(event_type),
        }
    )


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
