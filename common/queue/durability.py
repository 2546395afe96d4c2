"""What a 202 is worth: whether the Redis that holds the queue keeps it across a restart, and
never evicts it. Checked at start-up in production, where a surprise here loses events."""

from __future__ import annotations

import logging

import redis

from common.redis_clients import connect
from common.settings import RedisTarget


def durability_warnings(client: redis.Redis) -> list[str]:
    """One line per way this Redis can lose accepted events, naming the setting."""
    try:
        config: dict[str, str] = {}
        for name in ("appendonly", "save", "maxmemory-policy"):
            config.update(client.config_get(name))  # type: ignore[arg-type]
    except redis.ResponseError:  # CONFIG is often disabled on managed Redis: INFO says less
        persistence = client.info("persistence")
        config = {
            "appendonly": "yes" if persistence.get("aof_enabled") else "no",
            "save": "unknown",
            "maxmemory-policy": str(client.info("memory").get("maxmemory_policy", "")),
        }
    warnings = []
    if config.get("appendonly") == "no" and not config.get("save", "").strip():
        warnings.append(
            'Redis has no persistence (appendonly no, save ""): a Redis restart loses every '
            "accepted event still queued; set appendonly yes (appendfsync always)"
        )
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy}: it may evict queued events and idempotency "
            "keys; set maxmemory-policy noeviction"
        )
    return warnings


def warn_if_not_durable(target: RedisTarget, logger: logging.Logger) -> None:
    """Log `durability_warnings` for the target's Redis (a failure to ask is a warning too)."""
    client = connect(target, timeout=5)
    try:
        for warning in durability_warnings(client):
            logger.warning(warning)
    except redis.RedisError as exc:
        logger.warning("could not check Redis persistence: %s", type(exc).__name__)
    finally:
        client.close()
