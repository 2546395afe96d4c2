"""The HTTP edge against clients without credentials: heads too large or too slow, a client
that writes a too-large body before it reads, a client that goes away mid-body."""

from __future__ import annotations

import contextlib
import selectors
import socket
import statistics
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from common.queue import QUEUE_NAME
from tests.e2e.stack import Process, start_receiver
from tests.helpers import wait_for
from tests.payloads import encode, reply, signed_headers
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

HEADER_TIMEOUT = 2  # seconds, for the receiver under test (the default is 10)


@dataclass
class Edge:
    process: Process
    url: str
    client: redis.Redis

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname and parts.port
        return parts.hostname, parts.port

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=10)

    def assert_nothing_left(self) -> None:
        assert list(self.client.scan_iter("crm:*")) == [], "a key or in-flight record was left"
        assert self.client.llen(QUEUE_NAME) == 0, "a message was queued"


@pytest.fixture(scope="module")
def edge(
    stack_env: dict[str, str],
    log_dir: Path,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Edge]:
    """A receiver with no worker behind it, on a Redis DB and metrics of its own."""
    env = stack_env | {
        "REDIS_URL": redis_server.db_url(4),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("edge-metrics")),
        "HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    }
    process, url = start_receiver(env, log_dir, name="receiver-edge")
    client = redis.Redis.from_url(env["REDIS_URL"])
    client.flushdb()
    yield Edge(process, url, client)
    process.stop()
    client.flushdb()
    client.close()


def _fresh() -> bytes:
    """A signed-able reply with an idempotency key of its own."""
    return encode(reply(email_id=str(uuid.uuid4())))


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (EOF or reset), without blocking."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_a_head_over_max_header_bytes_is_431_and_changes_nothing(edge: Edge) -> None:
    raw = _fresh()
    headers = signed_headers(raw) | {"X-Padding": "a" * 100_000}
    response = httpx.post(f"{edge.url}/webhooks/instantly", content=raw, headers=headers)
    assert response.status_code == 431, response.text
    assert response.headers["content-type"] == "application/json"
    assert "headers too large" in response.json()["error"].lower()
    edge.assert_nothing_left()


def test_a_head_just_under_the_limit_is_served(edge: Edge) -> None:
    raw = _fresh()
    headers = signed_headers(raw) | {"X-Padding": "a" * 15_000}
    response = httpx.post(f"{edge.url}/webhooks/instantly", content=raw, headers=headers)
    assert response.status_code == 202, response.text
    edge.client.flushdb()


def test_unterminated_huge_heads_are_cut_off_and_memory_stays_flat(edge: Edge) -> None:
    before = edge.process.rss_mb()
    sockets = [edge.connect() for _ in range(50)]
    try:
        line = b"X-Filler: " + b"a" * 65_000 + b"\r\n"
        for sock in sockets:
            sock.sendall(b"POST /webhooks/instantly HTTP/1.1\r\nHost: x\r\n")
            try:
                for _ in range(64):  # 4 MB each, if the server kept taking it
                    sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                pass
        answers = [_read_all(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers), answers[0][:200]
    assert edge.process.rss_mb() - before < 20
    edge.assert_nothing_left()


def test_slow_heads_are_closed_within_twice_the_deadline_while_deliveries_go_on(
    edge: Edge,
) -> None:
    before = edge.process.rss_mb()
    trickling = [edge.connect() for _ in range(300)]
    opened = time.monotonic()
    latencies: list[float] = []
    try:
        for sock in trickling:
            sock.sendall(b"POST /webhooks/instantly HTTP/1.1\r\nHost: x\r\n")
        open_ones = list(trickling)
        next_line = opened + 1
        with httpx.Client() as client:
            while open_ones and time.monotonic() - opened < 4 * HEADER_TIMEOUT:
                if time.monotonic() >= next_line:  # one more header line a second
                    for sock in open_ones:
                        with contextlib.suppress(OSError):  # closed by the server already
                            sock.sendall(b"X-Slow: 1\r\n")
                    next_line += 1
                raw = _fresh()
                started = time.perf_counter()
                response = client.post(
                    f"{edge.url}/webhooks/instantly", content=raw, headers=signed_headers(raw)
                )
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 202, response.text
                open_ones = [sock for sock in open_ones if not _closed_by_server(sock)]
        closed_after = time.monotonic() - opened
    finally:
        for sock in trickling:
            sock.close()
    assert not open_ones, f"{len(open_ones)} slow heads still open after {closed_after:.1f} s"
    assert closed_after <= 2 * HEADER_TIMEOUT + 1  # the last check ran up to a second late
    assert len(latencies) >= 20
    assert statistics.quantiles(latencies, n=100)[98] < 0.050
    assert edge.process.rss_mb() - before < 20
    edge.client.flushdb()


def test_a_silent_connection_is_closed_after_the_deadline(edge: Edge) -> None:
    with edge.connect() as sock:
        sock.settimeout(3 * HEADER_TIMEOUT)
        started = time.monotonic()
        assert _read_all(sock) == b""
        assert time.monotonic() - started < 2 * HEADER_TIMEOUT


def test_a_client_that_writes_its_whole_body_first_gets_the_413(edge: Edge) -> None:
    raw = encode(reply(reply_text="x" * 1_500_000))  # over MAX_BODY_BYTES (1 MiB)
    for _ in range(5):
        request = urllib.request.Request(  # noqa: S310 - the test's own loopback receiver
            f"{edge.url}/webhooks/instantly", data=raw, headers=signed_headers(raw), method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310
        assert refused.value.code == 413
        assert b"larger" in refused.value.read()
    edge.assert_nothing_left()


def test_a_client_gone_mid_body_is_one_info_line_and_counted(edge: Edge) -> None:
    raw = _fresh()
    head = (
        "POST /webhooks/instantly HTTP/1.1\r\nHost: x\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in signed_headers(raw).items())
        + f"Content-Length: {len(raw)}\r\n\r\n"
    )
    log_before = len(edge.process.output())
    with edge.connect() as sock:
        sock.sendall(head.encode() + raw[:100])  # and close: the body is cut short
    wait_for(
        lambda: "client went away" in edge.process.output()[log_before:],
        timeout=10,
        message="no line about the client that went away",
    )
    logged = edge.process.output()[log_before:]
    assert "Traceback" not in logged and "ERROR" not in logged, logged
    assert logged.count("client went away") == 1
    metrics = httpx.get(f"{edge.url}/metrics").text
    assert (
        'crm_webhook_deliveries_total{outcome="client_disconnected",provider="instantly",'
        'reason=""} 1.0' in metrics
    ), [line for line in metrics.splitlines() if "deliveries_total{" in line]
    edge.assert_nothing_left()


def test_pipelined_requests_are_not_taken_for_one_large_head(edge: Edge) -> None:
    # Two deliveries in one write: the second head starts inside the first one's read.
    first, second = _fresh(), _fresh()
    requests = b""
    for raw in (first, second):
        head = (
            "POST /webhooks/instantly HTTP/1.1\r\nHost: x\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in signed_headers(raw).items())
            + f"Content-Length: {len(raw)}\r\n\r\n"
        )
        requests += head.encode() + raw
    with edge.connect() as sock:
        sock.sendall(requests)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"HTTP/1.1 202 ") < 2 and time.monotonic() < deadline:
            if selector.select(timeout=1):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
    assert received.count(b"HTTP/1.1 202 ") == 2, received[:400]
    edge.client.flushdb()


def _refusals(edge: Edge, provider: str, reason: str) -> float:
    wanted = f'crm_webhook_auth_refusals_total{{provider="{provider}",reason="{reason}"}} '
    for line in httpx.get(f"{edge.url}/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


_REFUSED = [
    ("instantly", {}, "no_credentials", "no signature or bearer header"),
    ("instantly", {"X-Instantly-Signature": "sha256=abc"}, "malformed_signature", "64 hex"),
    ("instantly", {"X-Instantly-Signature": "ab" * 32}, "no_secret_matched", "matched"),
    ("instantly", {"Authorization": "Basic dXNlcg=="}, "not_bearer", "Bearer"),
    ("instantly", {"Authorization": "Bearer not-our-secret-at-all"}, "no_secret_matched", ""),
    ("calcom", {"X-Cal-Signature-256": "no-secret-provided"}, "malformed_signature", "hex"),
    ("calcom", {}, "no_credentials", "no signature"),
]


_LOGGED_KINDS: set[tuple[str, str]] = set()


@pytest.mark.parametrize(("provider", "headers", "reason", "said"), _REFUSED)
def test_a_refusal_is_one_line_with_its_reason_and_counted(
    edge: Edge, provider: str, headers: dict[str, str], reason: str, said: str
) -> None:
    raw = _fresh()
    before, log_before = _refusals(edge, provider, reason), len(edge.process.output())
    response = httpx.post(
        f"{edge.url}/webhooks/{provider}",
        content=raw,
        headers={"Content-Type": "application/json", **headers},
    )
    assert response.status_code == 401
    assert response.json() == {"error": "Missing or invalid signature"}  # says nothing more
    wait_for(lambda: _refusals(edge, provider, reason) == before + 1, timeout=5)
    lines = [
        line
        for line in edge.process.output()[log_before:].splitlines()
        if f"{provider} delivery from 127.0.0.1 refused: " in line
    ]
    # One line per kind of refusal a minute (ingest.refusals): a repeat of a kind only counts.
    first_of_its_kind = (provider, reason) not in _LOGGED_KINDS
    _LOGGED_KINDS.add((provider, reason))
    assert len(lines) == int(first_of_its_kind), edge.process.output()[log_before:]
    for line in lines:
        assert said in line
        for value in (*headers.values(), raw.decode()[:40], "test-instantly-secret", "test-calcom"):
            assert value not in line
    edge.assert_nothing_left()
