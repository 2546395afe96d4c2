"""`crm-worker-health`: exit 0 when this host's Celery worker answers a ping, 1 otherwise.
Meant for a container healthcheck: it asks the running worker, through the broker, instead
of only checking that a process exists."""

from __future__ import annotations

import argparse
import socket
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-worker-health",
        description="Ping the Celery worker on this host through the broker; exit 0 if it answers.",
    )
    parser.add_argument(
        "--name", default=f"celery@{socket.gethostname()}", help="worker node name to ping"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    args = parser.parse_args(argv)

    from worker.app import app  # imported late: --help works without a configured broker

    try:
        replies = app.control.ping(destination=[args.name], timeout=args.timeout)
    except Exception as exc:  # any broker failure means "not healthy"
        print(f"crm-worker-health: broker unreachable ({type(exc).__name__})", file=sys.stderr)
        return 1
    if not any(args.name in reply for reply in replies or []):
        print(f"crm-worker-health: {args.name} did not answer", file=sys.stderr)
        return 1
    print(f"crm-worker-health: {args.name} ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
