"""Delivery policy for every event task, in one place: what is retried, how long to wait, and
when an event goes to the dead-letter store instead.

- Transient failures (database unreachable, connection dropped, serialization failure,
  deadlock, lock timeout) are retried with capped exponential backoff and jitter. The cap
  (TASK_RETRY_BACKOFF_MAX) stays below the broker's visibility timeout, so a message waiting
  for its retry is never handed to a second worker meanwhile.
- After TASK_MAX_RETRIES retries the event is dead-lettered as `retries_exhausted`; permanent
  failures (`invalid_payload`, `config_error`, `unknown_provider`) are dead-lettered at once.
- The message is only acknowledged once its dead letter is written: if PostgreSQL is down at
  that moment too, the message goes back to the queue (Reject with requeue) instead.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from celery import Task
from celery.exceptions import Reject, Retry
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from common import inflight, metrics
from common.envelope import Envelope
from common.metrics import metric_labels
from common.settings import get_settings
from db import dead_letters
from worker import resources
from worker.errors import PermanentError
from worker.processing import Outcome

logger = logging.getLogger("crm.worker")

# SQLSTATEs a later attempt can succeed after: connection exceptions (class 08), serialization
# failure, deadlock, lock timeout, server shutting down or starting, too many connections.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"})
_DEAD_LETTER_WRITE_PAUSES = (1.0, 2.0, 4.0)

Work = Callable[[Any, int], Outcome]


def is_transient(exc: BaseException) -> bool:
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


def backoff_seconds(retries: int, cap: int) -> float:
    """Exponential (1, 2, 4 … s), capped, with jitter so a crowd of retries spreads out."""
    return float(min(cap, 2**retries)) * random.uniform(0.8, 1.0)


class EventTask(Task):  # type: ignore[type-arg]
    """Base class of event tasks: `deliver` runs the work under the policy above."""

    acks_late = True
    reject_on_worker_lost = True
    # Celery's own retry limit is off: `deliver` counts, so exhaustion is dead-lettered.
    max_retries = None

    def deliver(self, envelope: Any, work: Work) -> dict[str, Any]:
        settings = get_settings()
        attempts = self.request.retries + 1
        labels = metric_labels(envelope)
        try:
            outcome = work(envelope, attempts)
        except (Retry, Reject):
            raise
        except PermanentError as exc:
            return self._dead_letter(envelope, exc, exc.reason, attempts)
        except Exception as exc:
            if not is_transient(exc):
                return self._dead_letter(envelope, exc, "processing_error", attempts)
            if self.request.retries >= settings.task_max_retries:
                return self._dead_letter(envelope, exc, "retries_exhausted", attempts)
            metrics.RETRIES.labels(*labels).inc()
            delay = backoff_seconds(self.request.retries, settings.task_retry_backoff_max)
            _look_after(
                inflight.postpone, self.request.id, delay + settings.broker_visibility_timeout
            )
            logger.warning(
                "event %s: attempt %d failed (%s), retrying in %.1fs",
                self.request.id, attempts, type(exc).__name__, delay,
            )  # fmt: skip
            raise self.retry(exc=exc, countdown=delay) from None
        _look_after(inflight.forget, self.request.id)
        metrics.EVENTS.labels(*labels, outcome.status).inc()
        if outcome.status == "processed":
            received = _received_at(str(envelope.get("received_at", "")))
            latency = (datetime.now(UTC) - received).total_seconds()
            metrics.PROCESSING_SECONDS.labels(*labels).observe(max(0.0, latency))
        return outcome.result

    def _dead_letter(
        self, envelope: Any, exc: BaseException, reason: str, attempts: int
    ) -> dict[str, Any]:
        message = str(exc).strip() or type(exc).__name__
        for pause in (*_DEAD_LETTER_WRITE_PAUSES, None):
            try:
                dead_letter_id = _write_dead_letter(
                    envelope,
                    task_id=str(self.request.id),
                    reason=reason,
                    error_class=type(exc).__name__,
                    error_message=message,
                    trace="".join(traceback.format_exception(exc)),
                    attempts=attempts,
                )
            except SQLAlchemyError as write_error:
                if pause is None:
                    logger.error(
                        "event %s: dead letter not written (%s); message goes back to the queue",
                        self.request.id, type(write_error).__name__,
                    )  # fmt: skip
                    raise Reject(reason="dead letter not written", requeue=True) from None
                time.sleep(pause)
                continue
            logger.error(
                "event %s: dead-lettered as %s after %d attempt(s): %s",
                self.request.id, reason, attempts, message,
            )  # fmt: skip
            _look_after(inflight.forget, str(self.request.id))
            provider, event_type = metric_labels(envelope)
            metrics.DEAD_LETTERS.labels(provider, reason).inc()
            metrics.EVENTS.labels(provider, event_type, "dead_lettered").inc()
            return {"dead_letter_id": dead_letter_id, "reason": reason}
        raise AssertionError("unreachable")


def _look_after(action: Callable[..., None], *args: Any) -> None:
    """Update the in-flight record; failing that, the sweeper only queues a harmless copy."""
    try:
        action(resources.broker(), *args)
    except RedisError as exc:
        logger.warning("in-flight record not updated: %s", type(exc).__name__)


def _identify(data: dict[str, Any], task_id: str) -> tuple[UUID, Envelope | None]:
    """The event's id, and its envelope when it is well formed enough to name the event."""
    try:
        parsed = Envelope.from_dict(data)
        return UUID(parsed.event_id), parsed
    except ValueError:
        pass
    try:
        return UUID(task_id), None
    except ValueError:
        return uuid.uuid4(), None


def _received_at(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return datetime.now(UTC)


def _write_dead_letter(
    envelope: Any,
    *,
    task_id: str,
    reason: str,
    error_class: str,
    error_message: str,
    trace: str,
    attempts: int,
) -> int:
    data = envelope if isinstance(envelope, dict) else {"raw": envelope}
    event_id, parsed = _identify(data, task_id)
    with resources.engine().begin() as conn:
        dead_letter_id = dead_letters.record(
            conn,
            event_id=event_id,
            provider=parsed.provider if parsed else str(data.get("provider") or "unknown"),
            event_type=parsed.event_type if parsed else str(data.get("event_type") or "unknown"),
            envelope=data,
            reason=reason,
            error_class=error_class,
            error_message=error_message[:4000],
            traceback=trace[-20000:],
            attempts=attempts,
        )
        if parsed is not None:
            dead_letters.mark_event_dead(
                conn,
                event_id=event_id,
                provider=parsed.provider,
                event_type=parsed.event_type,
                idempotency_key=parsed.idempotency_key,
                payload=parsed.payload,
                received_at=_received_at(parsed.received_at),
                attempts=attempts,
                error=f"{reason}: {error_message}"[:4000],
            )
    return dead_letter_id
