"""common.logging: one JSON handler for all, and what a library switched off stays off."""

from __future__ import annotations

import json
import logging

import pytest

from common.logging import clear_event, configure_logging, set_event
from ingest.refusals import RefusalLog


def test_an_access_log_switched_off_stays_off_and_the_others_go_through_the_root() -> None:
    access, errors = logging.getLogger("uvicorn.access"), logging.getLogger("uvicorn.error")
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in (access, errors)]
    root_handlers = logging.getLogger().handlers[:]
    try:
        # As uvicorn leaves them with --no-access-log: access silenced, errors with a handler.
        access.handlers[:], access.propagate = [], False
        errors.handlers[:], errors.propagate = [logging.NullHandler()], False

        configure_logging("info")

        assert (access.handlers, access.propagate) == ([], False)
        assert (errors.handlers, errors.propagate) == ([], True)
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers[:], logger.propagate = handlers, propagate
        logging.getLogger().handlers[:] = root_handlers


def _formatted(log_format: str, **extra: object) -> str:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("info", log_format)
        [handler] = root.handlers
        record = logging.LogRecord(
            "crm.test", logging.WARNING, __file__, 1, "hello %s", ("you",), None
        )
        record.__dict__.update(extra)
        for each in handler.filters:
            each.filter(record)  # type: ignore[union-attr]
        return handler.format(record)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


def test_json_lines_carry_no_terminal_colour_codes() -> None:
    line = _formatted("json", color_message="\x1b[32mhello\x1b[0m")
    record = json.loads(line)
    assert record["message"] == "hello you" and record["level"] == "WARNING"
    assert "color_message" not in record and "\x1b" not in line


def test_text_lines_are_readable_and_name_their_event() -> None:
    set_event("6f0c2f1e-7d4a-4b8e-9a31-0d7c6e5b4a29", "instantly", "reply_received")
    try:
        line = _formatted("text")
    finally:
        clear_event()
    assert " WARNING crm.test: hello you [event_id=6f0c2f1e-" in line
    assert line.endswith("provider=instantly event_type=reply_received]")
    assert not line.startswith("{")


def test_a_flood_of_refusals_is_one_line_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    log = RefusalLog(interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="crm.ingest"):
        for _ in range(50):
            log.refused("instantly", 415, "Content-Type must be application/json", "10.9.8.7")
            now[0] += 1  # 50 s in all: within the interval
        log.refused("calcom", 415, "Content-Type must be application/json", "10.9.8.7")
        now[0] += 11  # the interval has passed
        log.refused("instantly", 415, "Content-Type must be application/json", "10.9.8.7")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "instantly delivery from 10.9.8.7 refused: Content-Type must be application/json (415)",
        "calcom delivery from 10.9.8.7 refused: Content-Type must be application/json (415)",
        "instantly delivery from 10.9.8.7 refused: Content-Type must be application/json (415);"
        " 49 more like it since the last such line",
    ]
