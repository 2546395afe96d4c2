"""The console in a real browser: Debian's Chromium, driven by Playwright (its own browser
download is not used: `executable_path` points at the system binary)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright
from sqlalchemy import Engine

from common.settings import Settings
from tests.e2e.console_helpers import dead_letters_of, leads, link
from tests.e2e.stack import IsolatedStack, queue_reply, scalar, wait_processed
from tests.helpers import wait_for
from tests.payloads import encode, reply, signed_headers

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    dialogs: list[Dialog] = []

    def opened_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog)
        dialog.dismiss()

    opened.on("dialog", opened_dialog)
    yield opened
    context.close()
    assert not dialogs, f"a dialog opened: {[d.message for d in dialogs]}"  # no script ran


def test_a_link_signs_in_once_and_the_overview_shows_a_queue(
    page: Page, isolated: IsolatedStack, settings: Settings
) -> None:
    _, url = isolated.receiver()  # no worker: what is queued stays queued
    for body in leads(3, "queued"):
        queue_reply(isolated.client, body)
    sign_in = link(url, settings, sub="browser-admin")
    page.goto(sign_in)
    assert page.url == f"{url}/console"  # the token left the address bar
    assert page.locator("#queue-depth").inner_text() == "3"
    assert "browser-admin (admin)" in page.inner_text("header")
    page.goto(sign_in)
    assert "already used" in page.inner_text("main")


def test_a_lead_is_found_by_e_mail(
    page: Page, stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    event_id = queue_reply_via(stack, superuser_engine, "Found.Lead@browser.example.com")
    page.goto(link(stack, settings, role="reader"))
    page.fill("input[name=email]", "found.lead@BROWSER.example.com")
    page.click("text=Find lead")
    main = page.inner_text("main")
    assert "Lead found.lead@browser.example.com" in main
    assert "New" in main and "reply_received" in main
    page.click("main table a:text-is('event')")
    assert event_id in page.url


def queue_reply_via(stack: str, engine: Engine, email: str) -> str:
    raw = encode(reply(email, email_id=f"browser-{email}"))
    event_id = str(
        httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw)).json()[
            "event_id"
        ]
    )
    wait_processed(engine, [event_id])
    return event_id


def test_a_dead_letter_replayed_from_its_page_becomes_rows(
    page: Page, stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    [letter] = dead_letters_of(stack, superuser_engine, leads(1, "onepage"))
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 0
    page.goto(link(stack, settings))
    page.goto(f"{stack}/console/dead-letters/{letter}")
    assert "config_error" in page.inner_text("main")
    assert "fix the seed or the pipeline" in page.inner_text("#what-to-do")
    page.click("#replay")
    assert "Replayed" in page.inner_text(".notice")
    wait_for(
        lambda: scalar(superuser_engine, "SELECT count(*) FROM deals") == 1,
        timeout=60,
        message="the replayed event made no deal",
    )
    page.reload()
    assert "tests (admin, console)" in page.inner_text("main")  # its history
    # What became of it, with the way to the event; no second replay of a replayed one.
    assert page.inner_text("#replay-outcome").startswith("Replayed, and the event is processed")
    assert page.locator("#replay").count() == 0
    page.click("#replay-outcome a")
    assert "/console/events/" in page.url


def test_replay_all_that_match_replays_every_one_once_and_is_audited(
    page: Page, stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    letters = dead_letters_of(stack, superuser_engine, leads(250, "bulk"))
    page.goto(link(stack, settings))
    page.goto(f"{stack}/console/dead-letters?reason=config_error")
    assert page.locator("table").nth(1).locator("tr").count() == 51  # a page of 50, and more
    page.click("#replay-all")
    assert page.inner_text("#would-replay") == "250"
    # The dry run lists what it will replay: the first page, and how many in all.
    assert page.locator("#preview tr").count() == 51
    assert "The first 50 of 250" in page.inner_text("main")
    page.click("#confirm")
    assert page.url.startswith(f"{stack}/console/jobs/")

    def finished() -> bool:
        page.reload()  # the page refreshes itself each second; a test need not wait for it
        return page.inner_text("#state") == "Finished."

    wait_for(finished, timeout=120, interval=0.5, message="the replay did not finish")
    assert page.inner_text("#replayed") == "250"
    assert (page.inner_text("#skipped"), page.inner_text("#failed")) == ("0", "0")
    wait_for(
        lambda: (
            scalar(
                superuser_engine, "SELECT count(*) FROM webhook_events WHERE status = 'processed'"
            )
            == 250
        ),
        timeout=120,
        message="the replayed events were not all processed",
    )
    assert scalar(superuser_engine, "SELECT count(*) FROM deals") == 250
    assert scalar(
        superuser_engine, "SELECT sum(replay_count) FROM dead_letters WHERE id = ANY(:ids)",
        ids=letters,
    ) == 250  # fmt: skip
    # Again: every one of them was replayed, so nothing matches the open filter any more.
    page.goto(f"{stack}/console/dead-letters?reason=config_error")
    assert "No dead letters match" in page.inner_text("main")
    assert page.locator("#replay-all").count() == 0
    page.goto(f"{stack}/console/audit")
    rows = page.locator("tr.action")
    assert rows.count() == 1
    assert rows.locator(".matched").inner_text() == "250"
    assert rows.locator(".replayed").inner_text() == "250"


def test_a_reader_sees_no_action(
    page: Page, stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    [letter] = dead_letters_of(stack, superuser_engine, leads(1, "reader"))
    page.goto(link(stack, settings, sub="rita", role="reader"))
    page.goto(f"{stack}/console/dead-letters/{letter}")
    assert page.locator("#replay").count() == 0
    assert page.locator("#discard").count() == 0
    page.goto(f"{stack}/console/dead-letters")
    assert page.locator("#replay-all").count() == 0


def test_the_overview_pictures_render_and_headers_never_break_mid_word(
    page: Page, stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    queue_reply_via(stack, superuser_engine, "pictures@browser.example.com")
    dead_letters_of(stack, superuser_engine, leads(2, "narrow"))
    page.set_viewport_size({"width": 760, "height": 900})  # a narrow window squeezes tables
    page.goto(link(stack, settings, role="admin"))
    charts = page.locator("svg.chart")
    assert charts.count() == 6
    for index in range(charts.count()):
        box = charts.nth(index).bounding_box()
        assert box and box["width"] > 200 and box["height"] > 60  # drawn, not empty
    assert page.locator("svg.chart rect").count() >= 3  # bars for what just happened
    for path in ("/console", "/console/dead-letters?status=all", "/console/events"):
        page.goto(f"{stack}{path}")
        # Each header cell and each link in a table stays on one line: none is cut mid-word.
        broken = page.evaluate(
            """() => [...document.querySelectorAll('th, td a')].filter(cell => {
                   const range = document.createRange();
                   range.selectNodeContents(cell);
                   const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                   return lines.size > 1;
               }).map(cell => cell.innerText)"""
        )
        assert broken == [], f"{path}: {broken}"
    page.goto(f"{stack}/console/dead-letters")
    assert page.locator("select[name=reason] option").all_inner_texts() == ["any", "config_error"]
    page.select_option("select[name=reason]", "config_error")
    page.click("form.filters button[type=submit]")
    assert "reason=config_error" in page.url
    with page.expect_download() as download:
        page.click("#csv")
    assert download.value.suggested_filename.startswith("dead-letters_reason-config_error")
