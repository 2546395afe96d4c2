"""`crm-console-link`: a one-time sign-in link to the console, printed as the last line.

The link holds a token signed with JWT_SECRET, valid --ttl seconds and usable once; visiting
it starts a console session (CONSOLE_SESSION_HOURS) and takes the token out of the address bar.
"""

from __future__ import annotations

import argparse
import sys

from common.settings import SettingsError, get_settings
from common.tokens import ROLES, issue_link_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-console-link",
        description="Print a one-time sign-in link to the console (the last line of output).",
    )
    parser.add_argument("--sub", required=True, help="who signs in, e.g. an e-mail")
    parser.add_argument(
        "--role", required=True, choices=ROLES, help="reader: sees everything; admin: may act"
    )
    parser.add_argument(
        "--url",
        help="the receiver's address as the browser reaches it "
        "(default: http://127.0.0.1:INGEST_PORT)",
    )
    parser.add_argument(
        "--ttl", type=int, default=600, help="seconds the link stays valid (default 600)"
    )
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"crm-console-link: {exc}", file=sys.stderr)
        return 2
    base = (args.url or f"http://127.0.0.1:{settings.ingest_port}").rstrip("/")
    token = issue_link_token(
        settings.jwt_secret.get(), sub=args.sub, role=args.role, ttl_seconds=args.ttl
    )
    print(
        f"Sign-in link for {args.sub} ({args.role}), valid {args.ttl} s, usable once:",
        file=sys.stderr,
    )
    print(f"{base}/console/sign-in?token={token}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
