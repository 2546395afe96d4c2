"""`make screenshots`: the console with demo data, photographed page by page into docs/console/.

Starts a receiver and a worker against a scratch database and Redis DB (dropped afterwards),
delivers a few replies and bookings, makes some dead letters (a reply without an e-mail, and
replies while the default pipeline is missing), replays one, then signs in with Debian's
Chromium (Playwright, executable_path) and writes a PNG of each page.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
from playwright.sync_api import sync_playwright
from sqlalchemy import create_engine, pool, text

from bench.stack import Child, bench_env, start_receiver, start_worker, wait_until
from common.settings import load_settings
from common.tokens import issue_link_token
from db.cli import bootstrap, migrate, superuser_url
from tests.payloads import encode, fixture, hmac_hex, reply, signed_headers

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "console"
PORT = 18095
SECRET = "bench-instantly-secret"  # noqa: S105 - the scratch stack's (bench.stack.bench_env)
LEADS = [
    ("maria.keller@nordfracht.de", "Maria", "Keller", "Nordfracht GmbH"),
    ("j.svensson@kallvik.se", "Johan", "Svensson", "Kallvik Logistik"),
    ("ana.ruiz@transportes-ruiz.es", "Ana", "Ruiz", "Transportes Ruiz"),
    ("p.nowak@wislaspedycja.pl", "Piotr", "Nowak", "Wisła Spedycja"),
]


def _post(url: str, body: dict[str, Any]) -> str:
    raw = encode(body)
    headers = signed_headers(raw, secret=SECRET)
    answer = httpx.post(f"{url}/webhooks/instantly", content=raw, headers=headers)
    answer.raise_for_status()
    return str(answer.json()["event_id"])


def _demo(url: str, engine: Any) -> None:
    for index, (email, first, last, company) in enumerate(LEADS):
        _post(url, reply(email, firstName=first, lastName=last, companyName=company,
                         email_id=f"demo-{index}"))  # fmt: skip
    _post(url, reply(LEADS[0][0], event_type="lead_interested", email_id="demo-interested"))

    def processed() -> bool:
        with engine.connect() as conn:
            done = "SELECT count(*) FROM webhook_events WHERE status = 'processed'"
            return bool(conn.execute(text(done)).scalar_one() == len(LEADS) + 1)

    wait_until(processed, 60, "the demo replies")
    booking = fixture("calcom", "booking_created")
    booking["payload"]["uid"] = "demo-booking"
    raw = encode(booking)
    # Cal.com's secret in the scratch stack is its development default.
    signature = hmac_hex(raw, "dev-calcom-secret-change-me")
    httpx.post(f"{url}/webhooks/calcom", content=raw, headers={
        "Content-Type": "application/json", "X-Cal-Signature-256": signature})  # fmt: skip
    _post(url, reply(None, lead_email=None, email=None, email_id="demo-no-email"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE pipelines SET is_default = false WHERE name = 'Sales'"))
    for index in range(6):
        _post(url, reply(f"lead{index}@example-prospect.com", email_id=f"demo-broken-{index}"))

    def dead_lettered() -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one() == 7)

    wait_until(dead_lettered, 60, "the demo dead letters")
    with engine.begin() as conn:
        conn.execute(text("UPDATE pipelines SET is_default = true WHERE name = 'Sales'"))


def main() -> int:
    database = f"crm_shots_{uuid.uuid4().hex[:8]}"
    env = bench_env(database, 13)  # its Instantly secret; Cal.com's development default
    settings = load_settings(env)
    log_dir = ROOT / "bench" / "out"
    log_dir.mkdir(exist_ok=True)
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    bootstrap(settings, echo=lambda _: None, create_database=True)
    engine = create_engine(superuser_url(settings, database=database), poolclass=pool.NullPool)
    children: list[Child] = []
    try:
        migrate(settings)
        receiver = start_receiver(env, PORT, log_dir)
        children.append(receiver)
        worker = start_worker(env, 1, log_dir)
        children.append(worker)
        url = f"http://127.0.0.1:{PORT}"
        _demo(url, engine)
        OUT.mkdir(parents=True, exist_ok=True)
        token = issue_link_token(settings.jwt_secret.get(), sub="ops@example.com", role="admin")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--no-sandbox"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"{url}/console/sign-in?token={token}")
            letter = page.goto(f"{url}/console/dead-letters?reason=config_error")
            assert letter is not None
            first = page.locator("table").nth(1).locator("a").first
            letter_path = first.get_attribute("href")
            page.goto(f"{url}{letter_path}")
            page.click("#replay")
            page.goto(f"{url}/console")  # asks the workers for the overview shot, taken last
            shots = {
                "events": "/console/events",
                "lead": f"/console/leads?email={LEADS[0][0]}",
                "dead-letters": "/console/dead-letters",
                "dead-letter": str(letter_path),
                "audit": "/console/audit",
                "overview": "/console",
            }
            for name, path in shots.items():
                page.goto(f"{url}{path}")
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=False)
                print(f"screenshots: docs/console/{name}.png", file=sys.stderr)
            page.goto(f"{url}/console/events")
            page.locator("table a").first.click()
            page.screenshot(path=str(OUT / "event.png"), full_page=False)
            page.goto(f"{url}/console/dead-letters?status=open")
            page.click("#replay-all")
            page.screenshot(path=str(OUT / "replay-all.png"), full_page=False)
            browser.close()
    finally:
        for child in reversed(children):
            child.stop()
        engine.dispose()
        client.flushdb()
        client.close()
        admin = create_engine(
            superuser_url(settings), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool
        )
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
