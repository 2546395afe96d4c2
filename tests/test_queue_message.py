"""The queue's message builder must produce what Celery's own `send_task` would."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from common.envelope import Envelope
from common.queue import QUEUE_NAME, TASK_NAME, message

ENVELOPE = Envelope(
    event_id="6f0c2f1e-7d4a-4b8e-9a31-0d7c6e5b4a29",
    provider="instantly",
    event_type="reply_received",
    idempotency_key="sha256:abc",
    received_at="2026-11-20T09:14:03.512000+00:00",
    payload={"event_type": "reply_received", "lead_email": "a@b.de", "nested": {"x": [1, 2]}},
)


def test_message_matches_celerys_own_builder() -> None:
    built = json.loads(message.build(ENVELOPE))
    reference = Celery("reference", set_as_current=False).amqp.as_task_v2(
        ENVELOPE.event_id, TASK_NAME, args=(ENVELOPE.to_dict(),), kwargs={}
    )

    assert built["content-type"] == "application/json"
    assert built["content-encoding"] == "utf-8"
    body = json.loads(built["body"])
    assert body == json.loads(json.dumps(reference.body))

    ignored = {"origin", "argsrepr", "kwargsrepr"}  # who sent it and how it prints
    expected_headers = {k: v for k, v in reference.headers.items() if k not in ignored}
    assert {k: v for k, v in built["headers"].items() if k not in ignored} == json.loads(
        json.dumps(expected_headers)
    )
    assert set(built["headers"]) == set(reference.headers)

    properties = built["properties"]
    assert properties["correlation_id"] == ENVELOPE.event_id
    assert properties["delivery_info"] == {"exchange": "", "routing_key": QUEUE_NAME}
    assert properties["body_encoding"] == "utf-8"  # kombu: the body as it is, no base64
    assert {"delivery_mode", "priority", "delivery_tag", "reply_to"} <= set(properties)


def test_every_message_gets_its_own_delivery_tag() -> None:
    first, second = (json.loads(message.build(ENVELOPE)) for _ in range(2))
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]


def test_a_built_message_reads_back_as_the_task_celery_would_run() -> None:
    task = message.read(message.build(ENVELOPE))
    assert (task.task_id, task.task_name, task.retries, task.eta) == (
        ENVELOPE.event_id, TASK_NAME, 0, None,
    )  # fmt: skip
    assert task.envelope == ENVELOPE.to_dict()


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[]", b'{"headers": {}}', b'{"body": "e30=", "headers": {"id": "x"}}'],
    ids=["empty", "not_json", "not_an_object", "no_body", "no_task_name"],
)
def test_what_is_not_a_task_message_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a task message"):
        message.read(raw)


def test_text_that_needs_escaping_survives_the_template() -> None:
    tricky = Envelope(
        event_id=ENVELOPE.event_id,
        provider="instantly",
        event_type='reply "quoted" \\ ünïcödé \x00id',
        idempotency_key="k",
        received_at=ENVELOPE.received_at,
        payload={"text": '"}, "headers": {"id": "forged"}', "nul-like": "\x00body"},
    )
    raw = message.build(tricky)
    built = json.loads(raw)
    assert built["headers"]["id"] == tricky.event_id
    # Celery logs argsrepr: the event type is named there, its control characters escaped.
    assert 'reply "quoted" \\ ünïcödé \\x00id' in built["headers"]["argsrepr"]
    assert "\x00" not in built["headers"]["argsrepr"]
    assert message.read(raw).envelope == tricky.to_dict()


def test_delivery_tags_stay_unique_across_many_messages() -> None:
    tags = {json.loads(message.build(ENVELOPE))["properties"]["delivery_tag"] for _ in range(2000)}
    assert len(tags) == 2000
