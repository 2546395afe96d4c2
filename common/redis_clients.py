"""Every Redis client the service opens is made here, from a RedisTarget (common.settings).

A plain target is its URL. A target with Sentinels asks them where the master is on every new
connection: after a failover a connection to the old master fails (refused, or READONLY once
it comes back as a replica), redis-py drops it, and the next one goes to the new master. No
process needs a restart; what was in progress on the lost connection fails like any other
lost connection, and each caller already handles that.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel
from redis.connection import SSLConnection, parse_url

from common.settings import RedisTarget


def connect(target: RedisTarget, *, timeout: float, connect_timeout: float = 5) -> redis.Redis:
    """A client of the target (its master, with Sentinels)."""
    if not target.sentinels:
        return redis.Redis.from_url(
            target.url, socket_timeout=timeout, socket_connect_timeout=connect_timeout
        )
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=_sentinel_kwargs(target, timeout, connect_timeout),
        **_master_kwargs(target, timeout, connect_timeout),
    )
    client: redis.Redis = sentinel.master_for(target.master)  # type: ignore[no-untyped-call]
    return client


def connect_async(
    target: RedisTarget, *, timeout: float, connect_timeout: float = 5
) -> aioredis.Redis:
    """An asyncio client of the target (its master, with Sentinels)."""
    if not target.sentinels:
        return aioredis.Redis.from_url(
            target.url, socket_timeout=timeout, socket_connect_timeout=connect_timeout
        )
    sentinel = aiosentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=_sentinel_kwargs(target, timeout, connect_timeout),
        **_master_kwargs(target, timeout, connect_timeout),
    )
    client: aioredis.Redis = sentinel.master_for(target.master)
    return client


def celery_broker(target: RedisTarget) -> dict[str, Any]:
    """Celery's broker settings for the target: the URL kombu takes, and with Sentinels the
    transport options it needs (the master's name, how to reach the Sentinels) and TLS."""
    if not target.sentinels:
        return {"broker_url": target.url, "broker_transport_options": {}}
    kwargs = _master_kwargs(target, None, None)
    credentials = ""
    if "password" in kwargs:
        credentials = f"{quote(kwargs.get('username', ''), safe='')}:"
        credentials += f"{quote(kwargs['password'], safe='')}@"
    database = kwargs.get("db", 0)
    url = ";".join(
        f"sentinel://{credentials}{_host(host)}:{port}/{database}"
        for host, port in target.sentinels
    )
    config: dict[str, Any] = {
        "broker_url": url,
        "broker_transport_options": {
            "master_name": target.master,
            "sentinel_kwargs": _sentinel_kwargs(target, None, None),
        },
    }
    if kwargs.get("ssl"):
        # kombu turns TLS on for a non-empty dict only.
        tls = {key: value for key, value in kwargs.items() if key.startswith("ssl_")}
        config["broker_use_ssl"] = tls or {"ssl_cert_reqs": "required"}
    return config


def _master_kwargs(
    target: RedisTarget, timeout: float | None, connect_timeout: float | None
) -> dict[str, Any]:
    """What redis-py needs for the master: the URL's database, credentials and TLS options."""
    kwargs: dict[str, Any] = dict(parse_url(target.url))  # type: ignore[no-untyped-call]
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    if timeout is not None:
        kwargs["socket_timeout"] = timeout
    if connect_timeout is not None:
        kwargs["socket_connect_timeout"] = connect_timeout
    return kwargs


def _sentinel_kwargs(
    target: RedisTarget, timeout: float | None, connect_timeout: float | None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if target.sentinel_password is not None:
        kwargs["password"] = target.sentinel_password.get()
    if target.sentinel_tls:
        kwargs["ssl"] = True
    if timeout is not None:
        kwargs["socket_timeout"] = timeout
    if connect_timeout is not None:
        kwargs["socket_connect_timeout"] = connect_timeout
    return kwargs


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
