"""Delivery policy for every event task, in one place: what is retried, how long to wait, and
when an event goes to the dead-letter store instead. (How a message moves — taken, queued
again, forgotten — is common.queue's.)

- A task applies the event Celery handed it and, under a backlog, the queued events it took
  with it (up to WORKER_BATCH_SIZE in all) in one transaction, set-based. If one of its events
  fails it, it runs again in halves, down to single events; if the database does (a transient
  failure), each event runs again alone. Each single event that fails meets this policy
  alone, however it arrived.
- Transient failures (database unreachable, connection dropped, serialization failure,
  deadlock, lock timeout) are retried: queued again with one retry more, due after a capped
  exponential backoff with jitter. The cap (TASK_RETRY_BACKOFF_MAX) stays below the visibility
  timeout, so a retry waiting for its time is never handed to a second worker meanwhile.
- After TASK_MAX_RETRIES retries the event is dead-lettered as `retries_exhausted`; permanent
  failures (`invalid_payload`, `config_error`, `unknown_provider`, `processing_error`) are
  dead-lettered at once.
- An event leaves the queue's care only once its outcome is committed. A dead letter can
  always be written: if PostgreSQL refuses the full row for good (a value no index can take),
  a minimal one is (`unstorable`: the envelope kept as text, nothing an index could refuse).
  If even that cannot be written (PostgreSQL down at that moment too), the event is given
  back as it was — counted, MAX_GIVEBACKS times at most, a growing wait apart — and then
  parked in Redis (common.queue.park) for `crm-dlq rescue`. No path requeues uncounted.
- An event whose process died while applying it (an OOM kill, a crash in a driver) is never
  batched again: it runs alone, and once processes have died TASK_MAX_WORKER_LOST times
  holding it, it is dead-lettered as `worker_lost` instead of killing the next one. Events
  taken into a batch are held on a short lease renewed before each step, so those a dead
  process held come back within about a minute.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import Task
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from common import metrics, queue, senders
from common.envelope import Envelope, describe
from common.logging import set_event
from common.metrics import metric_labels
from common.queue import QueuedTask
from common.settings import get_settings
from db import dead_letters
from db.engine import failure_cause, is_transient
from worker import resources
from worker.errors import PermanentError, WorkerLost
from worker.processing import Outcome, parse_envelope, process_batch

logger = logging.getLogger("crm.worker")

_DEAD_LETTER_WRITE_PAUSES = (1.0, 2.0, 4.0)
MAX_GIVEBACKS = 5
_GIVEBACK_WAIT_MAX = 60
# How long a task holds the events it took, renewed before each step (common.queue.hold).
BATCH_LEASE_SECONDS = queue.LEASE_SECONDS

Ready = tuple[int, QueuedTask, Envelope]  # position in the batch, the task, its envelope


def backoff_seconds(retries: int, cap: int) -> float:
    """Exponential (1, 2, 4 … s), capped, with jitter so a crowd of retries spreads out."""
    return float(min(cap, 2**retries)) * random.uniform(0.8, 1.0)


class EventTask(Task):  # type: ignore[type-arg]
    """Base class of event tasks: `deliver` runs the work under the policy above."""

    acks_late = True
    reject_on_worker_lost = True
    # Celery's own retry limit is off: this module counts, so exhaustion is dead-lettered.
    max_retries = None

    def deliver(self, envelope: Any) -> dict[str, Any]:
        """Apply Celery's event and the queued events taken with it; Celery's own result."""
        own = QueuedTask(str(self.request.id), envelope, retries=self.request.retries)
        taken = _take_more()
        return deliver_all([*taken, own], held=[task.task_id for task in taken])[-1]


def deliver_all(batch: list[QueuedTask], held: list[str]) -> list[dict[str, Any]]:
    """Each task's result, in order. `held`: the ids of those this task took itself."""
    results: list[dict[str, Any]] = [{} for _ in batch]
    ready: list[Ready] = []
    for index, task in enumerate(batch):
        try:
            ready.append((index, task, parse_envelope(task.envelope)))
        except PermanentError as exc:
            results[index] = _dead_letter(task, exc, exc.reason)
    died = _unfinished([task.task_id for _, task, _ in ready])
    fresh = [entry for entry in ready if not died.get(entry[1].task_id)]
    alone = _apply_in_pieces(fresh, results, held)
    alone += [entry for entry in ready if died.get(entry[1].task_id)]
    limit = get_settings().task_max_worker_lost
    for index, task, parsed in alone:
        deaths = died.get(task.task_id, 0)
        if deaths >= limit:
            lost = WorkerLost(f"the process applying it died {deaths} times")
            results[index] = _dead_letter(task, lost, lost.reason, attempts=deaths)
            continue
        _renew(held)
        _begin([task.task_id])
        results[index] = _apply_alone(task, parsed)
    return results


def _lock_order(entry: Ready) -> tuple[str, str]:
    """Where an event's rows come in the one order every batch locks them: by the lead's
    company domain, then e-mail (a company row before its contacts), so two batches never
    wait for each other in a circle. Events of one lead keep their queue order (a stable
    sort); events with no lead e-mail come last."""
    email = senders.lead_email(entry[2].provider, entry[2].payload) or "\uffff"
    return email.rpartition("@")[2], email


def _apply_in_pieces(
    ready: list[Ready], results: list[dict[str, Any]], held: list[str]
) -> list[Ready]:
    """Apply the events together; a batch one of its events failed is tried again in halves,
    down to single events, which are returned to meet the delivery policy alone: one bad event
    among 100 costs the others a dozen transactions, not 100. A transient failure (the database
    down, a deadlock) is no event's fault, and halves would only meet it again: then every
    event meets the policy, and its counted retries, alone, as before batches were halved."""
    if len(ready) < 2:
        return ready
    failure = _apply_together(ready, results, held)
    if failure is None:
        return []
    if is_transient(failure):
        return ready
    half = len(ready) // 2
    return _apply_in_pieces(ready[:half], results, held) + _apply_in_pieces(
        ready[half:], results, held
    )


def _apply_together(
    ready: list[Ready], results: list[dict[str, Any]], held: list[str]
) -> Exception | None:
    """None once the events are committed together; else what failed (nothing committed)."""
    _renew(held)
    ready = sorted(ready, key=_lock_order)
    attempt = _begin([task.task_id for _, task, _ in ready])
    try:
        outcomes = process_batch(
            resources.engine(), [(parsed, task.retries + 1) for _, task, parsed in ready]
        )
    except Exception as exc:
        cause = failure_cause(exc)
        metrics.BATCH_FALLBACKS.labels(cause).inc()
        then = "one by one" if is_transient(exc) else "in halves"
        logger.warning("batch of %d failed (%s); applying it %s", len(ready), cause, then)
        _look_after(queue.end, [task.task_id for _, task, _ in ready], attempt)
        return exc
    metrics.BATCH_EVENTS.observe(len(ready))
    _forget(*(task.task_id for _, task, _ in ready))
    for (index, _, parsed), outcome in zip(ready, outcomes, strict=True):
        results[index] = _count(parsed, outcome)
    return None


def _apply_alone(task: QueuedTask, parsed: Envelope) -> dict[str, Any]:
    set_event(**describe(task.envelope))
    try:
        [outcome] = process_batch(resources.engine(), [(parsed, task.retries + 1)])
    except PermanentError as exc:
        return _dead_letter(task, exc, exc.reason)
    except Exception as exc:
        if not is_transient(exc):
            return _dead_letter(task, exc, "processing_error")
        if task.retries >= get_settings().task_max_retries:
            return _dead_letter(task, exc, "retries_exhausted")
        return _retry(task, exc)
    metrics.BATCH_EVENTS.observe(1)
    _forget(task.task_id)
    return _count(parsed, outcome)


def _retry(task: QueuedTask, exc: Exception) -> dict[str, Any]:
    delay = backoff_seconds(task.retries, get_settings().task_retry_backoff_max)
    metrics.RETRIES.labels(*metric_labels(task.envelope)).inc()
    logger.warning(
        "event %s: attempt %d failed (%s), retrying in %.1fs",
        task.task_id, task.retries + 1, type(exc).__name__, delay,
    )  # fmt: skip
    _queue_again(task, retries=task.retries + 1, countdown=delay)
    return {"retry_in": round(delay, 1)}


def _dead_letter(
    task: QueuedTask, exc: BaseException, reason: str, attempts: int | None = None
) -> dict[str, Any]:
    attempts = task.retries + 1 if attempts is None else attempts
    message = str(exc).strip() or type(exc).__name__
    try:
        dead_letter_id, reason = _store_dead_letter(
            task,
            reason=reason,
            error_class=type(exc).__name__,
            error_message=message,
            trace="".join(traceback.format_exception(exc)),
            attempts=attempts,
        )
    except SQLAlchemyError as write_error:
        return _give_back(task, reason, f"{type(write_error).__name__}: {message}")
    logger.error(
        "event %s: dead-lettered as %s after %d attempt(s): %s",
        task.task_id, reason, attempts, message,
    )  # fmt: skip
    _forget(task.task_id)
    provider, event_type = metric_labels(task.envelope)
    metrics.DEAD_LETTERS.labels(provider, reason).inc()
    metrics.EVENTS.labels(provider, event_type, "dead_lettered").inc()
    return {"dead_letter_id": dead_letter_id, "reason": reason}


def _store_dead_letter(task: QueuedTask, **fields: Any) -> tuple[int, str]:
    """The dead letter's id and reason (db.dead_letters.write), a transient failure tried
    again after a pause (no longer than a retry's longest backoff), then raised."""
    cap = get_settings().task_retry_backoff_max
    for pause in (*(min(cap, pause) for pause in _DEAD_LETTER_WRITE_PAUSES), None):
        try:
            return dead_letters.write(
                resources.engine(), task_id=task.task_id, envelope=task.envelope, **fields
            )
        except SQLAlchemyError:
            if pause is None:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


def _give_back(task: QueuedTask, reason: str, error: str) -> dict[str, Any]:
    """The dead letter could not be written at all: queue the event again as it was, a growing
    wait later, MAX_GIVEBACKS times at most; then park it in Redis for `crm-dlq rescue`."""
    try:
        times = queue.gave_back(resources.broker(), task.task_id)
        if times > MAX_GIVEBACKS:
            queue.park(resources.broker(), task, reason=reason, error=error[:4000])
            logger.error(
                "event %s: dead letter not written %d times; parked in Redis for crm-dlq rescue",
                task.task_id, times,
            )  # fmt: skip
            metrics.PARKED.labels(*metric_labels(task.envelope)).inc()
            return {"parked": True}
    except RedisError as exc:
        # Its in-flight record still holds it: the sweep queues it again once it is due.
        logger.warning("event %s not given back: %s", task.task_id, type(exc).__name__)
        return {"requeued": False}
    delay = backoff_seconds(times, min(_GIVEBACK_WAIT_MAX, get_settings().task_retry_backoff_max))
    logger.error(
        "event %s: dead letter not written (%s); given back (%d of %d), due in %.1fs",
        task.task_id, error.split(":")[0], times, MAX_GIVEBACKS, delay,
    )  # fmt: skip
    _queue_again(task, retries=task.retries, countdown=delay)
    return {"requeued": True}


def _count(parsed: Envelope, outcome: Outcome) -> dict[str, Any]:
    labels = senders.metric_labels(parsed.provider, parsed.event_type)
    metrics.EVENTS.labels(*labels, outcome.status).inc()
    if outcome.status == "processed":
        received = datetime.fromisoformat(parsed.received_at)
        latency = (datetime.now(UTC) - received).total_seconds()
        metrics.PROCESSING_SECONDS.labels(*labels).observe(max(0.0, latency))
    return outcome.result


def _take_more() -> list[QueuedTask]:
    try:
        settings = get_settings()
        return queue.take(
            resources.broker(),
            settings.worker_batch_size - 1,
            hold_seconds=BATCH_LEASE_SECONDS,
        )
    except RedisError as exc:
        logger.warning("could not take queued events: %s", type(exc).__name__)
        return []


def _queue_again(task: QueuedTask, *, retries: int, countdown: float) -> None:
    try:
        queue.requeue(
            resources.broker(),
            task,
            retries=retries,
            countdown=countdown,
            grace_seconds=get_settings().broker_visibility_timeout,
        )
    except RedisError as exc:
        # Its in-flight record still holds it: the sweep queues it again once it is due.
        logger.warning("event %s not queued again: %s", task.task_id, type(exc).__name__)


def _forget(*event_ids: str) -> None:
    # Failing, the sweep will only queue a copy, which the durable guard makes a no-op.
    _look_after(queue.forget, *event_ids)


def _renew(held: list[str]) -> None:
    _look_after(queue.hold, held, seconds=BATCH_LEASE_SECONDS)


def _begin(event_ids: list[str]) -> str:
    """Record the attempt; a Redis error costs only this attempt's count, should it die."""
    try:
        return queue.begin(resources.broker(), event_ids)
    except RedisError as exc:
        logger.warning("in-flight record not updated: %s", type(exc).__name__)
        return ""


def _unfinished(event_ids: list[str]) -> dict[str, int]:
    try:
        return queue.unfinished(resources.broker(), event_ids)
    except RedisError as exc:
        logger.warning("could not read unfinished attempts: %s", type(exc).__name__)
        return {}


def _look_after(action: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Update the in-flight record; a Redis error costs at most a harmless copy later."""
    try:
        action(resources.broker(), *args, **kwargs)
    except RedisError as exc:
        logger.warning("in-flight record not updated: %s", type(exc).__name__)
