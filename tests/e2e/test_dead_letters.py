"""Failures: retries with backoff, the dead-letter store, and replay — with real workers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
from sqlalchemy import Engine, text

from common import queue
from common.envelope import Envelope
from common.queue import QUEUE_NAME
from common.tokens import issue_token
from tests.e2e.proxy import TcpProxy
from tests.e2e.stack import (
    ROOT,
    IsolatedStack,
    event_status,
    free_port,
    queue_reply,
    scalar,
    wait_processed,
)
from tests.helpers import wait_for
from tests.payloads import encode, reply, signed_headers

pytestmark = pytest.mark.e2e

CRM_DLQ = str(Path(sys.executable).with_name("crm-dlq"))


def post(url: str, body: dict[str, Any]) -> str:
    raw = encode(body)
    response = httpx.post(f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    assert response.status_code == 202, response.text
    return str(response.json()["event_id"])


def dead_letter(engine: Engine, event_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM dead_letters WHERE event_id = :id"), {"id": event_id}
        ).first()
    return None if row is None else dict(row._mapping)


def wait_dead_letter(engine: Engine, event_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: dead_letter(engine, event_id), timeout=timeout, message="no dead letter appeared"
    )


def wait_status(engine: Engine, event_id: str, status: str, timeout: float = 30) -> None:
    wait_for(
        lambda: event_status(engine, event_id) == status,
        timeout=timeout,
        message=f"event {event_id} did not become {status}",
    )


def crm_dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CRM_DLQ, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def broken_default_pipeline(superuser_engine: Engine) -> Iterator[Callable[[], None]]:
    """Makes the default pipeline non-default (an admin's mistake); yields the fix."""
    with superuser_engine.begin() as conn:
        conn.execute(text("UPDATE pipelines SET is_default = false WHERE name = 'Sales'"))

    def fix() -> None:
        with superuser_engine.begin() as conn:
            conn.execute(text("UPDATE pipelines SET is_default = true WHERE name = 'Sales'"))

    yield fix
    fix()


def test_reply_without_any_email_is_dead_lettered_once_as_invalid_payload(
    stack: str, superuser_engine: Engine, reader_token: str
) -> None:
    event_id = post(stack, reply(lead_email=None, email=None))
    letter = wait_dead_letter(superuser_engine, event_id)
    assert letter["reason"] == "invalid_payload"
    assert letter["attempts"] == 1
    assert letter["status"] == "open"
    assert letter["error_class"] == "InvalidPayload"
    assert "e-mail" in letter["error_message"]
    assert letter["envelope"]["event_id"] == event_id
    assert letter["envelope"]["payload"]["campaign_name"] == "Q4 Logistics Outreach"
    assert scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 1
    assert scalar(superuser_engine, "SELECT count(*) FROM contacts") == 0

    shown = httpx.get(f"{stack}/events/{event_id}", headers=auth(reader_token)).json()
    assert shown["status"] == "dead"
    assert shown["error"].startswith("invalid_payload")


def test_field_of_the_wrong_type_is_invalid_payload(stack: str, superuser_engine: Engine) -> None:
    event_id = post(stack, reply(step="two"))
    letter = wait_dead_letter(superuser_engine, event_id)
    assert (letter["reason"], letter["attempts"]) == ("invalid_payload", 1)
    assert "'step'" in letter["error_message"]


def test_config_error_is_fixed_then_replayed_with_crm_dlq(
    stack: str,
    superuser_engine: Engine,
    stack_env: dict[str, str],
    broken_default_pipeline: Callable[[], None],
) -> None:
    events = [post(stack, reply(f"lead{i}@config.example.com")) for i in range(2)]
    for event_id in events:
        assert wait_dead_letter(superuser_engine, event_id)["reason"] == "config_error"
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 0

    broken_default_pipeline()
    done = crm_dlq(stack_env, "replay", "--all", "--reason", "config_error")
    assert done.returncode == 0, done.stderr
    assert "replayed 2, skipped 0, failed 0" in done.stdout
    assert "[2/2]" in done.stdout

    wait_for(
        lambda: (
            scalar(
                superuser_engine, "SELECT count(*) FROM webhook_events WHERE status = 'processed'"
            )
            == 2
        ),
        timeout=30,
        message="replayed events were not processed",
    )
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 2
    statuses = scalar(
        superuser_engine, "SELECT array_agg(status || ':' || replay_count) FROM dead_letters"
    )
    assert statuses == ["replayed:1", "replayed:1"]


def test_a_dead_letter_replayed_by_the_cli_is_not_replayed_again_by_http(
    stack: str,
    superuser_engine: Engine,
    stack_env: dict[str, str],
    admin_token: str,
    redis_client: redis.Redis,
    broken_default_pipeline: Callable[[], None],
) -> None:
    event_id = post(stack, reply())
    letter_id = wait_dead_letter(superuser_engine, event_id)["id"]
    broken_default_pipeline()

    done = crm_dlq(stack_env, "replay", str(letter_id))
    assert done.returncode == 0, done.stderr
    wait_status(superuser_engine, event_id, "processed")

    # Replayed, it is no longer open: a second claim loses, and nothing is queued twice.
    again = httpx.post(f"{stack}/admin/dead-letters/{letter_id}/replay", headers=auth(admin_token))
    assert again.status_code == 409, again.text
    assert "not open" in again.json()["error"]
    assert redis_client.llen(QUEUE_NAME) == 0
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 1
    assert scalar(superuser_engine, "SELECT count(*) FROM activities") == 1
    assert scalar(superuser_engine, "SELECT replay_count FROM dead_letters") == 1


def test_postgres_unreachable_for_the_first_attempts_then_processed_with_attempts_recorded(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    proxy = TcpProxy(free_port(), ("127.0.0.1", 5432))
    client = isolated.client
    worker = isolated.worker(
        PG_PORT=str(proxy.port), TASK_RETRY_BACKOFF_MAX="1", TASK_MAX_RETRIES="30"
    )
    try:
        event_id = queue_reply(client, reply())
        wait_for(
            lambda: worker.output().count("retrying in") >= 2,
            timeout=60,
            message="the worker did not retry while PostgreSQL was unreachable",
        )
        proxy.open()
        wait_processed(superuser_engine, [event_id])
    finally:
        proxy.close()
    attempts = scalar(superuser_engine, "SELECT attempts FROM webhook_events")
    assert attempts >= 3
    assert scalar(superuser_engine, "SELECT status FROM webhook_events") == "processed"
    assert scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 0
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 1


def test_retries_exhausted_is_a_dead_letter_with_every_attempt_counted(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    max_retries = 2
    client = isolated.client
    isolated.worker(
        TASK_MAX_RETRIES=str(max_retries), TASK_RETRY_BACKOFF_MAX="1", PG_LOCK_TIMEOUT_MS="200"
    )
    # A long-running migration holding the deals table: every attempt hits the lock timeout.
    with superuser_engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE deals IN ACCESS EXCLUSIVE MODE"))
        event_id = queue_reply(client, reply())
        letter = wait_dead_letter(superuser_engine, event_id)
        blocker.rollback()
    assert letter["reason"] == "retries_exhausted"
    assert letter["attempts"] == max_retries + 1
    assert letter["error_class"] == "OperationalError"
    assert scalar(superuser_engine, "SELECT status FROM webhook_events") == "dead"
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 0


def test_dead_letter_survives_postgres_down_at_the_moment_of_failure(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    proxy = TcpProxy(free_port(), ("127.0.0.1", 5432))
    client = isolated.client
    worker = isolated.worker(PG_PORT=str(proxy.port))
    try:
        # Refused without touching the database, so the dead letter is the first write.
        envelope = Envelope(
            str(uuid.uuid4()), "hubspot", "x", "k", datetime.now(UTC).isoformat(), {}
        )
        queue.enqueue(client, envelope, grace_seconds=300)
        wait_for(
            lambda: "dead letter not written" in worker.output(),
            timeout=60,
            message="the worker did not give the message back while PostgreSQL was down",
        )
        # Between a pop and its unacked mark the count can read 0 for an instant.
        wait_for(
            lambda: client.llen(QUEUE_NAME) + client.hlen("unacked") == 1,
            timeout=10,
            message="the message was lost",
        )
        proxy.open()
        letter = wait_dead_letter(superuser_engine, envelope.event_id)
    finally:
        proxy.close()
    assert letter["reason"] == "unknown_provider"
    assert scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 1


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        ({"event_id": str(uuid.uuid4()), "provider": "hubspot", "event_type": "x",
          "idempotency_key": "k", "received_at": "2026-11-20T09:00:00+00:00", "payload": {}},
         "unknown_provider"),
        ({"event_id": "not-a-uuid", "payload": []}, "invalid_payload"),
    ],
    ids=["unknown-provider", "malformed-envelope"],
)  # fmt: skip
def test_unprocessable_envelopes_on_the_queue_are_dead_lettered(
    stack: str,
    superuser_engine: Engine,
    redis_client: redis.Redis,
    envelope: dict[str, Any],
    reason: str,
) -> None:
    message = json.loads(queue.message.build(Envelope("0", "p", "t", "k", "r", {})))
    # The same Celery message, carrying an envelope the receiver would never have built.
    body = json.loads(message["body"])
    body[0] = [envelope]
    message["body"] = json.dumps(body)
    message["headers"]["id"] = message["properties"]["correlation_id"] = str(uuid.uuid4())
    redis_client.lpush(QUEUE_NAME, json.dumps(message))
    wait_for(
        lambda: scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 1,
        timeout=30,
        message="no dead letter appeared",
    )
    assert scalar(superuser_engine, "SELECT reason FROM dead_letters") == reason
    assert scalar(superuser_engine, "SELECT attempts FROM dead_letters") == 1


def test_dry_run_changes_nothing_and_discard_hides_but_keeps_the_row(
    stack: str, superuser_engine: Engine, stack_env: dict[str, str], redis_client: redis.Redis
) -> None:
    events = [post(stack, reply(f"bad{i}@dry.example.com", lead_email=None, email=None,
                                email_id=f"dry-{i}")) for i in range(2)]  # fmt: skip
    ids = [wait_dead_letter(superuser_engine, event_id)["id"] for event_id in events]

    dry = crm_dlq(stack_env, "replay", "--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"dry run: 2 dead letter(s) would be replayed: {ids[0]} {ids[1]}" in dry.stdout
    assert redis_client.llen(QUEUE_NAME) == 0
    assert scalar(superuser_engine, "SELECT array_agg(status ORDER BY id) FROM dead_letters") == [
        "open", "open",
    ]  # fmt: skip
    assert scalar(superuser_engine, "SELECT sum(replay_count) FROM dead_letters") == 0

    discarded = crm_dlq(stack_env, "discard", str(ids[0]))
    assert discarded.returncode == 0, discarded.stderr
    listed = crm_dlq(stack_env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == [ids[1]]
    assert scalar(superuser_engine, "SELECT status FROM dead_letters WHERE id = :i", i=ids[0]) == (
        "discarded"
    )
    table = crm_dlq(stack_env, "list")
    assert "invalid_payload" in table.stdout and str(ids[1]) in table.stdout
    shown = crm_dlq(stack_env, "show", str(ids[1]), "--json")
    assert json.loads(shown.stdout)["envelope"]["event_id"] == events[1]
    # For a person: the traceback as the lines Python wrote, not one escaped string.
    read = crm_dlq(stack_env, "show", str(ids[1])).stdout
    assert read.splitlines()[0].startswith("id ")
    assert f'"event_id": "{events[1]}"' in read
    trace = read.split("traceback:\n", 1)[1]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert "\\n" not in trace


def test_a_dry_run_reports_what_the_real_run_does_skips_included(
    stack: str, superuser_engine: Engine, stack_env: dict[str, str], redis_client: redis.Redis
) -> None:
    events = [post(stack, reply(f"bad{i}@drier.example.com", lead_email=None, email=None,
                                email_id=f"drier-{i}")) for i in range(2)]  # fmt: skip
    ids = [wait_dead_letter(superuser_engine, event_id)["id"] for event_id in events]
    assert crm_dlq(stack_env, "discard", str(ids[0])).returncode == 0

    dry = crm_dlq(stack_env, "replay", "--all", "--status", "all", "--dry-run")
    real = crm_dlq(stack_env, "replay", "--all", "--status", "all")

    assert dry.returncode == real.returncode == 0, dry.stderr + real.stderr
    assert f"dead letter {ids[0]}: would be skipped" in dry.stdout
    assert f"dead letter {ids[1]}: would be replayed" in dry.stdout
    assert f"dry run: 1 dead letter(s) would be replayed: {ids[1]}; 1 skipped, 0 failed" in (
        dry.stdout
    )
    assert f"dead letter {ids[0]}: skipped" in real.stdout
    assert "replayed 1, skipped 1, failed 0" in real.stdout
    # Named: a discarded one is skipped, which fails the request, in the dry run as for real.
    named_dry = crm_dlq(stack_env, "replay", str(ids[0]), "--dry-run")
    named = crm_dlq(stack_env, "replay", str(ids[0]))
    assert named_dry.returncode == named.returncode == 1


def test_crm_dlq_says_what_a_replay_is_missing_and_marks_cut_errors(
    stack: str, superuser_engine: Engine, stack_env: dict[str, str]
) -> None:
    missing = crm_dlq(stack_env, "replay", "--dry-run")
    assert missing.returncode == 2
    assert "say which: dead letter IDs, or --all" in missing.stderr
    both = crm_dlq(stack_env, "replay", "1", "--all")
    assert both.returncode == 2 and "not both" in both.stderr
    bodies = [
        reply(None, lead_email=None, email=None, email_id="cut-error"),
        reply(None, lead_email=123, email=None, email_id="short-error"),
    ]
    letters = [wait_dead_letter(superuser_engine, post(stack, body)) for body in bodies]
    errors = [f"{letter['error_class']}: {letter['error_message']}" for letter in letters]
    assert [len(error) > 60 for error in errors] == [True, False], errors  # both kinds shown
    table = crm_dlq(stack_env, "list", "--status", "all").stdout.splitlines()
    for letter, error in zip(letters, errors, strict=True):
        [row] = [line for line in table if line.startswith(f"{letter['id']} ")]
        assert row.endswith(error if len(error) <= 60 else error[:59] + "…"), row


def test_crm_dlq_exit_codes(stack: str, stack_env: dict[str, str]) -> None:
    assert crm_dlq(stack_env, "show", "999999").returncode == 1
    assert crm_dlq(stack_env, "replay", "999999").returncode == 1
    assert crm_dlq(stack_env, "replay").returncode == 2
    assert crm_dlq(stack_env, "list", "--since", "yesterday").returncode == 2
    too_long = crm_dlq(stack_env, "list", "--reason", "r" * 321)
    assert too_long.returncode == 2
    assert "'reason' is too long" in too_long.stderr
    assert crm_dlq(stack_env, "frobnicate").returncode == 2
    assert crm_dlq(stack_env, "--help").returncode == 0


def test_http_list_show_and_bulk_replay(
    stack: str,
    superuser_engine: Engine,
    reader_token: str,
    admin_token: str,
    broken_default_pipeline: Callable[[], None],
) -> None:
    event_id = post(stack, reply())
    letter_id = wait_dead_letter(superuser_engine, event_id)["id"]

    listed = httpx.get(
        f"{stack}/admin/dead-letters",
        params={"provider": "instantly", "reason": "config_error"},
        headers=auth(reader_token),
    )
    assert listed.status_code == 200
    assert [row["id"] for row in listed.json()["dead_letters"]] == [letter_id]
    assert (
        httpx.get(
            f"{stack}/admin/dead-letters", params={"reason": "nope"}, headers=auth(reader_token)
        ).json()["count"]
        == 0
    )
    assert (
        httpx.get(
            f"{stack}/admin/dead-letters", params={"since": "soon"}, headers=auth(reader_token)
        ).status_code
        == 400
    )

    shown = httpx.get(f"{stack}/admin/dead-letters/{letter_id}", headers=auth(reader_token))
    assert shown.status_code == 200
    assert shown.json()["envelope"]["event_id"] == event_id
    assert "Traceback" in shown.json()["traceback"]
    assert (
        httpx.get(f"{stack}/admin/dead-letters/424242", headers=auth(reader_token)).status_code
        == 404
    )

    dry = httpx.post(
        f"{stack}/admin/dead-letters/replay",
        json={"reason": "config_error", "dry_run": True},
        headers=auth(admin_token),
    )
    assert dry.status_code == 200
    assert dry.json() == {"matched": 1, "replayed": 0, "dry_run": True, "ids": [letter_id]}
    assert scalar(superuser_engine, "SELECT status FROM dead_letters") == "open"

    broken_default_pipeline()
    bulk = httpx.post(
        f"{stack}/admin/dead-letters/replay",
        json={"reason": "config_error"},
        headers=auth(admin_token),
    )
    assert bulk.status_code == 202
    assert (bulk.json()["matched"], bulk.json()["replayed"]) == (1, 1)
    wait_status(superuser_engine, event_id, "processed")
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 1


def _tokens(secret: str) -> dict[str, tuple[str | None, int]]:
    now = int(time.time())
    return {
        "no-token": (None, 401),
        "expired": (
            jwt.encode({"sub": "a", "role": "admin", "exp": now - 60}, secret, algorithm="HS256"),
            401,
        ),
        "other-secret": (
            issue_token("another-secret-entirely-0123456789abcdef", sub="a", role="admin"),
            401,
        ),
        "alg-none": (
            jwt.encode({"sub": "a", "role": "admin", "exp": now + 600}, None, algorithm="none"),
            401,
        ),
        "no-exp": (jwt.encode({"sub": "a", "role": "admin"}, secret, algorithm="HS256"), 401),
        "garbage": ("not.a.jwt", 401),
    }


@pytest.mark.parametrize(
    "case", ["no-token", "expired", "other-secret", "alg-none", "no-exp", "garbage"]
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/dead-letters"),
        ("GET", "/admin/dead-letters/1"),
        ("POST", "/admin/dead-letters/1/replay"),
        ("POST", "/admin/dead-letters/replay"),
        ("GET", f"/events/{uuid.uuid4()}"),
    ],
)
def test_admin_and_status_routes_refuse_bad_tokens(
    stack: str, settings: Any, method: str, path: str, case: str
) -> None:
    token, expected = _tokens(settings.jwt_secret.get())[case]
    headers = auth(token) if token else {}
    response = httpx.request(method, f"{stack}{path}", headers=headers)
    assert response.status_code == expected
    assert "error" in response.json()


@pytest.mark.parametrize("path", ["/admin/dead-letters/1/replay", "/admin/dead-letters/replay"])
def test_reader_token_on_a_replay_route_is_403(stack: str, reader_token: str, path: str) -> None:
    response = httpx.post(f"{stack}{path}", headers=auth(reader_token))
    assert response.status_code == 403
    assert response.json()["error"] == "Role 'reader' may not do this"


def test_replaying_a_dead_letter_whose_envelope_is_unusable_is_422(
    stack: str, superuser_engine: Engine, admin_token: str
) -> None:
    with superuser_engine.begin() as conn:
        letter_id = conn.execute(
            text(
                "INSERT INTO dead_letters (event_id, provider, event_type, envelope, reason,"
                " error_class, error_message) VALUES (gen_random_uuid(), 'unknown', 'unknown',"
                " '{\"raw\": [1]}', 'invalid_payload', 'InvalidPayload', 'malformed envelope')"
                " RETURNING id"
            )
        ).scalar_one()
    response = httpx.post(
        f"{stack}/admin/dead-letters/{letter_id}/replay", headers=auth(admin_token)
    )
    assert response.status_code == 422
    assert "cannot be queued" in response.json()["error"]
    assert "retry-after" not in response.headers


def test_a_dead_letter_id_of_non_ascii_digits_is_404(stack: str, reader_token: str) -> None:
    response = httpx.get(f"{stack}/admin/dead-letters/%C2%B2", headers=auth(reader_token))
    assert response.status_code == 404


BIG = 123456789012345678901234567890  # beyond 64 bits


def _insert_unusable_dead_letter(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                text(
                    "INSERT INTO dead_letters (event_id, provider, event_type, envelope, reason,"
                    " error_class, error_message) VALUES (gen_random_uuid(), 'unknown', 'unknown',"
                    " '{\"raw\": [1]}', 'invalid_payload', 'InvalidPayload', 'malformed')"
                    " RETURNING id"
                )
            ).scalar_one()
        )


def test_integers_beyond_64_bits_are_kept_exact_and_replayable(
    stack: str, superuser_engine: Engine, admin_token: str, stack_env: dict[str, str]
) -> None:
    # No lead e-mail: each is dead-lettered as invalid_payload, and again after every replay.
    big = post(stack, reply(lead_email=None, email=None, email_id="big", lead_score=BIG))
    letter_id = wait_dead_letter(superuser_engine, big)["id"]
    stored = "SELECT envelope->'payload'->>'lead_score' FROM dead_letters WHERE id = :id"
    assert scalar(superuser_engine, stored, id=letter_id) == str(BIG)
    event = "SELECT payload->>'lead_score' FROM webhook_events WHERE id = :id"
    assert scalar(superuser_engine, event, id=big) == str(BIG)

    one = httpx.post(f"{stack}/admin/dead-letters/{letter_id}/replay", headers=auth(admin_token))
    assert one.status_code == 202, one.text
    wait_for(
        lambda: scalar(superuser_engine, "SELECT attempts FROM dead_letters") == 2,
        timeout=30,
        message="the replayed event did not fail again",
    )
    cli = crm_dlq(stack_env, "replay", str(letter_id))
    assert cli.returncode == 0, cli.stderr
    assert "replayed 1, skipped 0, failed 0" in cli.stdout
    wait_for(
        lambda: scalar(superuser_engine, "SELECT attempts FROM dead_letters") == 3,
        timeout=30,
        message="the event replayed by crm-dlq did not fail again",
    )
    assert scalar(superuser_engine, stored, id=letter_id) == str(BIG)


def test_a_bulk_replay_goes_past_a_row_it_cannot_replay_and_names_it(
    stack: str, superuser_engine: Engine, admin_token: str, stack_env: dict[str, str]
) -> None:
    events = [
        post(stack, reply(lead_email=None, email=None, email_id=f"bulk-{i}", lead_score=BIG + i))
        for i in range(2)
    ]
    first = wait_dead_letter(superuser_engine, events[0])["id"]
    unusable = _insert_unusable_dead_letter(superuser_engine)
    last = wait_dead_letter(superuser_engine, events[1])["id"]

    bulk = httpx.post(f"{stack}/admin/dead-letters/replay", json={}, headers=auth(admin_token))

    assert bulk.status_code == 202, bulk.text
    body = bulk.json()
    assert (body["matched"], body["replayed"], body["skipped"], body["failed"]) == (3, 2, 0, 1)
    assert [failure["id"] for failure in body["failures"]] == [unusable]
    assert "cannot be queued" in body["failures"][0]["reason"]
    assert sorted(body["ids"]) == sorted([first, unusable, last])
    cli = crm_dlq(stack_env, "replay", "--all")
    assert cli.returncode == 1
    assert f"dead letter {unusable} failed" in cli.stderr


def _actions(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT actor, role, source, action, dead_letter_ids, filters, matched, replayed,"
                " skipped, failed, outcome FROM admin_actions ORDER BY id"
            )
        ).mappings()
        return [dict(row) for row in rows]


def test_every_replay_and_discard_is_recorded_with_who_did_it(
    stack: str, superuser_engine: Engine, stack_env: dict[str, str], admin_token: str
) -> None:
    events = [post(stack, reply(f"audit{i}@audit.example.com", lead_email=None, email=None,
                                email_id=f"audit-{i}")) for i in range(3)]  # fmt: skip
    ids = [wait_dead_letter(superuser_engine, event_id)["id"] for event_id in events]

    one = httpx.post(f"{stack}/admin/dead-letters/{ids[0]}/replay", headers=auth(admin_token))
    assert one.status_code == 202
    wait_for(  # the replayed event fails again, which reopens its dead letter
        lambda: scalar(
            superuser_engine,
            "SELECT status = 'open' AND replay_count = 1 FROM dead_letters WHERE id = :i",
            i=ids[0],
        ),
        timeout=30,
    )
    assert crm_dlq(stack_env, "--as", "ops-alice", "discard", str(ids[1])).returncode == 0
    bulk = httpx.post(
        f"{stack}/admin/dead-letters/replay", json={"reason": "invalid_payload"},
        headers=auth(admin_token),
    )  # fmt: skip
    assert bulk.status_code == 202
    assert crm_dlq(stack_env, "--as", "ops-bob", "replay", "--dry-run", str(ids[2])).returncode == 0

    actions = _actions(superuser_engine)
    assert [(a["actor"], a["role"], a["source"], a["action"]) for a in actions] == [
        ("tests", "admin", "api", "replay"),
        ("ops-alice", "operator", "cli", "discard"),
        ("tests", "admin", "api", "replay_matching"),
    ]  # the dry run changed nothing, so it is not an action
    assert actions[0]["dead_letter_ids"] == [ids[0]] and actions[0]["replayed"] == 1
    assert actions[1]["dead_letter_ids"] == [ids[1]] and actions[1]["outcome"] == "ok"
    assert sorted(actions[2]["dead_letter_ids"]) == sorted([ids[0], ids[2]])
    assert actions[2]["filters"]["reason"] == "invalid_payload"
    assert (actions[2]["matched"], actions[2]["replayed"]) == (2, 2)


def test_a_replayed_dead_letter_keeps_the_time_the_reply_was_written(
    stack: str,
    superuser_engine: Engine,
    stack_env: dict[str, str],
    broken_default_pipeline: Callable[[], None],
) -> None:
    # A reply written a week ago, dead-lettered, replayed today: its note belongs a week ago
    # in the lead's timeline, not today.
    event_id = post(stack, reply("week.old@example.org", timestamp="2026-11-27T16:05:00Z"))
    letter_id = wait_dead_letter(superuser_engine, event_id)["id"]
    broken_default_pipeline()
    done = crm_dlq(stack_env, "replay", str(letter_id))
    assert done.returncode == 0, done.stderr
    wait_status(superuser_engine, event_id, "processed")
    written = scalar(
        superuser_engine,
        "SELECT a.occurred_at = '2026-11-27T16:05:00Z' AND e.occurred_at = a.occurred_at"
        " FROM activities a JOIN webhook_events e ON e.id = a.event_id",
    )
    assert written is True
