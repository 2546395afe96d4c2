"""Failures a retry cannot fix: they go to the dead-letter store at once, with their reason."""

from __future__ import annotations


class PermanentError(Exception):
    reason = "permanent_error"


class InvalidPayload(PermanentError):
    reason = "invalid_payload"


class ConfigError(PermanentError):
    reason = "config_error"


class UnknownProvider(PermanentError):
    reason = "unknown_provider"


class WorkerLost(PermanentError):
    """Processes kept dying while applying the event (TASK_MAX_WORKER_LOST times)."""

    reason = "worker_lost"
