"""What the processes let out: no secret in any log line or response, and no slow client that
can hold the receiver."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import Engine

from common.queue import QUEUE_NAME
from common.settings import Settings
from tests.e2e.stack import ROOT, IsolatedStack, Process, wait_processed
from tests.helpers import wait_for
from tests.payloads import CALCOM_SECRET, encode, reply, signed_headers

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]


def _secrets(settings: Settings) -> list[str]:
    values = [
        settings.jwt_secret.get(),
        settings.pg_password.get(),
        settings.pg_admin_password.get(),
        settings.pg_readonly_password.get(),
        *(s.get() for secrets in settings.sender_secrets.values() for s in secrets),
    ]
    assert all(len(value) >= 12 for value in values), "a short secret could match by chance"
    return values


def test_secrets_never_appear_in_logs_or_responses(
    stack: str,
    settings: Settings,
    stack_env: dict[str, str],
    log_dir: Path,
    superuser_engine: Engine,
    admin_token: str,
    worker: Process,
) -> None:
    secrets = _secrets(settings)
    instantly = settings.webhook_secrets("instantly")[0].get()
    seen: list[str] = []
    accepted: list[str] = []
    with httpx.Client(base_url=stack) as client:
        for i in range(20):
            raw = encode(reply(f"burst{i}@secrets.example.com"))
            response = client.post("/webhooks/instantly", content=raw, headers=signed_headers(raw))
            accepted.append(response.json()["event_id"])
            seen.append(response.text + str(response.headers))
        bad_requests = [
            ("/webhooks/instantly", {"X-Instantly-Signature": "0" * 64}),
            ("/webhooks/instantly", {"Authorization": f"Bearer {instantly}x"}),
            ("/webhooks/instantly", {"Authorization": f"Bearer {instantly[:-1]}"}),
            ("/webhooks/calcom", {"X-Cal-Signature-256": "no-secret-provided"}),
            ("/webhooks/calcom", {"X-Cal-Signature-256": CALCOM_SECRET}),
        ]
        for path, headers in bad_requests:
            response = client.post(
                path, content=b"{}", headers={"Content-Type": "application/json", **headers}
            )
            assert response.status_code == 401
            seen.append(response.text + str(response.headers))
        # A dead letter: its error and traceback go to the log at error level.
        raw = encode(reply(lead_email=None, email=None, email_id="no-address"))
        dead = client.post("/webhooks/instantly", content=raw, headers=signed_headers(raw))
        accepted.append(dead.json()["event_id"])
        for token in (admin_token, "forged.token.value", "-"):
            response = client.get(
                "/admin/dead-letters", headers={"Authorization": f"Bearer {token}"}
            )
            seen.append(response.text + str(response.headers))
    wait_processed(superuser_engine, accepted)

    commands = [["crm-dlq", "list"], ["crm-db", "migrate"], ["crm-token", "--help"]]
    for command in commands:
        done = subprocess.run(
            [str(Path(sys.executable).with_name(command[0])), *command[1:]],
            env=stack_env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        seen.append(done.stdout + done.stderr)

    logs = {path.name: path.read_text(errors="replace") for path in log_dir.glob("*.log")}
    assert "dead-lettered as invalid_payload" in logs["worker.log"], "the burst was not logged"
    for secret in secrets:
        assert not any(secret in text for text in seen), "a secret reached a response or CLI"
        leaked = [name for name, text in logs.items() if secret in text]
        assert leaked == [], f"a secret reached the log of {leaked}"


def _slow_post(url: str, raw: bytes, responses: list[bytes], stop: threading.Event) -> None:
    """A client that announces its body and then sends it one byte a second."""
    parts = urlsplit(url)
    headers = signed_headers(raw)
    head = (
        f"POST /webhooks/instantly HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Length: {len(raw)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode())
        sock.settimeout(1.0)
        for byte in raw[:60]:  # bounded: a minute at most
            if stop.is_set():
                break
            try:
                sock.sendall(bytes([byte]))
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                responses.append(_rest_of_response(sock, answer))
                break


def _rest_of_response(sock: socket.socket, received: bytes) -> bytes:
    """The whole response, of which `received` is the start: uvicorn writes the head and the
    body separately, so one recv() may return only the head."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        head, separator, body = received.partition(b"\r\n\r\n")
        if separator:
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if length is None or len(body) >= int(length.group(1)):
                return received
        try:
            more = sock.recv(65536)  # waits at most the socket's timeout
        except TimeoutError:
            continue
        if not more:
            break
        received += more
    return received


def test_slow_client_is_cut_off_and_does_not_stall_other_requests(
    isolated: IsolatedStack,
) -> None:
    _, url = isolated.receiver(BODY_TIMEOUT_SECONDS="2")
    responses: list[bytes] = []
    stop = threading.Event()
    slow = threading.Thread(
        target=_slow_post, args=(url, encode(reply("slow@example.org")), responses, stop)
    )
    slow.start()
    try:
        raw = encode(reply("fast@example.org"))
        fast = httpx.post(f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw))
        assert fast.status_code == 202
        assert responses == [], "the slow client was answered before the fast one"
        wait_for(lambda: responses, timeout=20, message="the slow client was never cut off")
    finally:
        stop.set()
        slow.join(timeout=30)
    status_line = responses[0].split(b"\r\n", 1)[0]
    assert b" 408 " in status_line
    assert b"not received within 2 s" in responses[0]
    # Only the fast delivery was queued.
    assert isolated.client.llen(QUEUE_NAME) == 1


def test_receiver_log_never_holds_full_payload_bodies(
    stack: str, log_dir: Path, superuser_engine: Engine
) -> None:
    marker = "very-private-reply-text-7f3a9c"
    raw = encode(reply("private@example.org", reply_text=marker))
    response = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    wait_processed(superuser_engine, [response.json()["event_id"]])
    for path in log_dir.glob("*.log"):
        assert marker not in path.read_text(errors="replace"), f"payload body in {path.name}"
