"""common.logging: one JSON handler for all, and what a library switched off stays off."""

from __future__ import annotations

import logging

from common.logging import configure_logging


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
