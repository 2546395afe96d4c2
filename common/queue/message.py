"""The queue message format: a Celery protocol-2 task message as kombu's Redis transport stores
it on a list. Built here (not by `send_task`) so that it can travel inside the receiver's
claim-and-enqueue script; read here when a worker takes messages off the list itself."""

from __future__ import annotations

import base64
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from celery import Celery

from common import jsonexact
from common.envelope import Envelope, describe
from common.logging import printable

QUEUE_NAME = "webhooks"
TASK_NAME = "crm.process_event"


@dataclass(frozen=True)
class QueuedTask:
    """One task message: its id (the event id: see `build`), the envelope it carries as it was
    queued (any JSON: the worker validates it), how often it was retried, when it is due."""

    task_id: str
    envelope: Any
    retries: int = 0
    task_name: str = TASK_NAME
    eta: datetime | None = None


@dataclass(frozen=True)
class _Template:
    headers: dict[str, Any]
    properties: dict[str, Any]
    embed: dict[str, Any]


@cache
def _template() -> _Template:
    """What every message shares, from Celery's own builder (run once per process: per message
    it was a third of the receiver's time). tests/test_queue_message.py compares a built message
    with a fresh `as_task_v2` one, so a Celery upgrade that changes the protocol fails there."""
    app = Celery("crm-ingest", set_as_current=False)
    reference = app.amqp.as_task_v2(
        "template", TASK_NAME, args=(None,), kwargs={},
        origin=f"{os.getpid()}@{socket.gethostname()}", argsrepr="", kwargsrepr="{}",
    )  # fmt: skip
    properties: dict[str, Any] = dict(reference.properties)
    properties.update(
        reply_to="",
        delivery_mode=2,
        delivery_info={"exchange": "", "routing_key": QUEUE_NAME},
        priority=0,
        # JSON nests in JSON as it is; kombu passes a utf-8 body through untouched (its default
        # for Redis is base64, a third larger).
        body_encoding="utf-8",
    )
    return _Template(dict(reference.headers), properties, reference.body[2])


def render(task: QueuedTask) -> bytes:
    template = _template()
    named = describe(task.envelope)
    headers = template.headers | {
        "id": task.task_id,
        "root_id": task.task_id,
        "retries": task.retries,
        "eta": task.eta.isoformat() if task.eta else None,
        # Celery would repr() the whole payload here, and log it: what names it, no payload.
        "argsrepr": "[<envelope {} {}:{}>]".format(
            *(printable(value) for value in (task.task_id, named["provider"], named["event_type"]))
        ),
    }
    properties = template.properties | {
        "correlation_id": task.task_id,
        "delivery_tag": str(uuid.uuid4()),
    }
    body = jsonexact.dumps([[task.envelope], {}, template.embed]).decode()
    return jsonexact.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
    )


def build(envelope: Envelope) -> bytes:
    """The message that carries a new event. Its task id IS the event id: the in-flight record,
    a retry and `GET /events/{id}` all find an event by the task id of its message."""
    task = QueuedTask(task_id=envelope.event_id, envelope=envelope.to_dict())
    assert task.task_id == task.envelope["event_id"]
    return render(task)


def again(task: QueuedTask, *, retries: int, countdown: float) -> bytes:
    """The message that queues `task` once more: a retry (`retries` one up, due after
    `countdown` seconds) or a give-back (the same count, due now)."""
    eta = datetime.now(UTC) + timedelta(seconds=countdown) if countdown > 0 else None
    return render(QueuedTask(task.task_id, task.envelope, retries, task.task_name, eta))


def read(raw: bytes) -> QueuedTask:
    """A message as Celery's worker would decode it, ours (body as is) and Celery's own (body in
    base64) alike; ValueError if it is not a task message."""
    try:
        message = jsonexact.loads(raw)
        headers = message["headers"]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = jsonexact.loads(body if isinstance(body, bytes) else body.encode())[0]
        eta = headers.get("eta")
        when = datetime.fromisoformat(eta) if eta else None
        return QueuedTask(
            task_id=str(headers["id"]),
            envelope=args[0] if args else None,
            retries=int(headers.get("retries") or 0),
            task_name=str(headers["task"]),
            eta=when.replace(tzinfo=UTC) if when and when.tzinfo is None else when,
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"not a task message: {type(exc).__name__}") from None
