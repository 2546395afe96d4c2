"""Replaying dead letters, shared by `crm-dlq` and the admin API: the original envelope (same
event id, same idempotency key) goes back on the normal queue. The worker's durable guard makes
a replay of an event that meanwhile succeeded a no-op, so replaying twice is safe."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from common import queue
from common.envelope import Envelope, EnvelopeError
from db import dead_letters
from db.tables import DEAD_LETTER_STATUSES

logger = logging.getLogger("crm.replay")


@dataclass(frozen=True)
class Outcome:
    dead_letter_id: int
    status: str  # replayed | skipped | failed
    detail: str = ""
    # False when trying again cannot help (the stored envelope itself is unusable).
    retryable: bool = True


@dataclass(frozen=True)
class Summary:
    replayed: int
    skipped: int
    failed: int
    failures: list[dict[str, object]]  # {"id": dead letter id, "reason": why it failed}


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
                    stored = row["envelope"] if row and row["status"] != "discarded" else None
                else:
                    stored = dead_letters.claim_for_replay(conn, dead_letter_id=dead_letter_id)
                if stored is None:
                    return Outcome(dead_letter_id, "skipped", "no such dead letter, or discarded")
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
        counts: Counter[str] = Counter({"replayed": 0, "skipped": 0, "failed": 0})
        failures: list[dict[str, object]] = []
        for position, dead_letter_id in enumerate(ids, start=1):
            outcome = self.replay_one(dead_letter_id, dry_run=dry_run)
            counts[outcome.status] += 1
            if outcome.status == "failed":
                failures.append({"id": dead_letter_id, "reason": outcome.detail})
            if progress is not None:
                progress(position, outcome)
        return Summary(counts["replayed"], counts["skipped"], counts["failed"], failures)


MAX_LIMIT = 1000
ANY_STATUS = "all"  # a status filter that matches every status


def _timestamp(name: str, value: object) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"'{name}' must be an ISO 8601 time, e.g. 2026-11-20T09:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _text(name: str, value: object, choices: tuple[str, ...] | None = None) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be a string")
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
    status = _text("status", params.get("status"), (*DEAD_LETTER_STATUSES, ANY_STATUS))
    if status is None:
        status = default_status
    return dead_letters.Filters(
        provider=_text("provider", params.get("provider")),
        reason=_text("reason", params.get("reason")),
        status=None if status == ANY_STATUS else status,
        since=_timestamp("since", params.get("since")),
        until=_timestamp("until", params.get("until")),
        limit=limit,
    )
