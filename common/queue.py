"""The queue format: Celery protocol-2 messages on the Redis list a Celery worker consumes.

The receiver does not go through `send_task`: it builds the message with Celery's own builder
(`app.amqp.as_task_v2`), wraps it the way kombu's Redis transport does, and pushes it in the
same Lua call that claims the idempotency key. One round trip makes claim and enqueue atomic —
there is no window in which a key is claimed but its event is not queued — and it is about four
times faster than `send_task` per request. The end-to-end tests prove an unmodified Celery
worker consumes these messages.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis
from celery import Celery

from common import inflight
from common.envelope import QUEUE_NAME, TASK_NAME, Envelope

IDEMPOTENCY_PREFIX = "crm:idem:"
# KEYS: idempotency key, queue list, in-flight messages, in-flight due times.
# ARGV: event id, ttl, message, seconds until the in-flight record is due.
# Answers the first delivery's event id on a repeat, nothing when it claimed and queued. The
# in-flight record doubles as what `GET /events/{id}` reads while the event is queued.
CLAIM_AND_ENQUEUE_LUA = """
local first = redis.call('GET', KEYS[1])
if first then return first end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[4], tonumber(now[1]) + tonumber(ARGV[4]), ARGV[1])
return false
"""


def idempotency_redis_key(provider: str, key: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{provider}:{key}"


class TaskMessageBuilder:
    """Builds the exact message `send_task(TASK_NAME, args=[envelope], queue=QUEUE_NAME)` pushes.

    Celery's builder runs once, for a template; each message then only gets its own ids and
    arguments. (Calling `as_task_v2` per delivery was a third of the receiver's time.) A test
    compares the result with a fresh `as_task_v2` message, so a Celery upgrade that changes the
    protocol fails loudly instead of silently.
    """

    def __init__(self) -> None:
        app = Celery("crm-ingest", set_as_current=False)
        template = app.amqp.as_task_v2(
            "template",
            TASK_NAME,
            args=(None,),
            kwargs={},
            origin=f"{os.getpid()}@{socket.gethostname()}",
            argsrepr="",
            kwargsrepr="{}",
        )
        self._headers: dict[str, Any] = dict(template.headers)
        self._properties: dict[str, Any] = dict(template.properties)
        self._embed: dict[str, Any] = template.body[2]

    def build(self, envelope: Envelope) -> bytes:
        task_id = envelope.event_id
        headers = dict(self._headers)
        headers.update(
            id=task_id,
            root_id=task_id,
            # Celery would repr() the whole payload here; the id is what an operator needs.
            argsrepr=f"[<envelope {task_id} {envelope.provider}:{envelope.event_type}>]",
        )
        properties = dict(self._properties)
        properties.update(
            correlation_id=task_id,
            reply_to="",
            delivery_mode=2,
            delivery_info={"exchange": "", "routing_key": QUEUE_NAME},
            priority=0,
            # No base64 (Celery's default for Redis): JSON nests in JSON as it is, a quarter
            # smaller, and encoding it was a tenth of the receiver's work beyond the floor's.
            # kombu passes a body whose encoding is utf-8 through untouched.
            body_encoding="utf-8",
            delivery_tag=str(uuid.uuid4()),
        )
        body = orjson.dumps([[envelope.to_dict()], {}, self._embed])
        return orjson.dumps(
            {
                "body": body.decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": headers,
                "properties": properties,
            }
        )


def enqueue(
    client: redis.Redis, builder: TaskMessageBuilder, envelope: Envelope, grace: int
) -> None:
    """Queue an envelope without claiming its key: the replay path. The worker's durable guard
    makes a replay of an already-processed event a no-op."""
    message = builder.build(envelope)
    pipe = client.pipeline(transaction=True)
    pipe.lpush(QUEUE_NAME, message)
    inflight.record(pipe, envelope.event_id, message, grace)
    pipe.execute()


@dataclass(frozen=True)
class QueuedTask:
    """What a worker needs from a queue message it took off the list itself."""

    task_id: str
    task_name: str
    retries: int
    eta: datetime | None
    envelope: Any


def read_message(raw: bytes) -> QueuedTask:
    """Decode a kombu Redis message as Celery's worker would, the receiver's (body as is) and
    Celery's own (body in base64) alike; ValueError if it is not one."""
    try:
        message = orjson.loads(raw)
        headers = message["headers"]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = orjson.loads(body)[0]
        eta = headers.get("eta")
        return QueuedTask(
            task_id=str(headers["id"]),
            task_name=str(headers["task"]),
            retries=int(headers.get("retries") or 0),
            eta=datetime.fromisoformat(eta) if eta else None,
            envelope=args[0] if args else None,
        )
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"not a task message: {type(exc).__name__}") from None
