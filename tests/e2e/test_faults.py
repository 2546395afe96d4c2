"""Faults injected into the real stack: accepted deliveries in, committed effects out, counted
exactly. Each test cleans up every process it starts, also when it fails."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from common import queue
from common.queue import QUEUE_NAME
from tests.e2e.proxy import TcpProxy
from tests.e2e.stack import IsolatedStack, Process, reply_envelope, scalar
from tests.helpers import wait_for
from tests.payloads import encode, reply, signed_headers
from tests.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

PG_CLUSTER = ["pg_ctlcluster", "--skip-systemctl-redirect"]


def send_all(url: str, bodies: list[dict[str, Any]], connections: int = 50) -> list[httpx.Response]:
    """Deliver every body concurrently, each signed, as a sender would."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            raws = [encode(body) for body in bodies]
            return await asyncio.gather(
                *(
                    client.post("/webhooks/instantly", content=raw, headers=signed_headers(raw))
                    for raw in raws
                )
            )

    return asyncio.run(run())


def leads(count: int, tag: str) -> list[dict[str, Any]]:
    return [reply(f"{tag}{i}@{tag}{i}.example.com") for i in range(count)]


def safe_count(engine: Engine, sql: str) -> int:
    """A count that reads 0 while PostgreSQL is restarting, instead of failing the wait."""
    try:
        return int(scalar(engine, sql))
    except OperationalError:
        return 0


PROCESSED = "SELECT count(*) FROM webhook_events WHERE status = 'processed'"


def assert_exactly_once(engine: Engine, count: int) -> None:
    assert scalar(engine, "SELECT count(*) FROM webhook_events") == count
    assert scalar(engine, PROCESSED) == count
    assert scalar(engine, "SELECT count(*) FROM contacts") == count
    assert scalar(engine, "SELECT count(*) FROM deals") == count
    assert scalar(engine, "SELECT count(*) FROM activities") == count
    assert scalar(engine, "SELECT count(*) FROM dead_letters") == 0


def kill_pool(process: Process) -> list[int]:
    """SIGKILL every pool process of a worker, each in the middle of an event."""
    pid = process.popen.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for child in children:
        os.kill(child, signal.SIGKILL)
    return children


def test_worker_processes_killed_mid_burst_every_event_is_processed_exactly_once(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    total = 1000
    _, url = isolated.receiver()
    assert [r.status_code for r in send_all(url, leads(total, "kill"))] == [202] * total

    worker = isolated.worker(
        concurrency=2, BROKER_VISIBILITY_TIMEOUT="5", TASK_RETRY_BACKOFF_MAX="2"
    )
    for threshold in (150, 500):  # twice: the second time, the pool that replaced the first

        def reached(threshold: int = threshold) -> bool:
            return safe_count(superuser_engine, PROCESSED) >= threshold

        wait_for(reached, timeout=60, message="the burst did not get going")
        assert kill_pool(worker), "the worker had no pool processes to kill"
    assert safe_count(superuser_engine, PROCESSED) < total, "the burst was over before the kill"

    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == total,
        timeout=180,
        message="not every accepted event was processed after the kills",
    )
    wait_for(lambda: isolated.client.hlen("unacked") == 0, timeout=30, message="unacked left")
    assert_exactly_once(superuser_engine, total)
    assert "WorkerLostError" in worker.output()


def kill_tree(process: Process) -> None:
    """SIGKILL a worker's main process and its pool at once: no warm shutdown, nothing
    restored on the way out, possibly a message popped but not yet recorded as unacked."""
    children = kill_pool(process)
    os.kill(process.popen.pid, signal.SIGKILL)
    process.popen.wait(timeout=30)
    assert children


def test_whole_worker_killed_mid_burst_every_event_is_processed_exactly_once(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    total = 1000
    fast_recovery = {"BROKER_VISIBILITY_TIMEOUT": "5", "TASK_RETRY_BACKOFF_MAX": "2"}
    _, url = isolated.receiver(**fast_recovery)
    assert [r.status_code for r in send_all(url, leads(total, "tree"))] == [202] * total

    for threshold in (150, 500):  # twice, each time the whole worker, main process included
        doomed = isolated.worker(concurrency=2, **fast_recovery)

        def reached(threshold: int = threshold) -> bool:
            return safe_count(superuser_engine, PROCESSED) >= threshold

        wait_for(reached, timeout=60, message="the burst did not get going")
        kill_tree(doomed)
    assert safe_count(superuser_engine, PROCESSED) < total, "the burst was over before the kill"

    isolated.worker(concurrency=2, **fast_recovery)
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == total,
        timeout=180,
        message="not every accepted event was processed after the kills",
    )
    wait_for(
        lambda: isolated.client.hlen(queue.INFLIGHT_KEY) == 0,
        timeout=60,
        message="in-flight records were left behind",
    )
    assert_exactly_once(superuser_engine, total)


def test_a_message_the_consumer_lost_is_queued_again_from_the_in_flight_record(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    # What the receiver's script leaves when a consumer popped the message and died before
    # recording it: the in-flight record, due, and nothing in the queue or the unacked hash.
    envelope = reply_envelope(reply("lost.in.transit@example.org"), "lost")
    message = queue.message.build(envelope)
    isolated.client.hset(queue.INFLIGHT_KEY, envelope.event_id, message)
    isolated.client.zadd(queue.DUE_KEY, {envelope.event_id: 0})
    assert isolated.client.llen(QUEUE_NAME) == 0

    worker = isolated.worker(BROKER_VISIBILITY_TIMEOUT="5", TASK_RETRY_BACKOFF_MAX="2")
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == 1,
        timeout=60,
        message="the lost message was never queued again",
    )
    assert "in-flight sweep queued 1 event(s) again" in worker.output()
    wait_for(
        lambda: isolated.client.hlen(queue.INFLIGHT_KEY) == 0,
        timeout=30,
        message="the in-flight record was not forgotten after processing",
    )
    assert_exactly_once(superuser_engine, 1)


def _pg_version() -> str:
    return sorted(os.listdir("/etc/postgresql"))[-1]


def _pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode == 0


@pytest.fixture
def postgres_restarter() -> Iterator[tuple[list[str], list[str]]]:
    """The commands that stop and start the PostgreSQL every test uses; it is running again
    afterwards whatever happens."""
    version = _pg_version()
    yield [*PG_CLUSTER, version, "main", "stop"], [*PG_CLUSTER, version, "main", "start"]
    if not _pg_ready():
        subprocess.run([*PG_CLUSTER, version, "main", "start"], check=True)
    wait_for(_pg_ready, timeout=60, message="PostgreSQL did not come back")


def test_postgres_restarted_mid_burst_every_event_is_processed_exactly_once(
    isolated: IsolatedStack,
    superuser_engine: Engine,
    postgres_restarter: tuple[list[str], list[str]],
) -> None:
    total = 600
    stop, start = postgres_restarter
    _, url = isolated.receiver()
    assert [r.status_code for r in send_all(url, leads(total, "pgr"))] == [202] * total
    worker = isolated.worker(concurrency=2, TASK_RETRY_BACKOFF_MAX="2")
    wait_for(lambda: safe_count(superuser_engine, PROCESSED) >= 100, timeout=60, message="no start")

    subprocess.run(stop, check=True)
    wait_for(
        lambda: "retrying in" in worker.output(),
        timeout=60,
        message="the worker did not notice PostgreSQL was gone",
    )
    subprocess.run(start, check=True)
    wait_for(_pg_ready, timeout=60, message="PostgreSQL did not start")

    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == total,
        timeout=180,
        message="not every accepted event was processed after the restart",
    )
    assert_exactly_once(superuser_engine, total)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[list[RedisServer]]:
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        server.stop(signal.SIGKILL)


def test_redis_down_gives_503_never_2xx_and_service_resumes_without_restart(
    isolated: IsolatedStack, own_redis: list[RedisServer], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)
    own_redis.append(server)
    server.start()
    _, url = isolated.receiver(REDIS_URL=server.url)
    bodies = leads(3, "rdown")

    assert send_all(url, bodies[:1])[0].status_code == 202
    assert httpx.get(f"{url}/readyz").status_code == 200

    server.stop()
    down = send_all(url, bodies[1:2] * 5)
    assert [r.status_code for r in down] == [503] * 5
    assert all(r.headers["retry-after"].isdigit() for r in down)
    assert httpx.get(f"{url}/readyz").status_code == 503

    server.start()
    wait_for(
        lambda: httpx.get(f"{url}/readyz").status_code == 200,
        timeout=30,
        message="/readyz did not recover",
    )
    # The delivery refused while Redis was down is accepted now: nothing of it was left behind.
    assert send_all(url, bodies[1:3])[0].status_code == 202


def test_a_reply_lost_after_the_claim_ran_is_a_202_and_the_event_is_queued_once(
    isolated: IsolatedStack, redis_server: RedisServer
) -> None:
    # The connection to Redis drops after the script ran, before its reply came back: the
    # event is queued, so the sender must hear 202, not 503 (whose retry would then get 409).
    proxy = TcpProxy(free_port(), ("127.0.0.1", redis_server.port), cut_reply_to=b"EVALSHA")
    proxy.open()
    try:
        _, url = isolated.receiver(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/1")
        raw = encode(reply("lost.reply@example.org"))
        first = httpx.post(f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw))
        retry = httpx.post(f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    finally:
        proxy.close()

    assert proxy.replies_cut == 1
    assert first.status_code == 202, first.text
    assert retry.status_code == 409
    assert retry.json()["event_id"] == first.json()["event_id"]
    assert isolated.client.llen(QUEUE_NAME) == 1


def test_redis_crash_with_append_only_persistence_keeps_accepted_events(
    isolated: IsolatedStack,
    own_redis: list[RedisServer],
    tmp_path: Path,
    superuser_engine: Engine,
) -> None:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    own_redis.append(server)
    server.start()
    _, url = isolated.receiver(REDIS_URL=server.url)
    total = 50
    assert [r.status_code for r in send_all(url, leads(total, "aof"))] == [202] * total

    server.stop(signal.SIGKILL)  # a crash, not a clean shutdown: nothing is saved on the way out
    server.start()
    isolated.worker(REDIS_URL=server.url)
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == total,
        timeout=60,
        message="events accepted before the crash were lost",
    )
    assert_exactly_once(superuser_engine, total)


@pytest.mark.parametrize(
    ("point", "retry_status"),
    [("exit_before_enqueue", 202), ("exit_after_enqueue", 409)],
)
def test_receiver_dying_around_the_enqueue_loses_nothing_and_doubles_nothing(
    isolated: IsolatedStack, superuser_engine: Engine, point: str, retry_status: int
) -> None:
    doomed, doomed_url = isolated.receiver(TEST_FAULT_INJECTION=point)
    body = reply("crash.point@example.org")
    raw = encode(body)
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{doomed_url}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    doomed.popen.wait(timeout=30)
    assert doomed.popen.returncode == 70

    # Claim and push are one Redis script: dead before it, nothing is claimed; dead after it,
    # the event is queued. Either way the sender's retry is answered at once, correctly.
    _, url = isolated.receiver()
    retry = httpx.post(f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    assert retry.status_code == retry_status
    isolated.worker()
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == 1,
        timeout=60,
        message="the delivery was not processed",
    )
    assert_exactly_once(superuser_engine, 1)


def test_duplicate_storm_of_a_thousand_gives_one_202_and_one_set_of_rows(
    stack: str, superuser_engine: Engine
) -> None:
    responses = send_all(stack, [reply("storm@example.org")] * 1000, 100)
    statuses = [r.status_code for r in responses]
    assert statuses.count(202) == 1, [
        (r.status_code, r.text) for r in responses if r.status_code != 409
    ]
    assert statuses.count(409) == 999
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == 1,
        timeout=60,
        message="the accepted delivery was not processed",
    )
    assert_exactly_once(superuser_engine, 1)


def _blocked_workers(engine: Engine) -> int:
    return int(
        scalar(
            engine,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'worker'"
            " AND wait_event_type = 'Lock' AND datname = current_database()",
        )
    )


def test_same_envelope_queued_three_times_while_a_worker_is_mid_transaction(
    stack: str, superuser_engine: Engine, redis_client: redis.Redis
) -> None:
    envelope = reply_envelope(reply("mid.transaction@example.org"), "redelivered")
    message = queue.message.build(envelope)
    with superuser_engine.connect() as blocker:
        # The first copy's transaction stops at its activity insert, holding its event row.
        blocker.exec_driver_sql("LOCK TABLE activities IN ACCESS EXCLUSIVE MODE")
        redis_client.lpush(QUEUE_NAME, message)
        wait_for(lambda: _blocked_workers(superuser_engine) == 1, timeout=30, message="no block")
        redis_client.lpush(QUEUE_NAME, message, message)
        # The second worker now waits on the first one's uncommitted event row.
        wait_for(lambda: _blocked_workers(superuser_engine) == 2, timeout=30, message="no race")
        blocker.rollback()
    wait_for(
        lambda: redis_client.llen(QUEUE_NAME) == 0 and redis_client.hlen("unacked") == 0,
        timeout=30,
        message="the copies were not all consumed",
    )
    assert_exactly_once(superuser_engine, 1)
    assert scalar(superuser_engine, "SELECT attempts FROM webhook_events") == 1


def test_no_log_line_carries_a_payload_value_through_retries_dead_letter_and_replay(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    # Values only these deliveries carry; none may reach any log line or CLI output.
    secrets = [f"leak{i}.{os.getpid()}@leaky.example.com" for i in range(3)]
    texts = [f"Private reply text {i} {os.getpid()}" for i in range(3)]
    proxy = TcpProxy(free_port(), ("127.0.0.1", 5432))  # PostgreSQL refused until opened
    receiver, url = isolated.receiver()
    worker = isolated.worker(
        concurrency=2, PG_PORT=str(proxy.port), TASK_RETRY_BACKOFF_MAX="1", WORKER_BATCH_SIZE="5"
    )
    try:
        bodies = [
            reply(secrets[i], reply_text=texts[i], reply_text_snippet=texts[i], email_id=f"l{i}")
            for i in range(2)
        ]
        # No e-mail at all: dead-lettered once PostgreSQL answers, then replayed.
        bodies.append(reply(lead_email=None, email=None, reply_text=texts[2], firstName=secrets[2]))
        for body in bodies:
            raw = encode(body)
            response = httpx.post(
                f"{url}/webhooks/instantly", content=raw, headers=signed_headers(raw)
            )
            assert response.status_code == 202
        wait_for(
            lambda: worker.output().count("retrying in") >= 4,
            timeout=60,
            message="the worker did not retry while PostgreSQL refused",
        )
        proxy.open()
        wait_for(
            lambda: (
                scalar(superuser_engine, "SELECT count(*) FROM dead_letters") == 1
                and scalar(superuser_engine, "SELECT count(*) FROM deals") == 2
            ),
            timeout=60,
            message="the events were not processed and dead-lettered",
        )
        replayed = subprocess.run(
            [str(Path(sys.executable).with_name("crm-dlq")), "replay", "--all"],
            env=isolated.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr
        wait_for(
            lambda: scalar(superuser_engine, "SELECT attempts FROM dead_letters") >= 2,
            timeout=60,
            message="the replayed event was not dead-lettered again",
        )
    finally:
        proxy.close()
    logs = worker.output() + receiver.output() + replayed.stdout + replayed.stderr
    leaked = [value for value in [*secrets, *texts] if value.lower() in logs.lower()]
    assert leaked == [], leaked


def test_two_receivers_and_two_worker_nodes_every_event_once_through_a_node_kill(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    # Several machines at once: a load balancer's two receivers, workers on two hosts, one
    # Redis and one PostgreSQL; every event reaches both receivers, one node dies mid-burst.
    total = 2000
    fast_recovery = {"BROKER_VISIBILITY_TIMEOUT": "5", "TASK_RETRY_BACKOFF_MAX": "2"}
    urls = [isolated.receiver(**fast_recovery)[1] for _ in range(2)]
    doomed = isolated.worker(concurrency=1, **fast_recovery)
    survivor = isolated.worker(concurrency=1, **fast_recovery)
    bodies = leads(total, "twin")
    answers: dict[str, list[httpx.Response]] = {}

    def deliver(url: str) -> None:
        answers[url] = send_all(url, bodies, connections=25)

    senders = [threading.Thread(target=deliver, args=(url,)) for url in urls]
    for sender in senders:
        sender.start()
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) >= 300,
        timeout=60,
        message="the burst did not get going",
    )
    kill_tree(doomed)
    assert safe_count(superuser_engine, PROCESSED) < total, "the burst was over before the kill"
    for sender in senders:
        sender.join(timeout=120)

    pairs = list(zip(*(answers[url] for url in urls), strict=True))
    statuses = [sorted(answer.status_code for answer in pair) for pair in pairs]
    assert statuses == [[202, 409]] * total
    for first, second in pairs:  # the 409 names the event the 202 queued
        assert first.json()["event_id"] == second.json()["event_id"]
    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == total,
        timeout=180,
        message="not every accepted event was processed after the node died",
    )
    assert survivor.alive()
    assert_exactly_once(superuser_engine, total)


def test_a_poisonous_event_is_dead_lettered_as_worker_lost_and_spares_the_others(
    isolated: IsolatedStack, superuser_engine: Engine
) -> None:
    # Whichever pool process applies this lead's event dies (APP_ENV=test fault point), as an
    # OOM kill or a crash in a driver would. The default visibility timeout (an hour) stays.
    poison = "poison@poison.example.com"
    _, url = isolated.receiver()
    worker = isolated.worker(concurrency=2, TEST_POISON_LEAD=poison)
    bodies = [*leads(150, "before"), reply(poison), *leads(150, "after")]
    started = time.monotonic()
    answers = send_all(url, bodies)
    assert [answer.status_code for answer in answers] == [202] * len(bodies)
    poisoned = answers[150].json()["event_id"]

    wait_for(
        lambda: safe_count(superuser_engine, PROCESSED) == 300,
        timeout=120,
        message="the other events were not all processed within two minutes",
    )
    assert time.monotonic() - started < 120
    letter = wait_for(
        lambda: scalar(
            superuser_engine,
            "SELECT json_build_object('reason', reason, 'attempts', attempts)"
            " FROM dead_letters WHERE event_id = :id",
            id=poisoned,
        ),
        timeout=120,
        message="the poisonous event was not dead-lettered",
    )
    assert letter == {"reason": "worker_lost", "attempts": 3}
    deaths = re.findall(
        r"Worker exited prematurely: signal 9 \(SIGKILL\) Job: \d+", worker.output()
    )
    assert len(set(deaths)) == 3, deaths
    assert (
        scalar(superuser_engine, "SELECT status FROM webhook_events WHERE id = :id", id=poisoned)
        == "dead"
    )
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 300
    assert scalar(superuser_engine, "SELECT count(*) FROM activities") == 300

    assert worker.alive()
    later = send_all(url, leads(1, "later"))[0].json()["event_id"]
    wait_for(
        lambda: (
            scalar(superuser_engine, "SELECT status FROM webhook_events WHERE id = :id", id=later)
            == "processed"
        ),
        timeout=30,
        message="the worker stopped consuming",
    )
