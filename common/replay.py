"""Replaying dead letters, shared by `crm-dlq` and the admin API: the original envelope (same
event id, same idempotency key) goes back on the normal queue. The worker's durable guard makes
a replay of an event that meanwhile succeeded a no-op, so replaying twice is safe."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from common import queue
from common.envelope import Envelope, EnvelopeError
from db import audit, dead_letters
from db.tables import DEAD_LETTER_STATUSES

logger = logging.getLogger("crm.replay")


@dataclass(frozen=True)
class Outcome:
    dead_letter_id: int
    status: str  # replayed | discarded | skipped | failed
    detail: str = ""
    # False when trying again cannot help (the stored envelope itself is unusable).
    retryable: bool = True


@dataclass(frozen=True)
class Actor:
    """Who acts, for the audit trail: a token's or console session's `sub` and role, or the
    operating-system user (or `crm-dlq --as`) for the CLI."""

    sub: str
    role: str
    source: str  # console | api | cli


@dataclass(frozen=True)
class Summary:
    replayed: int
    skipped: int
    failed: int
    failures: list[dict[str, object]]  # {"id": dead letter id, "reason": why it failed}

    @classmethod
    def of(cls, outcomes: list[Outcome]) -> Summary:
        counts = Counter(outcome.status for outcome in outcomes)
        failures: list[dict[str, object]] = [
            {"id": o.dead_letter_id, "reason": o.detail} for o in outcomes if o.status == "failed"
        ]
        return cls(counts["replayed"], counts["skipped"], counts["failed"], failures)


class Replayer:
    def __init__(self, engine: Engine, client: redis.Redis, inflight_grace: int) -> None:
        self._engine = engine
        self._client = client
        self._grace = inflight_grace

    def close(self) -> None:
        self._client.close()

    def replay_one(self, dead_letter_id: int, *, dry_run: bool = False) -> Outcome:
        """Queue one dead letter's envelope again; with `dry_run`, the outcome the real replay
        would have, from the same checks, with nothing written or queued."""
        try:
            with self._engine.begin() as conn:
                if dry_run:
                    row = dead_letters.get_dead_letter(conn, dead_letter_id=dead_letter_id)
                    stored = row["envelope"] if row and row["status"] == "open" else None
                else:
                    stored = dead_letters.claim_for_replay(conn, dead_letter_id=dead_letter_id)
                if stored is None:
                    return Outcome(
                        dead_letter_id,
                        "skipped",
                        "no such dead letter, or not open (replayed or discarded already)",
                    )
                envelope = Envelope.from_dict(stored)
                if dry_run:
                    queue.message.build(envelope)  # what would be queued: it must be buildable
                else:
                    # Queued before the mark commits: a failed push rolls the mark back.
                    queue.enqueue(self._client, envelope, grace_seconds=self._grace)
        except EnvelopeError as exc:
            detail = f"stored envelope cannot be queued: {exc}"
            return Outcome(dead_letter_id, "failed", detail, retryable=False)
        except (RedisError, SQLAlchemyError) as exc:
            return Outcome(dead_letter_id, "failed", f"{type(exc).__name__}: service unavailable")
        except Exception as exc:
            # One row that cannot be replayed never stops the others; the log has the trace.
            logger.exception("dead letter %d could not be replayed", dead_letter_id)
            detail = f"{type(exc).__name__}: could not be queued"
            return Outcome(dead_letter_id, "failed", detail, retryable=False)
        return Outcome(dead_letter_id, "replayed", envelope.event_id)

    def matching(self, filters: dead_letters.Filters) -> list[int]:
        with self._engine.connect() as conn:
            return dead_letters.matching_ids(conn, filters)

    def replay_many(
        self,
        ids: list[int],
        progress: Callable[[int, Outcome], None] | None = None,
        *,
        dry_run: bool = False,
    ) -> Summary:
        """Replay each in turn, whatever happens to the others (`dry_run`: as replay_one)."""
        outcomes = []
        for position, dead_letter_id in enumerate(ids, start=1):
            outcome = self.replay_one(dead_letter_id, dry_run=dry_run)
            outcomes.append(outcome)
            if progress is not None:
                progress(position, outcome)
        return Summary.of(outcomes)

    def rescue(self) -> tuple[int, int]:
        """Move the events parked in Redis (PostgreSQL refused even their dead letter) into the
        dead-letter store: (moved, left parked). Each leaves Redis only once its row is
        committed; one PostgreSQL still refuses stays parked."""
        moved = left = 0
        for event_id, parked in queue.parked(self._client).items():
            try:
                dead_letters.write(
                    self._engine,
                    task_id=event_id,
                    envelope=parked.get("envelope"),
                    reason=str(parked.get("reason") or "retries_exhausted"),
                    error_class="Parked",
                    error_message=str(parked.get("error") or ""),
                    trace=None,
                    attempts=int(parked.get("attempts") or 1),
                )
            except SQLAlchemyError as exc:
                logger.error("parked event %s not stored: %s", event_id, type(exc).__name__)
                left += 1
                continue
            queue.unpark(self._client, event_id)
            moved += 1
        return moved, left

    def discard(self, dead_letter_id: int) -> Outcome:
        """Take one dead letter off the open list; the row stays, for the record."""
        try:
            with self._engine.begin() as conn:
                done = dead_letters.discard(conn, dead_letter_id=dead_letter_id)
        except SQLAlchemyError as exc:
            return Outcome(dead_letter_id, "failed", f"{type(exc).__name__}: service unavailable")
        if not done:
            return Outcome(dead_letter_id, "skipped", "no such dead letter, or discarded already")
        return Outcome(dead_letter_id, "discarded")

    def audit(
        self,
        actor: Actor,
        action: str,
        ids: list[int],
        summary: Summary,
        *,
        filters: dead_letters.Filters | None = None,
        stopped_of: int | None = None,
    ) -> None:
        """Record what was done, by whom (admin_actions). A record that cannot be written is
        logged, not raised: the action itself has happened. `stopped_of`: the action was
        stopped after `ids`, of this many matched."""
        outcome = "ok" if not summary.failed and not summary.skipped else "partial"
        if ids and summary.failed == len(ids):
            outcome = "failed"
        if stopped_of is not None:
            outcome = "stopped"
        try:
            with self._engine.begin() as conn:
                audit.record(
                    conn,
                    actor=actor.sub,
                    role=actor.role,
                    source=actor.source,
                    action=action,
                    dead_letter_ids=ids,
                    filters=None if filters is None else _plain_filters(filters),
                    replayed=summary.replayed,
                    skipped=summary.skipped,
                    failed=summary.failed,
                    outcome=outcome,
                    matched=stopped_of,
                )
        except SQLAlchemyError as exc:
            logger.error(
                "admin action not recorded (%s): %s by %s on %d dead letter(s)",
                type(exc).__name__, action, actor.sub, len(ids),
            )  # fmt: skip


def _plain_filters(filters: dead_letters.Filters) -> dict[str, object]:
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in asdict(filters).items()
        if value is not None
    }


# What to do about each reason, in one line: the console shows it beside every dead letter.
WHAT_TO_DO = {
    "invalid_payload": "The sender sent something unusable: fix the sender, then discard these.",
    "config_error": "The pipeline or stage the event needs is missing: fix the seed or the "
    "pipeline, then replay all with this reason.",
    "unknown_provider": "Queued for a sender this service does not know: discard.",
    "retries_exhausted": "PostgreSQL kept failing: once it is healthy, replay all with this "
    "reason.",
    "processing_error": "A bug: the traceback is stored. Fix it, deploy, then replay.",
    "worker_lost": "The worker process died applying it (an OOM kill, a crash): look in the "
    "worker's log around the event id, fix the cause, then replay one to check.",
    "unstorable": "PostgreSQL refused the full row (a value no index can hold): the envelope "
    "is kept as text. Fix the sender, then discard.",
}

MAX_LIMIT = 1000
ANY_STATUS = "all"  # a status filter that matches every status


def parse_time(name: str, value: object) -> datetime | None:
    """An ISO 8601 time (UTC when it names no zone); None for nothing; ValueError naming `name`."""
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"'{name}' must be an ISO 8601 time, e.g. 2026-11-20T09:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


MAX_TEXT_FILTER = 320  # an e-mail address's longest


def text_filter(name: str, value: object, choices: tuple[str, ...] | None = None) -> str | None:
    """A text filter, stripped; None for nothing; ValueError naming `name` for a value no row
    could hold (not text, too long, a NUL — which PostgreSQL refuses outright) or a choice
    not offered."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be a string")
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_TEXT_FILTER or "\x00" in value:
        raise ValueError(f"'{name}' is too long or holds a NUL character")
    if choices is not None and value not in choices:
        raise ValueError(f"'{name}' must be one of {', '.join(choices)}")
    return value


def filters_from(
    params: Mapping[str, object], *, default_status: str | None
) -> dead_letters.Filters:
    """Filters from query parameters, a JSON body or CLI options; ValueError names the bad one."""
    raw_limit = params.get("limit")
    try:
        limit = 100 if raw_limit in (None, "") else int(str(raw_limit))
    except ValueError:
        raise ValueError("'limit' must be a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"'limit' must be between 1 and {MAX_LIMIT}")
    status = text_filter("status", params.get("status"), (*DEAD_LETTER_STATUSES, ANY_STATUS))
    if status is None:
        status = default_status
    return dead_letters.Filters(
        provider=text_filter("provider", params.get("provider")),
        reason=text_filter("reason", params.get("reason")),
        status=None if status == ANY_STATUS else status,
        since=parse_time("since", params.get("since")),
        until=parse_time("until", params.get("until")),
        limit=limit,
    )
