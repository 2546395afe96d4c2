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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from celery import Task
from celery.exceptions import Reject
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from common import inflight, metrics
from common.envelope import QUEUE_NAME, TASK_NAME, Envelope
from common.logging import set_event
from common.metrics import metric_labels
from common.queue import read_message
from common.settings import get_settings
from db import dead_letters
from worker import resources
from worker.errors import PermanentError
from worker.processing import Outcome, parse_envelope, process, process_batch

logger = logging.getLogger("crm.worker")

# SQLSTATEs a later attempt can succeed after: connection exceptions (class 08), serialization
# failure, deadlock, lock timeout, server shutting down or starting, too many connections.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"})
_DEAD_LETTER_WRITE_PAUSES = (1.0, 2.0, 4.0)


@dataclass(frozen=True)
class Delivery:
    """One event for this task: the message Celery handed it, or one it took off the queue."""

    task_id: str
    envelope: Any
    retries: int
    # As queued, for a message taken off the list by the task itself (None: Celery's own).
    message: bytes | None = None

    @property
    def attempts(self) -> int:
        return self.retries + 1


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

    def deliver(self, envelope: Any) -> dict[str, Any]:
        """Apply Celery's event and, under a backlog, the queued events taken with it.

        The others are taken straight off the list (one RPOP), not through Celery: the broker
        work per message in the worker's main process is what bounded the drain rate. A task
        killed while it holds them loses nothing: the in-flight record (common.inflight) queues
        them again once they are due. Celery's own message is handled last, so its Retry or
        Reject can leave the task without abandoning the others.
        """
        own = Delivery(str(self.request.id), envelope, self.request.retries)
        batch = [*_take_queued(get_settings().worker_batch_size - 1), own]
        results: list[dict[str, Any]] = [{} for _ in batch]
        ready: list[tuple[int, Delivery, Envelope]] = []
        for index, delivery in enumerate(batch):
            try:
                ready.append((index, delivery, parse_envelope(delivery.envelope)))
            except PermanentError as exc:
                results[index] = self._dead_letter(delivery, exc, exc.reason)
        if len(ready) < 2 or not self._apply_together(ready, results):
            for index, delivery, parsed in ready:
                results[index] = self._apply_alone(delivery, parsed)
        return results[-1]

    def _apply_together(
        self, ready: list[tuple[int, Delivery, Envelope]], results: list[dict[str, Any]]
    ) -> bool:
        try:
            outcomes = process_batch(
                resources.engine(), [(parsed, delivery.attempts) for _, delivery, parsed in ready]
            )
        except Exception as exc:
            # Whatever failed, each event runs again on its own and meets the policy alone.
            logger.info("batch of %d failed (%s); one by one", len(ready), type(exc).__name__)
            return False
        metrics.BATCH_EVENTS.observe(len(ready))
        _look_after(inflight.forget, *(delivery.task_id for _, delivery, _ in ready))
        for (index, delivery, _), outcome in zip(ready, outcomes, strict=True):
            results[index] = _count(delivery, outcome)
        return True

    def _apply_alone(self, delivery: Delivery, parsed: Envelope) -> dict[str, Any]:
        settings = get_settings()
        set_event(parsed.event_id, parsed.provider, parsed.event_type)
        try:
            outcome = process(resources.engine(), parsed, attempts=delivery.attempts)
        except PermanentError as exc:
            return self._dead_letter(delivery, exc, exc.reason)
        except Exception as exc:
            if not is_transient(exc):
                return self._dead_letter(delivery, exc, "processing_error")
            if delivery.retries >= settings.task_max_retries:
                return self._dead_letter(delivery, exc, "retries_exhausted")
            return self._retry(delivery, exc)
        metrics.BATCH_EVENTS.observe(1)
        _look_after(inflight.forget, delivery.task_id)
        return _count(delivery, outcome)

    def _retry(self, delivery: Delivery, exc: Exception) -> dict[str, Any]:
        settings = get_settings()
        metrics.RETRIES.labels(*metric_labels(delivery.envelope)).inc()
        delay = backoff_seconds(delivery.retries, settings.task_retry_backoff_max)
        _look_after(inflight.postpone, delay + settings.broker_visibility_timeout, delivery.task_id)
        logger.warning(
            "event %s: attempt %d failed (%s), retrying in %.1fs",
            delivery.task_id, delivery.attempts, type(exc).__name__, delay,
        )  # fmt: skip
        if delivery.message is None:
            raise self.retry(exc=exc, countdown=delay) from None
        # What self.retry publishes for Celery's own message: the same task, one retry more.
        self.app.send_task(
            TASK_NAME, args=(delivery.envelope,), task_id=delivery.task_id, queue=QUEUE_NAME,
            retries=delivery.retries + 1, countdown=delay, add_to_parent=False,
        )  # fmt: skip
        return {"retry_in": round(delay, 1)}

    def _dead_letter(self, delivery: Delivery, exc: BaseException, reason: str) -> dict[str, Any]:
        envelope, attempts = delivery.envelope, delivery.attempts
        message = str(exc).strip() or type(exc).__name__
        for pause in (*_DEAD_LETTER_WRITE_PAUSES, None):
            try:
                dead_letter_id = _write_dead_letter(
                    envelope,
                    task_id=delivery.task_id,
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
                        delivery.task_id, type(write_error).__name__,
                    )  # fmt: skip
                    if delivery.message is None:
                        raise Reject(reason="dead letter not written", requeue=True) from None
                    _give_back([delivery.message])
                    return {"requeued": True}
                time.sleep(pause)
                continue
            logger.error(
                "event %s: dead-lettered as %s after %d attempt(s): %s",
                delivery.task_id, reason, attempts, message,
            )  # fmt: skip
            _look_after(inflight.forget, delivery.task_id)
            provider, event_type = metric_labels(envelope)
            metrics.DEAD_LETTERS.labels(provider, reason).inc()
            metrics.EVENTS.labels(provider, event_type, "dead_lettered").inc()
            return {"dead_letter_id": dead_letter_id, "reason": reason}
        raise AssertionError("unreachable")


def _count(delivery: Delivery, outcome: Outcome) -> dict[str, Any]:
    labels = metric_labels(delivery.envelope)
    metrics.EVENTS.labels(*labels, outcome.status).inc()
    if outcome.status == "processed":
        received = _received_at(str(delivery.envelope.get("received_at", "")))
        latency = (datetime.now(UTC) - received).total_seconds()
        metrics.PROCESSING_SECONDS.labels(*labels).observe(max(0.0, latency))
    return outcome.result


def _take_queued(limit: int) -> list[Delivery]:
    """Up to `limit` more of this task's messages, oldest first, straight off the queue. What is
    not for us now (another task, a retry whose countdown is still running, an unreadable
    message) goes back to the consuming end at once, for Celery to deal with."""
    if limit < 1:
        return []
    try:
        raw_messages: list[bytes] = resources.broker().rpop(QUEUE_NAME, limit) or []  # type: ignore[assignment]
    except RedisError as exc:
        logger.warning("could not take queued events: %s", type(exc).__name__)
        return []
    now = datetime.now(UTC)
    taken: list[Delivery] = []
    others: list[bytes] = []
    for raw in raw_messages:
        try:
            task = read_message(raw)
        except ValueError:
            others.append(raw)
            continue
        eta = task.eta if task.eta is None or task.eta.tzinfo else task.eta.replace(tzinfo=UTC)
        if task.task_name != TASK_NAME or (eta is not None and eta > now):
            others.append(raw)
            continue
        taken.append(Delivery(task.task_id, task.envelope, task.retries, raw))
    _give_back(others)
    # Held by this task now: due again, as Celery's unacked messages are, a visibility timeout
    # from now (not from their receipt), so a task killed with them loses them only that long.
    _look_after(
        inflight.postpone,
        get_settings().broker_visibility_timeout,
        *(delivery.task_id for delivery in taken),
    )
    return taken


def _give_back(raw_messages: list[bytes]) -> None:
    if not raw_messages:
        return
    try:
        # RPUSH in reverse: the consuming end (right) gets them back in their queue order.
        resources.broker().rpush(QUEUE_NAME, *reversed(raw_messages))
    except RedisError as exc:
        # Their in-flight records stay, so the sweep queues them again once due.
        logger.warning(
            "could not give back %d message(s): %s", len(raw_messages), type(exc).__name__
        )


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
