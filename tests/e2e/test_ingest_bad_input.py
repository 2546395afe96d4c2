"""Every bad delivery gets a clear JSON error and changes nothing: no idempotency key, no queued
message, no row."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from common.queue import QUEUE_NAME
from tests.e2e.stack import ROOT, free_port, start_receiver
from tests.payloads import encode, hmac_hex, reply, signed_headers
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Quiet:
    """A receiver with no worker behind it, on a Redis DB of its own: whatever a refused
    delivery left behind (a key, a message, an in-flight record) would still be there."""

    url: str
    client: redis.Redis

    def assert_nothing_left(self) -> None:
        assert list(self.client.scan_iter("crm:*")) == [], "a key or in-flight record was left"
        assert self.client.llen(QUEUE_NAME) == 0, "a message was queued"


@pytest.fixture(scope="module")
def quiet_receiver(
    stack_env: dict[str, str], log_dir: Path, redis_server: RedisServer
) -> Iterator[Quiet]:
    env = stack_env | {"REDIS_URL": redis_server.db_url(3)}
    process, url = start_receiver(env, log_dir, name="receiver-no-worker")
    client = redis.Redis.from_url(env["REDIS_URL"])
    yield Quiet(url, client)
    process.stop()
    client.flushdb()
    client.close()


@pytest.fixture
def untouched(quiet_receiver: Quiet) -> Quiet:
    quiet_receiver.client.flushdb()
    return quiet_receiver


def _post(url: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/webhooks/instantly", content=raw, headers=headers)


def _assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert fragment.lower() in response.json()["error"].lower()


def test_no_auth_header_is_401(untouched: Quiet) -> None:
    raw = encode(reply())
    _assert_error(_post(untouched.url, raw, {"Content-Type": "application/json"}), 401, "signature")
    untouched.assert_nothing_left()


def test_wrong_hmac_is_401(untouched: Quiet) -> None:
    raw = encode(reply())
    headers = signed_headers(raw, secret="not-the-secret")
    _assert_error(_post(untouched.url, raw, headers), 401, "signature")
    untouched.assert_nothing_left()


def test_hmac_of_a_different_body_is_401(untouched: Quiet) -> None:
    raw = encode(reply())
    headers = signed_headers(encode(reply("other@example.org")))
    _assert_error(_post(untouched.url, raw, headers), 401, "signature")
    untouched.assert_nothing_left()


def test_hmac_over_the_body_with_a_trailing_newline_is_401(untouched: Quiet) -> None:
    raw = encode(reply())
    headers = {
        "Content-Type": "application/json",
        "X-Instantly-Signature": hmac_hex(raw + b"\n"),
    }
    _assert_error(_post(untouched.url, raw, headers), 401, "signature")
    untouched.assert_nothing_left()


@pytest.mark.parametrize(
    "signature",
    ["sha256=" + "zz" * 32, "sha256=" + "ab " * 20 + "abab", "sha256=" + "ab" * 31, "sha256="],
    ids=["64-non-hex", "hex-with-spaces", "62-digits", "empty"],
)
def test_signature_that_is_not_64_hex_digits_is_401(untouched: Quiet, signature: str) -> None:
    raw = encode(reply())
    headers = {"Content-Type": "application/json", "X-Instantly-Signature": signature}
    _assert_error(_post(untouched.url, raw, headers), 401, "signature")
    untouched.assert_nothing_left()


def test_wrong_signature_is_401_even_with_a_good_bearer_token(untouched: Quiet) -> None:
    raw = encode(reply())
    headers = signed_headers(raw, secret="not-the-secret") | {
        "Authorization": "Bearer test-instantly-secret-A"
    }
    _assert_error(_post(untouched.url, raw, headers), 401, "signature")
    untouched.assert_nothing_left()


def test_signature_header_repeated_is_401(untouched: Quiet) -> None:
    raw = encode(reply())
    good = f"sha256={hmac_hex(raw)}"
    headers = [
        ("Content-Type", "application/json"),
        ("X-Instantly-Signature", good),
        ("X-Instantly-Signature", good),
    ]
    response = httpx.post(f"{untouched.url}/webhooks/instantly", content=raw, headers=headers)
    _assert_error(response, 401, "signature")
    untouched.assert_nothing_left()


def test_wrong_bearer_secret_is_401(untouched: Quiet) -> None:
    raw = encode(reply())
    headers = {"Content-Type": "application/json", "Authorization": "Bearer wrong-secret"}
    _assert_error(_post(untouched.url, raw, headers), 401, "signature")
    untouched.assert_nothing_left()


def test_empty_body_is_400(untouched: Quiet) -> None:
    _assert_error(_post(untouched.url, b"", signed_headers(b"")), 400, "JSON")
    untouched.assert_nothing_left()


def test_not_json_is_400(untouched: Quiet) -> None:
    raw = b"event_type=reply_received"
    _assert_error(_post(untouched.url, raw, signed_headers(raw)), 400, "JSON")
    untouched.assert_nothing_left()


def test_invalid_utf8_is_400(untouched: Quiet) -> None:
    raw = b'{"event_type": "reply_received", "lead_email": "\xff\xfe@x.de"}'
    _assert_error(_post(untouched.url, raw, signed_headers(raw)), 400, "UTF-8")
    untouched.assert_nothing_left()


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"reply_received"', b"42", b"null"])
def test_json_that_is_not_an_object_is_400(untouched: Quiet, raw: bytes) -> None:
    _assert_error(_post(untouched.url, raw, signed_headers(raw)), 400, "object")
    untouched.assert_nothing_left()


@pytest.mark.parametrize("event_type", [None, "", "  ", 7])
def test_object_without_event_type_is_400(untouched: Quiet, event_type: object) -> None:
    body = reply()
    if event_type is None:
        del body["event_type"]
    else:
        body["event_type"] = event_type
    raw = encode(body)
    _assert_error(_post(untouched.url, raw, signed_headers(raw)), 400, "event type")
    untouched.assert_nothing_left()


def test_text_plain_content_type_is_415(untouched: Quiet) -> None:
    raw = encode(reply())
    headers = signed_headers(raw) | {"Content-Type": "text/plain"}
    _assert_error(_post(untouched.url, raw, headers), 415, "application/json")
    untouched.assert_nothing_left()


def test_missing_content_type_is_415(untouched: Quiet) -> None:
    raw = encode(reply())
    headers = signed_headers(raw)
    del headers["Content-Type"]
    _assert_error(_post(untouched.url, raw, headers), 415, "application/json")
    untouched.assert_nothing_left()


def test_body_over_max_body_bytes_is_413(untouched: Quiet) -> None:
    raw = encode(reply(reply_text="x" * 1_100_000))
    _assert_error(_post(untouched.url, raw, signed_headers(raw)), 413, "larger")
    untouched.assert_nothing_left()


def test_chunked_body_over_the_limit_is_413(untouched: Quiet) -> None:
    raw = encode(reply(reply_text="x" * 1_100_000))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 65536):
            yield raw[start : start + 65536]

    response = httpx.post(
        f"{untouched.url}/webhooks/instantly", content=chunks(), headers=signed_headers(raw)
    )
    _assert_error(response, 413, "larger")
    untouched.assert_nothing_left()


def test_lying_content_length_is_refused_without_reading_the_body(untouched: Quiet) -> None:
    # Announces 2 MB and sends only the head of it: the answer comes from the header alone.
    raw = encode(reply())
    headers = signed_headers(raw) | {"Content-Length": str(2 * 1024 * 1024)}
    response = _raw_post(untouched.url, raw, headers)
    _assert_error(response, 413, "larger")
    untouched.assert_nothing_left()


def test_invalid_idempotency_key_header_is_400(untouched: Quiet) -> None:
    raw = encode(reply())
    headers = signed_headers(raw) | {"Idempotency-Key": "k" * 300}
    _assert_error(_post(untouched.url, raw, headers), 400, "idempotency key")
    untouched.assert_nothing_left()


def test_get_on_the_webhook_path_is_405(untouched: Quiet) -> None:
    response = httpx.get(f"{untouched.url}/webhooks/instantly")
    _assert_error(response, 405, "method")
    untouched.assert_nothing_left()


def test_unknown_provider_path_is_404(untouched: Quiet) -> None:
    raw = encode(reply())
    response = httpx.post(
        f"{untouched.url}/webhooks/hubspot", content=raw, headers=signed_headers(raw)
    )
    _assert_error(response, 404, "provider")
    assert response.json()["error"].endswith(
        "this service takes: calcom, calendly, instantly, smartlead"
    )
    untouched.assert_nothing_left()


def test_unknown_path_is_404(untouched: Quiet) -> None:
    _assert_error(httpx.get(f"{untouched.url}/nope"), 404, "not found")
    untouched.assert_nothing_left()


def test_redis_down_is_503_with_retry_after_and_nothing_queued(
    stack_env: dict[str, str], log_dir: Path, redis_client: redis.Redis
) -> None:
    dead_port = free_port()  # nothing listens here
    env = stack_env | {"REDIS_URL": f"redis://127.0.0.1:{dead_port}/0"}
    process, url = start_receiver(env, log_dir, name="receiver-no-redis")
    try:
        raw = encode(reply())
        response = _post(url, raw, signed_headers(raw))
        _assert_error(response, 503, "retry")
        assert response.headers["retry-after"].isdigit()
        assert httpx.get(f"{url}/readyz").status_code == 503
    finally:
        process.stop()


def test_receiver_refuses_to_start_with_bypass_in_production(stack_env: dict[str, str]) -> None:
    env = stack_env | {
        "APP_ENV": "production",
        "DEV_SIGNATURE_BYPASS": "true",
        "JWT_SECRET": "a-real-jwt-secret-0123456789abcdefghij",
        "PG_PASSWORD": "real-pg-password-1",
        "PG_ADMIN_PASSWORD": "real-pg-password-2",
        "PG_READONLY_PASSWORD": "real-pg-password-3",
        "HMAC_SHARED_SECRET_INSTANTLY": "real-instantly-secret",
        "HMAC_SHARED_SECRET_CALCOM": "real-calcom-secret",
    }
    command = [
        sys.executable, "-m", "ingest.serve", "--port", str(free_port()),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    assert b"DEV_SIGNATURE_BYPASS" in done.stderr
    assert b"real-instantly-secret" not in done.stderr + done.stdout


def _raw_post(url: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST over a bare socket, for requests a well-behaved client would not send."""
    parts = urlsplit(url)
    lines = ["POST /webhooks/instantly HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    if "Content-Length" not in headers:
        headers = headers | {"Content-Length": str(len(raw))}
    head = "\r\n".join(lines + [f"{k}: {v}" for k, v in headers.items()]) + "\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode() + raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    response_headers = [
        tuple(part.strip() for part in line.decode().split(":", 1))
        for line in header_block.split(b"\r\n")
    ]
    return httpx.Response(int(status_line.split()[1]), headers=response_headers, content=body)
