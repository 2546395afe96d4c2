"""`crm-smoke`: the post-deploy regression check (the prototype's "200/409 test").

Posts a synthetic event of one sender (`--provider`, the first sender's reply by default), with its
credentials and a fresh idempotency key (expects 202), posts it again (expects 409 naming the
same event, or 200 where DUPLICATE_STATUS_<SENDER>=200), then polls
`GET /events/{id}` until the worker has processed it. One line per step; exit 0 when every
step passed, 1 otherwise, 2 on bad usage.
The worker applies it whole, then rolls its CRM rows back: no contact, deal or activity is
left, only the event row, whose result says it was a smoke test.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

import httpx

from common.senders import PRIMARY, SENDERS, SMOKE_KEY_PREFIX, SMOKE_LEAD_DOMAIN
from common.senders.kit import Sender
from common.settings import SettingsError, get_settings
from common.tokens import issue_token

TERMINAL_FAILURES = ("dead", "ignored")


def _post(
    client: httpx.Client, sender: Sender, event: dict[str, Any], secret: str, key: str
) -> httpx.Response:
    body, headers = sender.deliver(event, secret, int(time.time()))
    return client.post(
        f"/webhooks/{sender.name}", content=body, headers=headers | {"Idempotency-Key": key}
    )


def _duplicate_status(client: httpx.Client, sender: Sender) -> int:
    """What the service answers a repeat with (DUPLICATE_STATUS_<SENDER>): 409 unless it says."""
    response = client.get("/healthz/details")
    if response.status_code != 200:
        return 409  # an older service, without the setting
    return int(response.json().get("duplicate_status", {}).get(sender.name, 409))


def run(
    url: str,
    secret: str,
    token: str,
    timeout: float,
    duplicate_status: int | None = None,
    sender: Sender = PRIMARY,
) -> bool:
    run_id = uuid.uuid4().hex
    event = sender.smoke_event(run_id, f"smoke+{run_id}@{SMOKE_LEAD_DOMAIN}")
    key = f"{SMOKE_KEY_PREFIX}{run_id}"

    def step(ok: bool, line: str) -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {line}", flush=True)
        return ok

    with httpx.Client(base_url=url.rstrip("/"), timeout=10) as client:
        first = _post(client, sender, event, secret, key)
        if first.status_code == 401:
            setting = sender.secret_setting
            return step(
                False,
                f"first delivery: 401 (want 202): --secret (or {setting} here) must be one of "
                f"the service's {setting} values; its log line for this refusal says which "
                "check failed",
            )
        if not step(first.status_code == 202, f"first delivery: {first.status_code} (want 202)"):
            return False
        event_id = first.json()["event_id"]
        want = duplicate_status or _duplicate_status(client, sender)
        again = _post(client, sender, event, secret, key)
        same = again.status_code == want and again.json().get("event_id") == event_id
        line = f"repeat delivery: {again.status_code} (want {want}, event {event_id})"
        if not step(same, line):
            return False
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = client.get(
                f"/events/{event_id}", headers={"Authorization": f"Bearer {token}"}
            )
            if response.status_code in (401, 403):
                return step(False, f"event status: {response.status_code} — check --token")
            status = response.json() if response.status_code == 200 else {}
            if status.get("status") == "processed" or status.get("status") in TERMINAL_FAILURES:
                break
            time.sleep(0.25)  # polling a remote service; the deadline above bounds the loop
        result = status.get("result") or {}
        if status.get("status") != "processed":
            detail = status.get("error") or status.get("status") or "no answer"
            return step(False, f"processing: {detail} after {timeout:g}s (want processed)")
        return step(
            True,
            f"processed: deal {result.get('deal_id')}, activity "
            f"{result.get('activity_id')} (rolled back: nothing kept in the CRM)",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crm-smoke",
        description="Post-deploy check: a synthetic event with the sender's credentials must "
        "get 202, its repeat 409 (or 200, as the service is configured), and the event must be "
        "processed. Exit 0 when all three hold, 1 otherwise.",
    )
    parser.add_argument("--url", required=True, help="the receiver, e.g. https://crm.example.com")
    parser.add_argument(
        "--provider",
        choices=sorted(SENDERS),
        default=PRIMARY.name,
        help=f"the sender whose event to post (default: {PRIMARY.name})",
    )
    parser.add_argument(
        "--secret", help="the sender's secret (default: the first of its setting's values)"
    )
    parser.add_argument("--token", help="a reader token (default: one signed with JWT_SECRET)")
    parser.add_argument(
        "--timeout", type=float, default=60, help="seconds to wait for processing (default 60)"
    )
    parser.add_argument(
        "--duplicate-status",
        type=int,
        choices=(409, 200),
        help="what a repeat must get (default: what the service's /healthz/details says)",
    )
    args = parser.parse_args(argv)
    sender = SENDERS[args.provider]
    secret, token = args.secret, args.token
    if secret is None or token is None:
        try:
            settings = get_settings()
        except SettingsError as exc:
            print(f"crm-smoke: {exc}", file=sys.stderr)
            return 2
        configured = settings.webhook_secrets(sender.name)
        if secret is None and not configured:
            print(f"crm-smoke: no --secret and {sender.secret_setting} is empty", file=sys.stderr)
            return 2
        secret = secret or configured[0].get()
        token = token or issue_token(settings.jwt_secret.get(), sub="crm-smoke", role="reader")
    try:
        ok = run(args.url, secret, token, args.timeout, args.duplicate_status, sender)
        return 0 if ok else 1
    except httpx.HTTPError as exc:
        print(f"FAIL cannot reach {args.url}: {_cause(exc)}", flush=True)
        return 1


def _cause(exc: httpx.HTTPError) -> str:
    """What went wrong in words: httpx's class name alone ('ConnectError') says little."""
    reason: BaseException = exc
    while reason.__cause__ is not None or reason.__context__ is not None:
        reason = reason.__cause__ or reason.__context__  # type: ignore[assignment]
    detail = str(reason) or str(exc) or "no detail"
    return f"{type(exc).__name__}: {detail}"


if __name__ == "__main__":
    raise SystemExit(main())
