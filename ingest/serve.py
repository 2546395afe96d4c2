"""`crm-ingest`: the receiver's process. uvicorn, with the request-head limits of
ingest.protocol, uvloop, and no access log (deliveries are counted in /metrics instead)."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from common.settings import SettingsError, get_settings
from ingest.protocol import HeadLimitedProtocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-ingest",
        description="Run the webhook receiver. Settings come from the environment "
        "(see .env.example); the head limits are MAX_HEADER_BYTES and HEADER_TIMEOUT_SECONDS.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default INGEST_PORT, 8000)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=5,
        help="seconds an idle keep-alive connection stays open (default 5)",
    )
    parser.add_argument(
        "--app", default="ingest.app:create_app", help="application factory (default: the receiver)"
    )
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"crm-ingest: refusing to start: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        args.app,
        factory=True,
        host=args.host,
        port=args.port or settings.ingest_port,
        workers=args.workers,
        http=HeadLimitedProtocol,
        loop="uvloop",
        log_level=settings.log_level,
        access_log=False,
        # The peer's own address, not one an X-Forwarded-For header claims: refusals are
        # logged with it (and the claim, labelled as such).
        proxy_headers=False,
        timeout_keep_alive=args.timeout_keep_alive,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
