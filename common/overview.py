"""One picture of the running system for operators, taken the same way for `crm-status` and
`GET /healthz/details`: the queue, what is in flight, the dead letters, recent throughput, the
workers and the state of each dependency. A part whose source is down is left out and that
dependency says why, so the rest still shows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from celery import Celery
from redis.exceptions import RedisError
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from common import queue
from common.redis_clients import celery_broker, connect
from common.settings import RedisTarget
from db import dead_letters, events
from db.engine import server_reason

RECENT_SECONDS = 300


@dataclass
class Overview:
    queue_depth: int | None = None
    oldest_queued_seconds: float | None = None
    in_flight: int | None = None
    overdue: int | None = None
    # Events PostgreSQL refused even a minimal dead letter for, held in Redis (crm-dlq rescue).
    parked: int | None = None
    dead_letters_open: dict[str, int] | None = None
    processed_last_5m: int | None = None
    workers: list[str] | None = None  # None: not asked
    # "ok", or what went wrong, by dependency: redis (and broker, if apart), postgresql.
    dependencies: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dependencies(redis_targets: dict[str, RedisTarget], engine: Engine) -> dict[str, str]:
    """Each dependency's state: "ok" or the error it gave (never a URL or a secret).
    `redis_targets`: name -> target (REDIS_URL's and, when it differs, the broker's)."""
    with _clients(redis_targets) as clients:
        return _states(clients, engine)


@contextmanager
def _clients(redis_targets: dict[str, RedisTarget]) -> Iterator[dict[str, redis.Redis]]:
    clients = {
        name: connect(target, timeout=5, connect_timeout=2)
        for name, target in redis_targets.items()
    }
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()


def _states(clients: dict[str, redis.Redis], engine: Engine) -> dict[str, str]:
    states: dict[str, str] = {}
    for name, client in clients.items():
        try:
            client.ping()
            states[name] = "ok"
        except RedisError as exc:
            states[name] = f"{type(exc).__name__}: {exc}"
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        states["postgresql"] = "ok"
    except SQLAlchemyError as exc:
        states["postgresql"] = f"{type(exc).__name__}: {server_reason(exc)}"
    return states


def redis_targets(redis_target: RedisTarget, broker: RedisTarget) -> dict[str, RedisTarget]:
    return {"redis": redis_target} | ({"broker": broker} if broker != redis_target else {})


def take(
    redis_target: RedisTarget,
    broker: RedisTarget,
    engine: Engine,
    *,
    workers: Callable[[], list[str] | None] | None = None,
) -> Overview:
    """The overview now. `workers`: how to ask which workers answer (a broadcast ping; None
    from it: not known yet)."""
    with _clients(redis_targets(redis_target, broker)) as clients:
        overview = Overview(dependencies=_states(clients, engine))
        name = "broker" if "broker" in clients else "redis"
        if overview.dependencies[name] == "ok":
            try:
                depth = queue.depth_now(clients[name])
                overview.queue_depth = depth.waiting
                overview.oldest_queued_seconds = round(depth.oldest_age_seconds, 1)
                flight = queue.in_flight(clients[name])
                overview.in_flight, overview.overdue = flight.count, flight.overdue
                overview.parked = queue.parked_count(clients[name])
            except RedisError as exc:
                overview.dependencies[name] = f"{type(exc).__name__}: {exc}"
            if workers is not None:
                overview.workers = workers()
    if overview.dependencies["postgresql"] == "ok":
        try:
            with engine.connect() as conn:
                overview.dead_letters_open = dead_letters.open_by_reason(conn)
                overview.processed_last_5m = events.finished_since(conn, seconds=RECENT_SECONDS)
        except SQLAlchemyError as exc:
            overview.dependencies["postgresql"] = f"{type(exc).__name__}: {server_reason(exc)}"
    return overview


def ping_workers(broker: RedisTarget, timeout: float) -> list[str]:
    """The Celery workers that answer a broadcast ping within `timeout`, by node name. A bare
    Celery app on the broker is enough: nothing of the worker's code is needed to ask."""
    app = Celery("crm-ping", set_as_current=False)
    app.conf.update(celery_broker(broker))
    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception:  # a broker failure: the dependency line says why
        return []
    finally:
        app.close()
    return sorted(name for reply in replies for name in reply)
