"""`crm-status`: is the pipeline keeping up? Queue depth, age of the oldest queued event,
events in flight and overdue, open dead letters by reason, events finished in the last five
minutes, events parked in Redis, the workers that answer a ping, and each dependency's state.

Exit 0 when all is well; 1 when no worker answers, the oldest queued event is older than
--max-age, an event is parked, or Redis or PostgreSQL is down — so it can serve as a cron
check; 2 on bad usage."""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import overview
from common.settings import Settings, SettingsError, load_settings
from db.engine import make_engine


def problems(snapshot: overview.Overview, max_age: float) -> list[str]:
    """What is not well, in words; empty when all is."""
    found = [f"{name}: {state}" for name, state in snapshot.dependencies.items() if state != "ok"]
    if snapshot.workers is not None and not snapshot.workers:
        found.append("no worker answered a ping")
    if snapshot.parked:
        found.append(f"{snapshot.parked} event(s) parked in Redis: run crm-dlq rescue")
    oldest = snapshot.oldest_queued_seconds
    if oldest is not None and oldest > max_age:
        found.append(f"the oldest queued event waits {oldest:.0f} s (over --max-age {max_age:g})")
    return found


def render(snapshot: overview.Overview, found: list[str]) -> str:
    def shown(value: object) -> str:
        return "unknown" if value is None else str(value)

    letters = snapshot.dead_letters_open
    lines = [
        f"queue            {shown(snapshot.queue_depth)} waiting, oldest "
        f"{shown(snapshot.oldest_queued_seconds)} s",
        f"in flight        {shown(snapshot.in_flight)} ({shown(snapshot.overdue)} overdue)",
        "dead letters     "
        + (
            "unknown"
            if letters is None
            else ", ".join(f"{reason} {count}" for reason, count in letters.items()) or "none open"
        ),
        f"parked           {shown(snapshot.parked)}",
        f"finished (5 min) {shown(snapshot.processed_last_5m)}",
        f"workers          {', '.join(snapshot.workers or []) or 'none answered'}",
        "dependencies     "
        + ", ".join(f"{name} {state}" for name, state in snapshot.dependencies.items()),
        f"status           {'ok' if not found else 'NOT OK: ' + '; '.join(found)}",
    ]
    return "\n".join(lines)


def _once(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.pg_url(), pool_size=1, application_name="crm-status")
    try:
        snapshot = overview.take(
            settings.redis,
            settings.broker,
            engine,
            workers=lambda: overview.ping_workers(settings.broker, args.ping_timeout),
        )
    finally:
        engine.dispose()
    found = problems(snapshot, args.max_age)
    if args.json:
        print(json.dumps(snapshot.to_dict() | {"ok": not found, "problems": found}), flush=True)
    else:
        print(render(snapshot, found), flush=True)
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-status",
        description="Queue, in-flight events, dead letters, workers and dependencies at a "
        "glance. Exit 0 when all is well, 1 when not (no worker, the oldest queued event "
        "older than --max-age, an event parked, Redis or PostgreSQL down), 2 on bad usage.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per check")
    parser.add_argument(
        "--watch", type=float, metavar="SECONDS", help="check again every SECONDS until Ctrl-C"
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=300,
        help="seconds the oldest queued event may wait before it counts as a problem (300)",
    )
    parser.add_argument(
        "--ping-timeout", type=float, default=1.0, help="seconds to wait for workers (default 1)"
    )
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch must be a positive number of seconds")
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"crm-status: {exc}", file=sys.stderr)
        return 2
    if args.watch is None:
        return _once(settings, args)
    try:
        while True:
            code = _once(settings, args)
            if not args.json:
                print(flush=True)
            time.sleep(args.watch)  # an operator's refresh interval, not a wait for a condition
    except KeyboardInterrupt:
        return code


if __name__ == "__main__":
    raise SystemExit(main())
