"""What an operator sees: /metrics after a burst, JSON log lines naming their event, the
post-deploy smoke check and the worker healthcheck — against the real stack."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from common.senders import SENDERS
from tests.e2e.stack import ROOT, IsolatedStack, Process, queue_reply, scalar, wait_processed
from tests.helpers import wait_for
from tests.payloads import INSTANTLY_SECRET, encode, reply, signed_headers
from tests.redis_server import free_port

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_a_burst_by_outcome(
    stack: str, superuser_engine: Engine, worker: Process
) -> None:
    before = scrape(stack)
    accepted: list[str] = []
    with httpx.Client(base_url=stack) as client:
        for i in range(5):
            raw = encode(reply(f"metrics{i}@metrics.example.com"))
            response = client.post("/webhooks/instantly", content=raw, headers=signed_headers(raw))
            accepted.append(response.json()["event_id"])
        for _ in range(2):  # repeats of the first
            raw = encode(reply("metrics0@metrics.example.com"))
            assert (
                client.post(
                    "/webhooks/instantly", content=raw, headers=signed_headers(raw)
                ).status_code
                == 409
            )
        for _ in range(3):
            raw = encode(reply("nobody@metrics.example.com"))
            assert (
                client.post(
                    "/webhooks/instantly", content=raw, headers=signed_headers(raw, secret="wrong")
                ).status_code
                == 401
            )
        assert (
            client.post(
                "/webhooks/instantly", content=b"[]", headers=signed_headers(b"[]")
            ).status_code
            == 400
        )
        raw = encode(reply(lead_email=None, email=None, email_id="metrics-dead"))
        dead = client.post("/webhooks/instantly", content=raw, headers=signed_headers(raw))
        accepted.append(dead.json()["event_id"])
    wait_processed(superuser_engine, accepted)
    after = scrape(stack)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    deliveries = "crm_webhook_deliveries_total"
    assert delta(deliveries, provider="instantly", outcome="accepted", reason="") == 6
    assert delta(deliveries, provider="instantly", outcome="duplicate", reason="") == 2
    assert delta(deliveries, provider="instantly", outcome="rejected", reason="unauthorized") == 3
    assert delta(deliveries, provider="instantly", outcome="rejected", reason="invalid_body") == 1
    assert delta("crm_webhook_request_duration_seconds_count", provider="instantly") == 12
    events = "crm_events_processed_total"
    reply_labels = {"provider": "instantly", "event_type": "reply_received"}
    assert delta(events, outcome="processed", **reply_labels) == 5
    assert delta(events, outcome="dead_lettered", **reply_labels) == 1
    assert delta("crm_dead_letters_total", provider="instantly", reason="invalid_payload") == 1
    assert delta("crm_event_processing_latency_seconds_count", **reply_labels) == 5
    # However the workers happened to group them, the five committed events are all counted.
    assert delta("crm_event_batch_size_sum") == 5
    assert value(after, "crm_dead_letters_open") == 1
    assert value(after, "crm_queue_depth") == 0
    assert ("crm_queue_unacked", ()) in after
    assert ("crm_queue_oldest_age_seconds", ()) in after


def test_log_lines_are_json_and_name_their_event(
    stack: str, superuser_engine: Engine, log_dir: Path, worker: Process
) -> None:
    raw = encode(reply(lead_email=None, email=None, email_id="json-log"))
    event_id = httpx.post(
        f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw)
    ).json()["event_id"]
    wait_processed(superuser_engine, [event_id])
    records = [
        json.loads(line)
        for line in worker.output().splitlines()
        if line.startswith("{") and event_id in line
    ]
    assert records, "no JSON log line mentions the event"
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    dead = [r for r in records if "dead-lettered" in r["message"]]
    assert dead and dead[0]["level"] == "ERROR"
    assert dead[0]["event_id"] == event_id
    assert (dead[0]["provider"], dead[0]["event_type"]) == ("instantly", "reply_received")
    # Celery's own lines come out in the same format.
    assert any(r["logger"].startswith("celery") for r in records)


def _command(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name(name)), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_crm_smoke_passes_against_the_stack_and_leaves_no_crm_rows(
    stack: str, stack_env: dict[str, str], reader_token: str, superuser_engine: Engine
) -> None:
    done = _command(
        "crm-smoke", "--url", stack, "--secret", INSTANTLY_SECRET, "--token", reader_token,
        env=stack_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line[:4] for line in lines] == ["ok  "] * 3
    assert "202" in lines[0] and "409" in lines[1] and "deal" in lines[2]
    # It proved the whole path and left nothing in the CRM; its event row says what it was.
    for table in ("contacts", "deals", "activities"):
        kept = scalar(superuser_engine, f"SELECT count(*) FROM {table}")  # noqa: S608
        assert kept == 0, f"crm-smoke left {kept} row(s) in {table}"
    result = scalar(superuser_engine, "SELECT result FROM webhook_events")
    assert result["smoke_test"].startswith("applied, then rolled back")
    assert result["step"] == "E:deal_created_and_logged"


def test_crm_smoke_fails_with_a_clear_line_on_a_wrong_secret(
    stack: str, stack_env: dict[str, str], reader_token: str
) -> None:
    done = _command(
        "crm-smoke", "--url", stack, "--secret", "not-the-secret", "--token", reader_token,
        env=stack_env,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL first delivery: 401")
    assert "must be one of the service's HMAC_SHARED_SECRET_INSTANTLY values" in done.stdout


def test_crm_smoke_names_the_cause_when_nothing_answers(stack_env: dict[str, str]) -> None:
    done = _command("crm-smoke", "--url", f"http://127.0.0.1:{free_port()}", env=stack_env)
    assert done.returncode == 1
    assert "FAIL cannot reach" in done.stdout
    assert "Connection refused" in done.stdout


def test_worker_health_command_answers_for_a_live_worker_only(
    stack: str, stack_env: dict[str, str], worker: Process
) -> None:
    live = _command("crm-worker-health", "--name", f"worker@{socket.gethostname()}", env=stack_env)
    assert live.returncode == 0, live.stderr
    absent = _command(
        "crm-worker-health", "--name", "nobody@nowhere", "--timeout", "1", env=stack_env
    )
    assert absent.returncode == 1
    assert "did not answer" in absent.stderr


def test_health_and_readiness(stack: str) -> None:
    assert httpx.get(f"{stack}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack}/readyz").json() == {"status": "ready"}


def test_crm_status_reports_a_healthy_stack(stack: str, stack_env: dict[str, str]) -> None:
    done = _command("crm-status", "--json", env=stack_env)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    for key in ("queue_depth", "oldest_queued_seconds", "in_flight", "dead_letters_open"):
        assert key in status
    assert f"worker@{socket.gethostname()}" in status["workers"]
    assert status["dependencies"] == {"redis": "ok", "postgresql": "ok"}
    assert status["ok"] is True and status["problems"] == []
    table = _command("crm-status", env=stack_env)
    assert table.returncode == 0 and "status           ok" in table.stdout


def test_crm_status_fails_on_a_backlog_with_no_worker(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    _, url = isolated.receiver()
    for index in range(3):
        raw = encode(reply(f"status{index}@status.example.com"))
        assert (
            httpx.post(
                f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw)
            ).status_code
            == 202
        )
    done = _command("crm-status", "--json", "--max-age", "0", env=isolated.env)
    assert done.returncode == 1
    status = json.loads(done.stdout)
    assert status["queue_depth"] == 3 and status["in_flight"] == 3
    assert status["oldest_queued_seconds"] > 0
    assert status["workers"] == []
    assert "no worker answered a ping" in status["problems"]
    assert any("oldest queued event" in problem for problem in status["problems"])


def test_crm_status_watch_refreshes_until_stopped(
    stack: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    out = (tmp_path / "watch.log").open("wb")
    watch = subprocess.Popen(
        [str(Path(sys.executable).with_name("crm-status")), "--json", "--watch", "0.2"],
        env=stack_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(
            lambda: (tmp_path / "watch.log").read_text().count('"queue_depth"') >= 2,
            timeout=30,
            message="crm-status --watch did not check twice",
        )
    finally:
        watch.terminate()
        watch.wait(timeout=30)
        out.close()


def test_healthz_details_names_each_dependency_and_readyz_keeps_its_meaning(
    stack: str, isolated: IsolatedStack
) -> None:
    details = httpx.get(f"{stack}/healthz/details")
    assert details.status_code == 200
    assert details.json() == {
        "status": "ok",
        "dependencies": {"redis": "ok", "postgresql": "ok"},
        "deliveries": "accepted",
        "parked": 0,
        "duplicate_status": dict.fromkeys(SENDERS, 409),
    }
    _, url = isolated.receiver(PG_PORT=str(free_port()))  # no PostgreSQL there
    degraded = httpx.get(f"{url}/healthz/details", timeout=30).json()
    assert degraded["status"] == "degraded"
    assert degraded["dependencies"]["redis"] == "ok"
    assert degraded["dependencies"]["postgresql"].startswith("OperationalError")
    assert httpx.get(f"{url}/readyz").status_code == 200  # webhooks are still taken


DEPLOY = ROOT / "deploy"


def _names_used() -> set[str]:
    """Every crm_* metric the alerting rules and the Grafana dashboard query."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "crm-ingest.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {name for expr in exprs for name in re.findall(r"\bcrm_[a-z0-9_]+", expr)}


def test_every_metric_the_rules_and_the_dashboard_use_is_served(
    stack: str,
    superuser_engine: Engine,
    isolated: IsolatedStack,
    worker: Process,
) -> None:
    used = _names_used()
    assert {"crm_queue_depth", "crm_event_retries_total", "crm_redis_used_memory_bytes"} <= used
    lead = "retried@metrics.example.com"
    with httpx.Client(base_url=stack) as client:
        for body, secret in ((reply(lead), INSTANTLY_SECRET), (reply(lead), "wrong")):
            raw = encode(body)
            client.post("/webhooks/instantly", content=raw, headers=signed_headers(raw, secret))
        bad = encode(reply(lead_email=None, email=None, email_id="served-dead"))
        dead = client.post("/webhooks/instantly", content=bad, headers=signed_headers(bad))
    wait_processed(superuser_engine, [dead.json()["event_id"]])
    wait_for(lambda: scalar(superuser_engine, "SELECT count(*) FROM contacts") == 1, timeout=30)
    # A retry: the lead's row held locked past a short lock timeout, then let go.
    isolated.worker(PG_LOCK_TIMEOUT_MS="200")
    with superuser_engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT id FROM contacts WHERE email = :e FOR UPDATE"), {"e": lead})
        event_id = queue_reply(isolated.client, reply(lead, email_id="served-retry"))
        wait_for(
            lambda: any(name == "crm_event_retries_total" for name, _ in scrape(stack)),
            timeout=30,
            message="no retry was counted",
        )
    wait_processed(superuser_engine, [event_id])
    served = {name for name, _ in scrape(stack)}
    missing = sorted(name for name in used if name not in served)
    assert not missing, f"used by deploy/ but not in /metrics: {missing}"


def test_the_alerting_rules_pass_promtool() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout
