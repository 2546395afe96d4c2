"""`crm-console-link`: a one-time sign-in link to the console, printed as the last line.

The link holds a token signed with JWT_SECRET, valid --ttl seconds and usable once; visiting
it starts a console session (CONSOLE_SESSION_HOURS) and takes the token out of the address bar.
`--revoke-all` ends every console session instead (rotating JWT_SECRET does too).
"""

from __future__ import annotations

import argparse
import sys

import redis

from common.redis_clients import connect
from common.settings import RedisTarget, SettingsError, get_settings
from common.tokens import CONSOLE_EPOCH_KEY, ROLES, issue_link_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-console-link",
        description="Print a one-time sign-in link to the console (the last line of output).",
    )
    parser.add_argument("--sub", help="who signs in, e.g. an e-mail")
    parser.add_argument("--role", choices=ROLES, help="reader: sees everything; admin: may act")
    parser.add_argument(
        "--revoke-all",
        action="store_true",
        help="end every console session now, instead of printing a link",
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
    if not args.revoke_all and not (args.sub and args.role):
        parser.error("--sub and --role are required (or --revoke-all)")
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"crm-console-link: {exc}", file=sys.stderr)
        return 2
    if args.revoke_all:
        return _revoke_all(settings.redis)
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


def _revoke_all(target: RedisTarget) -> int:
    client = connect(target, timeout=10)
    try:
        client.incr(CONSOLE_EPOCH_KEY)
    except redis.RedisError as exc:
        print(
            f"crm-console-link: Redis failed ({type(exc).__name__}); nothing revoked",
            file=sys.stderr,
        )
        return 1
    finally:
        client.close()
    print("every console session has ended; new sign-in links work as before")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
