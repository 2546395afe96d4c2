"""`make bench`: eight measurements in one run, each against a reference from the same run.

1 bare   2 floor (and the floor with its Redis calls pipelined, as ingest's are)   3 ingest (wrk,
distinct signed bodies), beside the naive peer (bench.naive)   4 drain (workers at concurrency 1
and 2 against a plain psycopg2 loop, the worker's own set-based statements on one connection,
and the naive peer's stock Celery task)   4b the batch size: drain and end to end at 20, 50, 100
and 200   5 end to end at half the drain capacity   6 peak memory   7 console pages   8 ingest
waiting for a replica's acknowledgement (REDIS_WAIT_REPLICAS=1) against the same without.
Writes bench/results.json and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, pool, text

from bench.console import measure_console
from bench.naive import NAIVE_QUEUE, NAIVE_TASK
from bench.reference import run_reference, run_setbased_reference
from bench.stack import (
    ROOT,
    Child,
    bench_env,
    envelope_for,
    sample_payload,
    start_naive_worker,
    start_receiver,
    start_redis,
    start_worker,
    wait_until,
)
from cli.ports import free_port
from common import queue
from common.redis_clients import connect
from common.settings import Settings, load_settings
from db.cli import bootstrap, migrate, superuser_url

RESULTS = ROOT / "bench" / "results.json"
SECRET = "bench-instantly-secret"  # noqa: S105 - a throwaway secret of the scratch stack


@dataclass(frozen=True)
class _Bench:
    """What every measurement works with: the options, the running receiver's address and
    bodies, the scratch stack's environment, settings and Redis client, the log directory."""

    args: argparse.Namespace
    url: str
    bodies: Path
    env: dict[str, str]
    settings: Settings
    client: redis.Redis
    log_dir: Path


def _signature(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def _write_bodies(path: Path, count: int) -> None:
    with path.open("w") as out:
        for index in range(count):
            body = json.dumps(sample_payload(index, "wrk"), separators=(",", ":"))
            out.write(f"sha256={_signature(body.encode())}\t{body}\n")


def _wrk(
    url: str, path: str, bodies: Path, seconds: float, connections: int, delay_ms: float = 0
) -> dict[str, Any]:
    env = os.environ | {
        "BENCH_PATH": path,
        "BENCH_BODIES": str(bodies),
        "BENCH_DELAY_MS": str(delay_ms),
    }
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--latency",
        "-s", str(ROOT / "bench" / "post.lua"), url,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    seconds_run = summary["duration_us"] / 1e6
    summary["rps"] = round(summary["requests"] / seconds_run, 1)
    summary["p50_ms"] = round(summary["p50_us"] / 1000, 3)
    summary["p99_ms"] = round(summary["p99_us"] / 1000, 3)
    return summary


def _reset(settings: Settings, client: redis.Redis) -> None:
    client.flushdb()
    tables = "activities, deals, contacts, companies, webhook_events, dead_letters"
    with _engine(settings).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))


_ENGINES: dict[str, Engine] = {}


def _engine(settings: Settings) -> Engine:
    """One kept connection to the scratch database: a connection per poll would fork a
    PostgreSQL backend many times a second, CPU taken from the workers being measured on the
    same two cores."""
    engine = _ENGINES.get(settings.pg_database)
    if engine is None:
        url = superuser_url(settings, database=settings.pg_database)
        engine = _ENGINES[settings.pg_database] = create_engine(url, pool_size=1, max_overflow=0)
    return engine


def _scalar(settings: Settings, sql: str) -> Any:
    with _engine(settings).connect() as conn:
        return conn.execute(text(sql)).scalar()


def _close_engines() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def measure_ingest(bench: _Bench) -> dict[str, Any]:
    args, url, bodies, client = bench.args, bench.url, bench.bodies, bench.client
    routes = {
        "bare": "/bench/bare",
        "floor": "/bench/floor",
        "floor_pipelined": "/bench/floor-pipelined",
        "ingest": "/webhooks/instantly",
        "naive": "/bench/naive",
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in routes}
    for path in routes.values():  # warm-up: imports, pools, script cache
        _wrk(url, path, bodies, 1, args.connections)
        client.flushdb()
    for _ in range(args.rounds):  # interleaved, so drift hits all four alike
        for name, path in routes.items():
            result = _wrk(url, path, bodies, args.seconds, args.connections)
            # Only a repeated body for floor or ingest would be a repeated event (a 409 instead
            # of work); bare reads bodies it never looks at, and may outrun the file.
            wrapped = result["wrapped"] and name != "bare"
            if result["non_2xx"] or wrapped or result["socket_errors"]:
                raise RuntimeError(f"bench: {name} run was not clean: {result}")
            runs[name].append(result)
            client.flushdb()
    best = {name: max(results, key=lambda r: r["rps"]) for name, results in runs.items()}
    return {
        **best,
        "all_rps": {name: [r["rps"] for r in results] for name, results in runs.items()},
        "ingest_over_floor": round(best["ingest"]["rps"] / best["floor"]["rps"], 3),
        "ingest_over_floor_pipelined": round(
            best["ingest"]["rps"] / best["floor_pipelined"]["rps"], 3
        ),
        "ingest_over_bare": round(best["ingest"]["rps"] / best["bare"]["rps"], 3),
        "ingest_over_naive": round(best["ingest"]["rps"] / best["naive"]["rps"], 3),
    }


def measure_replica_wait(bench: _Bench) -> dict[str, Any]:
    """Part 8: what REDIS_WAIT_REPLICAS=1 costs ingest. A master and a replica of the bench's
    own, two receivers on that master, one waiting for the replica's acknowledgement and one
    not; wrk on each in interleaved rounds, best of each."""
    args, log_dir = bench.args, bench.log_dir
    master_port, replica_port = free_port(), free_port()
    children = [start_redis("redis-master", master_port, log_dir)]
    try:
        replica_of = ("--replicaof", "127.0.0.1", str(master_port))
        children.append(start_redis("redis-replica", replica_port, log_dir, *replica_of))
        master = redis.Redis(port=master_port)
        replica = redis.Redis(port=replica_port)
        wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up",
            60,
            "the replica to sync",
            interval=0.2,
        )
        urls = {}
        for name, replicas in (("no_wait", "0"), ("wait", "1")):
            port = free_port()
            env = bench.env | {
                "REDIS_URL": f"redis://127.0.0.1:{master_port}/0",
                "REDIS_WAIT_REPLICAS": replicas,
            }
            children.append(start_receiver(env, port, log_dir, f"receiver-{name}"))
            urls[name] = f"http://127.0.0.1:{port}"
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        for url in urls.values():  # warm-up
            _wrk(url, "/webhooks/instantly", bench.bodies, 1, args.connections)
            master.flushdb()
        for _ in range(args.rounds):
            for name, url in urls.items():
                result = _wrk(
                    url, "/webhooks/instantly", bench.bodies, args.seconds, args.connections
                )
                if result["non_2xx"] or result["wrapped"] or result["socket_errors"]:
                    raise RuntimeError(f"bench: {name} run was not clean: {result}")
                runs[name].append(result)
                master.flushdb()
        master.close()
        replica.close()
    finally:
        for child in reversed(children):
            child.stop()
    best = {name: max(results, key=lambda r: r["rps"]) for name, results in runs.items()}
    return {
        **best,
        "all_rps": {name: [r["rps"] for r in results] for name, results in runs.items()},
        "wait_over_no_wait": round(best["wait"]["rps"] / best["no_wait"]["rps"], 3),
    }


def _ingest_ratios(ingest: dict[str, Any]) -> dict[str, float]:
    return {key: value for key, value in ingest.items() if key.startswith("ingest_over")}


def _queue_events(settings: Settings, client: redis.Redis, count: int, tag: str) -> None:
    """Queued as a replay queues them: the message and its in-flight record."""
    for index in range(count):
        envelope = envelope_for(sample_payload(index, tag), f"bench:{tag}:{index}")
        queue.enqueue(client, envelope, grace_seconds=settings.broker_visibility_timeout)


def _drain_rate(settings: Settings, count: int) -> float:
    first, last = _scalar(
        settings,
        "SELECT json_build_array(extract(epoch FROM min(processed_at)),"
        " extract(epoch FROM max(processed_at))) FROM webhook_events WHERE status = 'processed'",
    )
    return float((count - 1) / (last - first))


def _queue_naive_events(settings: Settings, count: int, tag: str) -> None:
    """Queued as the peer's receiver queues them: Celery's send_task, one message per event."""
    sender = Celery("bench-naive-sender", broker=settings.redis_url, set_as_current=False)
    with sender.producer_or_acquire() as producer:
        for index in range(count):
            envelope = envelope_for(sample_payload(index, tag), f"bench:{tag}:{index}")
            sender.send_task(
                NAIVE_TASK, args=[envelope.to_dict()], queue=NAIVE_QUEUE, producer=producer
            )


def _drain_with_worker(
    bench: _Bench, concurrency: int, tag: str, naive: bool = False
) -> tuple[float, list[float]]:
    """Events committed per second by a worker draining a full queue, and its peak memory."""
    args, settings, client = bench.args, bench.settings, bench.client
    _reset(settings, client)
    if naive:
        _queue_naive_events(settings, args.drain_events, tag)
        worker = start_naive_worker(bench.env, concurrency, bench.log_dir)
    else:
        _queue_events(settings, client, args.drain_events, tag)
        worker = start_worker(bench.env, concurrency, bench.log_dir)
    try:
        wait_until(
            lambda: _count(settings, "processed") == args.drain_events,
            600,
            f"{args.drain_events} events at concurrency {concurrency}",
            interval=0.25,  # the rate comes from processed_at; polling only costs the workers
        )
        peaks = worker.peak_rss_mb()
    finally:
        worker.stop()
    duplicates = _scalar(settings, "SELECT count(*) - count(DISTINCT contact_id) FROM deals")
    activities = _scalar(settings, "SELECT count(*) FROM activities")
    if duplicates or activities != args.drain_events:
        raise RuntimeError(f"bench: effects not exactly once at concurrency {concurrency}")
    return _drain_rate(settings, args.drain_events), peaks


def measure_drain(bench: _Bench) -> dict[str, Any]:
    """Interleaved rounds of the psycopg2 loop and workers at concurrency 1 and 2; the best of
    each, as for ingest, so a stall of the shared machine in one run does not decide."""
    args, settings = bench.args, bench.settings
    dsn = settings.pg_url().replace("postgresql+psycopg2://", "postgresql://")
    runs: dict[str, list[float]] = {
        "reference": [],
        "setbased": [],
        "concurrency_1": [],
        "concurrency_2": [],
        "naive_concurrency_2": [],
    }
    memory: dict[int, list[float]] = {}
    for round_index in range(args.drain_rounds):
        _reset(settings, bench.client)
        envelopes = [
            envelope_for(sample_payload(i, f"ref{round_index}"), f"bench:ref{round_index}:{i}")
            for i in range(args.drain_events)
        ]
        runs["reference"].append(round(run_reference(dsn, envelopes), 1))
        _reset(settings, bench.client)
        envelopes = [
            envelope_for(sample_payload(i, f"set{round_index}"), f"bench:set{round_index}:{i}")
            for i in range(args.drain_events)
        ]
        rate = run_setbased_reference(dsn, envelopes, settings.worker_batch_size)
        runs["setbased"].append(round(rate, 1))
        for concurrency in (1, 2):
            rate, peaks = _drain_with_worker(bench, concurrency, f"c{concurrency}r{round_index}")
            runs[f"concurrency_{concurrency}"].append(round(rate, 1))
            memory[concurrency] = max(memory.get(concurrency, peaks), peaks)  # the larger run
        rate, _ = _drain_with_worker(bench, 2, f"naive{round_index}", naive=True)
        runs["naive_concurrency_2"].append(round(rate, 1))
    best = {name: max(rates) for name, rates in runs.items()}
    return {
        "events": args.drain_events,
        "reference_eps": best["reference"],
        "setbased_eps": best["setbased"],
        "setbased_batch": settings.worker_batch_size,
        "concurrency_1_eps": best["concurrency_1"],
        "concurrency_2_eps": best["concurrency_2"],
        "naive_concurrency_2_eps": best["naive_concurrency_2"],
        "all_eps": runs,
        "c1_over_reference": round(best["concurrency_1"] / best["reference"], 3),
        "c2_over_reference": round(best["concurrency_2"] / best["reference"], 3),
        "c2_over_naive": round(best["concurrency_2"] / best["naive_concurrency_2"], 3),
        "c2_over_setbased": round(best["concurrency_2"] / best["setbased"], 3),
        "naive_over_reference": round(best["naive_concurrency_2"] / best["reference"], 3),
        "memory_worker_c1_mb": memory[1],
        "memory_worker_c2_mb": memory[2],
    }


_E2E_CONNECTIONS = 10


def _end_to_end_round(bench: _Bench, delay_ms: float, seconds: float) -> dict[str, Any]:
    settings, client, url = bench.settings, bench.client, bench.url
    _reset(settings, client)
    worker = start_worker(bench.env, 2, bench.log_dir)
    try:
        # One event through first, so the worker's start-up is not counted as latency.
        warm = json.dumps(sample_payload(0, "warm")).encode()
        headers = {"Content-Type": "application/json", "X-Instantly-Signature": _signature(warm)}
        httpx.post(f"{url}/webhooks/instantly", content=warm, headers=headers).raise_for_status()
        wait_until(lambda: _count(settings, "processed") == 1, 60, "the warm-up event")
        path, connections = "/webhooks/instantly", _E2E_CONNECTIONS
        run = _wrk(url, path, bench.bodies, seconds, connections, delay_ms)
        sent = run["requests"]
        # wrk does not count requests still in flight when its time is up, but they were
        # accepted: done when no event is held any more (the in-flight record is empty).
        wait_until(
            lambda: _count(settings, "processed") > sent and queue.in_flight(client).count == 0,
            120,
            "end-to-end events",
        )
        peaks = worker.peak_rss_mb()
    finally:
        worker.stop()
    return {
        "achieved_rate": round(sent / (run["duration_us"] / 1e6), 1),
        "events": sent,
        "p50_ms": round(_scalar(settings, _LATENCY.format(fraction=0.5)), 2),
        "p99_ms": round(_scalar(settings, _LATENCY.format(fraction=0.99)), 2),
        "memory_worker_c2_mb": peaks,
    }


def measure_batch_sizes(bench: _Bench, sizes: list[int]) -> dict[str, Any]:
    """For each WORKER_BATCH_SIZE: the drain at concurrency 2 from a backlog, and end to end at
    half of that (one round each: the default's own figures are parts 4 and 5)."""
    measured: dict[str, Any] = {}
    for size in sizes:
        sized = replace(bench, env=bench.env | {"WORKER_BATCH_SIZE": str(size)})
        rate, _ = _drain_with_worker(sized, 2, f"size{size}")
        e2e = measure_end_to_end(sized, rate, rounds=1)
        measured[str(size)] = {
            "drain_c2_eps": round(rate, 1),
            "end_to_end_p99_ms": e2e["p99_ms"],
            "end_to_end_rate": e2e["achieved_rate"],
        }
    return measured


def measure_end_to_end(bench: _Bench, capacity: float, rounds: int = 0) -> dict[str, Any]:
    """POST to committed rows at half the measured drain capacity (a fixed rate from wrk), in
    rounds; the round with the median p99 is reported, all rounds are kept.

    wrk waits the delay after each response, so a connection's period is the delay plus the
    time its request took: asked for the bare period, wrk ran ~9 % slow. Two short rounds
    first measure the difference (it grows a little with the rate, hence two), and the rounds
    that count wait that much less."""
    rate = capacity / 2
    period_ms = _E2E_CONNECTIONS * 1000 / rate
    delay_ms = period_ms
    calibration_rates = []
    for _ in range(2):
        achieved = _end_to_end_round(bench, delay_ms, bench.args.seconds)["achieved_rate"]
        calibration_rates.append(achieved)
        overhead_ms = _E2E_CONNECTIONS * 1000 / achieved - delay_ms
        delay_ms = round(max(1.0, period_ms - overhead_ms), 2)
    seconds = bench.args.seconds * 2
    measured = [
        _end_to_end_round(bench, delay_ms, seconds) for _ in range(rounds or bench.args.e2e_rounds)
    ]
    median = sorted(measured, key=lambda r: r["p99_ms"])[len(measured) // 2]
    return {
        "target_rate": round(rate, 1),
        "delay_ms": delay_ms,
        "calibration_rates": calibration_rates,
        **median,
        "all_p99_ms": [r["p99_ms"] for r in measured],
        "all_rates": [r["achieved_rate"] for r in measured],
    }


# Receipt (stamped by the receiver) to commit (clock_timestamp() in the worker's transaction).
_LATENCY = (
    "SELECT percentile_cont({fraction}) WITHIN GROUP"
    " (ORDER BY extract(epoch FROM processed_at - received_at) * 1000)"
    " FROM webhook_events WHERE payload->>'email_id' NOT LIKE 'warm-%'"
)


def _count(settings: Settings, status: str) -> int:
    sql = "SELECT count(*) FROM webhook_events WHERE status = '{}'".format  # fixed statuses only
    return int(_scalar(settings, sql(status)))


def _machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release()}


def _versions(settings: Settings, client: redis.Redis) -> dict[str, str]:
    packages = ("starlette", "uvicorn", "celery", "kombu", "redis", "sqlalchemy", "psycopg2-binary")
    versions = {name: importlib.metadata.version(name) for name in packages}
    versions["python"] = platform.python_version()
    versions["postgresql"] = str(_scalar(settings, "SHOW server_version"))
    versions["redis-server"] = str(client.info("server")["redis_version"])
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    versions["wrk"] = (wrk.stdout or wrk.stderr).split()[1]
    return versions


def _table(results: dict[str, Any]) -> str:
    ingest, drain, e2e = results["ingest"], results["drain"], results["end_to_end"]
    rows = [
        (
            "1 bare",
            f"{ingest['bare']['rps']:,.0f} req/s",
            f"p50 {ingest['bare']['p50_ms']} ms, p99 {ingest['bare']['p99_ms']} ms",
        ),
        (
            "2 floor",
            f"{ingest['floor']['rps']:,.0f} req/s",
            f"p50 {ingest['floor']['p50_ms']} ms, p99 {ingest['floor']['p99_ms']} ms",
        ),
        (
            "2 floor, piped",
            f"{ingest['floor_pipelined']['rps']:,.0f} req/s",
            f"p50 {ingest['floor_pipelined']['p50_ms']} ms, "
            f"p99 {ingest['floor_pipelined']['p99_ms']} ms; its EVALSHAs pipelined as ingest's",
        ),
        (
            "3 ingest",
            f"{ingest['ingest']['rps']:,.0f} req/s",
            f"p50 {ingest['ingest']['p50_ms']} ms, p99 {ingest['ingest']['p99_ms']} ms; "
            f"ingest/floor {ingest['ingest_over_floor']}, "
            f"ingest/floor piped {ingest['ingest_over_floor_pipelined']}, "
            f"ingest/bare {ingest['ingest_over_bare']}",
        ),
        (
            "3 naive",
            f"{ingest['naive']['rps']:,.0f} req/s",
            f"SET NX + send_task per delivery; ingest/naive {ingest['ingest_over_naive']}",
        ),
        (
            "4 drain ref",
            f"{drain['reference_eps']:,.0f} ev/s",
            "psycopg2 loop, one transaction per event",
        ),
        (
            "4 drain set",
            f"{drain['setbased_eps']:,.0f} ev/s",
            f"the worker's set-based statements, one connection, batches of "
            f"{drain['setbased_batch']}",
        ),
        (
            "4 drain c=1",
            f"{drain['concurrency_1_eps']:,.0f} ev/s",
            f"{drain['c1_over_reference']} x reference",
        ),
        (
            "4 drain c=2",
            f"{drain['concurrency_2_eps']:,.0f} ev/s",
            f"{drain['c2_over_reference']} x reference, {drain['c2_over_naive']} x naive, "
            f"{drain['c2_over_setbased']} x set-based",
        ),
        *(
            (
                f"4b batch {size}",
                f"{each['drain_c2_eps']:,.0f} ev/s",
                f"c=2; end to end at half that: p99 {each['end_to_end_p99_ms']} ms",
            )
            for size, each in results.get("batch_sizes", {}).items()
        ),
        (
            "4 drain naive",
            f"{drain['naive_concurrency_2_eps']:,.0f} ev/s",
            f"stock Celery task, one event each, c=2: {drain['naive_over_reference']} x reference",
        ),
        (
            "5 end to end",
            f"{e2e['achieved_rate']:,.0f} ev/s",
            f"{e2e['target_rate']:,.0f} asked (half of c=2); POST to commit p50 {e2e['p50_ms']} "
            f"ms, p99 {e2e['p99_ms']} ms (median round; p99 of each {e2e['all_p99_ms']})",
        ),
        (
            "7 console",
            f"{results['console']['worst_p99_ms']} ms",
            f"worst page p99 of {len(results['console']['pages'])} pages, "
            f"{results['console']['events']:,} events and "
            f"{results['console']['dead_letters']:,} dead letters",
        ),
        (
            "8 ingest, WAIT",
            f"{results['replica_wait']['wait']['rps']:,.0f} req/s",
            f"REDIS_WAIT_REPLICAS=1, p99 {results['replica_wait']['wait']['p99_ms']} ms; "
            f"{results['replica_wait']['wait_over_no_wait']} x the same without WAIT "
            f"({results['replica_wait']['no_wait']['rps']:,.0f} req/s), one local replica",
        ),
        (
            "6 memory",
            f"{results['memory']['receiver_peak_rss_mb']} MB",
            f"receiver; workers c=2 (main, children) {results['memory']['worker_c2_mb']} MB",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a.ljust(width)}  {b.rjust(14)}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--drain-events", type=int, default=10_000, help="events per drain run")
    parser.add_argument("--drain-rounds", type=int, default=2, help="interleaved drain rounds")
    parser.add_argument("--e2e-rounds", type=int, default=3, help="end-to-end rounds (median)")
    parser.add_argument(
        "--batch-sizes",
        default="20,50,100,200",
        help="WORKER_BATCH_SIZE values part 4b measures (default 20,50,100,200; '' skips it)",
    )
    parser.add_argument("--redis-db", type=int, default=15, help="scratch Redis DB (flushed)")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument(
        "--console-only",
        action="store_true",
        help="part 7 (console pages) only, printed as JSON; bench/results.json is left as it is",
    )
    parser.add_argument(
        "--ingest-only",
        action="store_true",
        help="parts 1-3 only, printed as JSON; bench/results.json is left as it is",
    )
    parser.add_argument(
        "--replica-only",
        action="store_true",
        help="part 8 (REDIS_WAIT_REPLICAS) only, printed as JSON; bench/results.json is left",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "bench: wrk is not installed (make bench installs it: apt-get install wrk)",
            file=sys.stderr,
        )
        return 2

    database = f"crm_bench_{uuid.uuid4().hex[:8]}"
    env = bench_env(database, args.redis_db)
    settings = load_settings(env)
    client = connect(settings.redis, timeout=30)
    log_dir = ROOT / "bench" / "out"
    log_dir.mkdir(exist_ok=True)
    bodies = log_dir / "bodies.tsv"
    url = f"http://127.0.0.1:{args.port}"
    receiver: Child | None = None
    bootstrap(settings, echo=lambda _: None, create_database=True)
    try:
        migrate(settings)
        # Enough distinct bodies for floor and ingest at 30,000 req/s (seen here: ~11,000).
        _write_bodies(Path(f"{bodies}.1"), int(args.seconds * 30_000))
        receiver = start_receiver(env, args.port, log_dir)
        results: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": _machine(),
            "versions": _versions(settings, client),
            "settings": {
                "receiver": "uvicorn, 1 process, uvloop + httptools",
                "wrk": f"1 thread, {args.connections} connections, "
                f"{args.seconds}s x {args.rounds} rounds",
                "drain_events": args.drain_events,
                "drain_rounds": args.drain_rounds,
                "end_to_end_rounds": args.e2e_rounds,
                "end_to_end_wrk": f"1 thread, {_E2E_CONNECTIONS} connections at a fixed rate "
                f"(a delay after each response, set by two {args.seconds}s calibration rounds), "
                f"{args.seconds * 2}s rounds",
                "worker": "celery prefork, acks_late, prefetch 1, "
                f"batches of up to {settings.worker_batch_size} events",
            },
        }
        if args.console_only:
            print(json.dumps(measure_console(url, settings), indent=2))
            return 0
        bench = _Bench(args, url, bodies, env, settings, client, log_dir)
        if args.replica_only:
            print(json.dumps(measure_replica_wait(bench), indent=2))
            return 0
        print("bench: 1-3 bare / floor / floor pipelined / ingest ...", file=sys.stderr)
        results["ingest"] = measure_ingest(bench)
        if args.ingest_only:
            print(json.dumps(results["ingest"]["all_rps"] | _ingest_ratios(results["ingest"])))
            return 0
        print("bench: 4 drain ...", file=sys.stderr)
        results["drain"] = measure_drain(bench)
        sizes = [int(size) for size in args.batch_sizes.split(",") if size.strip()]
        if sizes:
            print("bench: 4b batch sizes ...", file=sys.stderr)
            results["batch_sizes"] = measure_batch_sizes(bench, sizes)
        print("bench: 5 end to end ...", file=sys.stderr)
        capacity = results["drain"]["concurrency_2_eps"]
        results["end_to_end"] = measure_end_to_end(bench, capacity)
        results["memory"] = {
            "receiver_peak_rss_mb": receiver.peak_rss_mb()[0],
            "worker_c1_mb": results["drain"].pop("memory_worker_c1_mb"),
            "worker_c2_mb": results["drain"].pop("memory_worker_c2_mb"),
        }
        print("bench: 7 console pages ...", file=sys.stderr)
        results["console"] = measure_console(url, settings)
        print("bench: 8 ingest waiting for a replica ...", file=sys.stderr)
        results["replica_wait"] = measure_replica_wait(bench)
        results["wait_over_no_wait"] = results["replica_wait"]["wait_over_no_wait"]
        results["ingest_over_floor"] = results["ingest"]["ingest_over_floor"]
        results["ingest_over_floor_pipelined"] = results["ingest"]["ingest_over_floor_pipelined"]
        results["drain_over_reference"] = results["drain"]["c2_over_reference"]
        results["ingest_over_naive"] = results["ingest"]["ingest_over_naive"]
        results["drain_over_naive"] = results["drain"]["c2_over_naive"]
        results["drain_over_setbased"] = results["drain"]["c2_over_setbased"]
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(_table(results))
        print(f"\nwritten to {RESULTS.relative_to(ROOT)}")
    finally:
        if receiver is not None:
            receiver.stop()
        client.flushdb()
        client.close()
        _drop(settings)
        for path in log_dir.glob("bodies.tsv*"):
            path.unlink()
    return 0


def _drop(settings: Settings) -> None:
    _close_engines()
    engine = create_engine(
        superuser_url(settings), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{settings.pg_database}" WITH (FORCE)'))
    engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
