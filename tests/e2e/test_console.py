"""The console over HTTP: sign-in links, sessions, CSRF, roles, security headers, hostile
payloads shown as text, bad input as pages, and no token or session id in any log line."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from common.settings import Settings
from common.tokens import issue_token
from tests.e2e.console_helpers import csrf_of, dead_letters_of, leads, link, signed_in
from tests.e2e.stack import ROOT, IsolatedStack, Process, scalar, wait_processed
from tests.helpers import wait_for
from tests.payloads import encode, reply, signed_headers

pytestmark = pytest.mark.e2e

PAGES = [
    "/console",
    "/console/events",
    "/console/dead-letters",
    "/console/audit",
    "/console/leads?email=maria.keller@nordfracht.de",
    "/console/static/console.css",
]


def _status(engine: Engine, letter_id: int) -> str:
    return str(scalar(engine, "SELECT status FROM dead_letters WHERE id = :i", i=letter_id))


def test_a_link_signs_in_once_and_leaves_the_address_bar(
    stack: str, settings: Settings, receiver_process: tuple[Process, str]
) -> None:
    url = link(stack, settings, sub="alice", role="reader")
    first = httpx.get(url, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/console"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # APP_ENV=test; production adds it
    session_id = first.cookies["crm_console"]
    home = httpx.get(f"{stack}/console", cookies={"crm_console": session_id})
    assert home.status_code == 200 and "alice (reader)" in home.text

    again = httpx.get(url, follow_redirects=False)
    assert again.status_code == 401
    assert "already used" in again.text and "crm-console-link" in again.text

    token = url.split("token=", 1)[1]
    logged = receiver_process[0].output()
    assert token not in logged and session_id not in logged


def test_expired_forged_and_api_tokens_do_not_sign_in(stack: str, settings: Settings) -> None:
    expired = httpx.get(link(stack, settings, ttl=-10), follow_redirects=False)
    assert expired.status_code == 401 and "expired" in expired.text
    api_token = issue_token(settings.jwt_secret.get(), sub="tests", role="admin")
    as_link = httpx.get(f"{stack}/console/sign-in?token={api_token}", follow_redirects=False)
    assert as_link.status_code == 401 and "crm_console" not in as_link.headers.get("set-cookie", "")
    link_token = link(stack, settings).split("token=", 1)[1]
    as_api = httpx.get(
        f"{stack}/admin/dead-letters", headers={"Authorization": f"Bearer {link_token}"}
    )
    assert as_api.status_code == 401


def test_without_a_session_every_page_says_how_to_sign_in(stack: str) -> None:
    for path in PAGES[:-1]:
        answer = httpx.get(f"{stack}{path}", cookies={"crm_console": "no-such-session"})
        assert answer.status_code == 401, path
        assert "crm-console-link --sub" in answer.text


def test_every_answer_carries_the_security_headers(stack: str, settings: Settings) -> None:
    with signed_in(stack, settings) as client:
        for path in [*PAGES, "/console/events/not-a-uuid", "/console/events?since=soon"]:
            answer = client.get(path)
            csp = answer.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp, path
            assert "unsafe-inline" not in csp and "script-src 'self'" in csp, path
            assert answer.headers["referrer-policy"] == "no-referrer", path
            if path.endswith(".css"):
                assert answer.status_code == 200
            else:
                assert answer.headers["content-type"].startswith("text/html"), path
                assert (
                    "http://" not in re.sub(r'href="/[^"]*"', "", answer.text).split("<main>")[0]
                ), path  # no asset from another host


def test_bad_input_is_a_page_that_names_the_field(stack: str, settings: Settings) -> None:
    with signed_in(stack, settings) as client:
        for path, status, said in [
            ("/console/events?since=soon", 400, "'since'"),
            ("/console/events?status=lost", 400, "'status'"),
            ("/console/dead-letters?status=gone", 400, "'status'"),
            ("/console/dead-letters?before_id=x", 400, "'before_id'"),
            ("/console/leads", 400, "'email'"),
            ("/console/events/6f0c2f1e-7d4a-4b8e-9a31-0d7c6e5b4a29", 404, "No such event"),
            ("/console/dead-letters/424242", 404, "No such dead letter"),
            ("/console/jobs/nothing", 404, "No such replay"),
        ]:
            answer = client.get(path)
            assert answer.status_code == status, (path, answer.text)
            assert said in html.unescape(answer.text), path
            assert "Traceback" not in answer.text


def test_posts_need_the_sessions_csrf_token_and_an_admin(
    stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    [letter] = dead_letters_of(stack, superuser_engine, leads(1, "csrf"))
    page = f"/console/dead-letters/{letter}"
    with (
        signed_in(stack, settings, sub="ann", role="admin") as admin,
        signed_in(stack, settings, sub="bob", role="admin") as other,
        signed_in(stack, settings, sub="rita", role="reader") as reader,
    ):
        token = csrf_of(admin.get(page).text)
        other_token = csrf_of(other.get(page).text)
        reader_page = reader.get(page).text
        assert 'id="replay"' not in reader_page and 'id="discard"' not in reader_page
        refused = [
            admin.post(f"{page}/replay", data={}),
            admin.post(f"{page}/replay", data={"csrf": other_token}),
            admin.post(f"{page}/discard", data={"csrf": "forged"}),
            admin.post("/console/dead-letters/replay", data={"status": "all"}),
            reader.post(f"{page}/replay", data={"csrf": csrf_of(reader_page)}),
            reader.post("/console/dead-letters/replay", data={"csrf": csrf_of(reader_page)}),
        ]
        assert [answer.status_code for answer in refused] == [403] * 6
        assert _status(superuser_engine, letter) == "open"
        assert scalar(superuser_engine, "SELECT count(*) FROM admin_actions") == 0

        discarded = admin.post(f"{page}/discard", data={"csrf": token})
        assert discarded.status_code == 303
        assert discarded.headers["location"] == f"{page}?done=discarded"
        assert _status(superuser_engine, letter) == "discarded"
        shown = admin.get(discarded.headers["location"]).text
        assert "Discarded" in shown and "ann (admin, console)" in shown


def test_hostile_payloads_are_shown_as_text_everywhere(
    stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    script, attribute = "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'
    body = reply(
        "xss@hostile.example.com",
        firstName=script,
        lastName=attribute,
        companyName=script,
        reply_text=f"{script} {attribute}",
        reply_text_snippet=attribute,
        website="javascript:alert(1)",
        unibox_url="javascript:alert(1)",
        email_id="xss-1",
    )
    raw = encode(body)
    event_id = httpx.post(
        f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw)
    ).json()["event_id"]
    wait_processed(superuser_engine, [event_id])
    with signed_in(stack, settings) as client:
        for path in [
            "/console",
            f"/console/events/{event_id}",
            "/console/events?email=xss@hostile.example.com",
            "/console/leads?email=xss@hostile.example.com",
        ]:
            page = client.get(path).text
            assert script not in page and "<img src=x" not in page, path
            assert 'href="javascript:' not in page, path
        lead = client.get("/console/leads?email=xss@hostile.example.com").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in lead


def test_the_cli_prints_a_working_link_as_its_last_line(
    stack: str, stack_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("crm-console-link")), "--sub", "cli-user",
         "--role", "reader", "--url", stack, "--ttl", "60"],
        env=stack_env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{stack}/console/sign-in?token=")
    assert httpx.get(last, follow_redirects=False).status_code == 303


def test_sign_out_ends_the_session_for_good(stack: str, settings: Settings) -> None:
    with signed_in(stack, settings, role="reader") as client:
        token = csrf_of(client.get("/console").text)
        session_id = client.cookies["crm_console"]
        assert client.post("/console/sign-out", data={}).status_code == 403  # no CSRF token
        out = client.post("/console/sign-out", data={"csrf": token})
        assert out.status_code == 303
        again = httpx.get(f"{stack}/console", cookies={"crm_console": session_id})
        assert again.status_code == 401


def test_a_replay_all_stopped_by_a_shutdown_says_where_and_is_audited(
    isolated: IsolatedStack, stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    """A deploy restarts the receiver mid-job: the job stops after the dead letter in hand,
    the audit says what it did, the rest stay open, and the job's page says so. A receiver
    killed outright cannot say anything: its job's page says it was lost, once it is stale."""
    total = 1500
    letters = dead_letters_of(stack, superuser_engine, leads(total, "deploy"))
    receiver, url = isolated.receiver()
    with signed_in(url, settings) as admin:
        listing = admin.get("/console/dead-letters?reason=config_error").text
        form = {"csrf": csrf_of(listing), "reason": "config_error", "status": "open"}
        started = admin.post(
            "/console/dead-letters/replay", data=form | {"step": "run", "expected": str(total)}
        )
        assert started.status_code == 303, started.text
        job_path = started.headers["location"]
    receiver.stop()  # SIGTERM, as a deploy or crm-run's Ctrl-C sends it
    assert "Application shutdown complete." in receiver.output()
    assert "Traceback" not in receiver.output()

    replayed = scalar(
        superuser_engine,
        "SELECT count(*) FROM dead_letters WHERE id = ANY(:ids) AND status = 'replayed'",
        ids=letters,
    )
    assert 0 < replayed < total, "the job was not stopped mid-way; give it more dead letters"
    still_open = scalar(
        superuser_engine,
        "SELECT count(*) FROM dead_letters WHERE id = ANY(:ids) AND status = 'open'",
        ids=letters,
    )
    assert still_open == total - replayed
    with superuser_engine.connect() as conn:
        [audit] = conn.execute(text("SELECT * FROM admin_actions")).mappings().all()
    assert audit["action"] == "replay_matching"
    assert (audit["outcome"], audit["matched"], audit["replayed"]) == ("stopped", total, replayed)
    assert len(audit["dead_letter_ids"]) == replayed

    _, again = isolated.receiver()  # any receiver shows the job: its record is in Redis
    with signed_in(again, settings) as admin:
        shown = admin.get(job_path).text
        assert f"Stopped after {replayed} of {total}" in shown
        assert 'http-equiv="refresh"' not in shown

        key = f"crm:console:job:{job_path.rsplit('/', 1)[1]}"
        job = json.loads(isolated.client.get(key) or "{}")
        job |= {"state": "running", "updated_at": time.time() - 600}  # as a killed one leaves it
        isolated.client.set(key, json.dumps(job))
        assert f"Lost after about {replayed} of {total}" in admin.get(job_path).text


def _crm_console_link(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("crm-console-link")), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_rotating_the_secret_ends_every_console_session(
    isolated: IsolatedStack, settings: Settings
) -> None:
    old, url = isolated.receiver()
    with signed_in(url, settings, role="admin") as client:
        assert client.get("/console").status_code == 200
        token = csrf_of(client.get("/console/dead-letters").text)
        old.stop()
        rotated = settings.jwt_secret.get() + "-rotated"
        _, new_url = isolated.receiver(JWT_SECRET=rotated)
        cookie = {"crm_console": client.cookies["crm_console"]}
        assert httpx.get(f"{new_url}/console", cookies=cookie).status_code == 401
        # An admin's action with the old session is refused too, and changes nothing.
        refused = httpx.post(
            f"{new_url}/console/dead-letters/1/discard", cookies=cookie, data={"csrf": token}
        )
        assert refused.status_code == 401


def test_revoke_all_and_sign_out_everywhere_end_every_session(
    stack: str, stack_env: dict[str, str], settings: Settings
) -> None:
    with signed_in(stack, settings, role="reader") as reader:
        assert reader.get("/console").status_code == 200
        done = _crm_console_link(stack_env, "--revoke-all")
        assert done.returncode == 0, done.stderr
        assert "every console session has ended" in done.stdout
        assert reader.get("/console").status_code == 401

    with (
        signed_in(stack, settings, role="reader") as reader,
        signed_in(stack, settings, role="admin") as admin,
    ):
        page = admin.get("/console").text
        assert "Sign out everywhere" in page
        assert "Sign out everywhere" not in reader.get("/console").text
        # A reader may not; without the CSRF token nobody may.
        reader_token = csrf_of(reader.get("/console").text)
        assert (
            reader.post("/console/sign-out-everywhere", data={"csrf": reader_token}).status_code
            == 403
        )
        assert admin.post("/console/sign-out-everywhere", data={}).status_code == 403
        assert reader.get("/console").status_code == 200
        out = admin.post("/console/sign-out-everywhere", data={"csrf": csrf_of(page)})
        assert out.status_code == 303
        assert reader.get("/console").status_code == 401
        assert admin.get("/console").status_code == 401
    # A new link signs in as before.
    with signed_in(stack, settings, role="reader") as again:
        assert again.get("/console").status_code == 200


def test_crm_console_link_says_what_it_needs(stack_env: dict[str, str]) -> None:
    done = _crm_console_link(stack_env, "--sub", "someone")
    assert done.returncode == 2
    assert "--sub and --role are required (or --revoke-all)" in done.stderr


def test_the_lead_page_tells_the_story_in_the_order_it_happened(
    stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    # The later reply arrives first (a backlog, a replay): the page still puts it second.
    lead = "story.order@example.org"
    sent = []
    for subject, at in (
        ("Re: second", "2026-12-02T10:00:00Z"),
        ("Re: first", "2026-12-01T10:00:00Z"),
    ):
        raw = encode(reply(lead, reply_subject=subject, timestamp=at))
        answer = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw))
        assert answer.status_code == 202, answer.text
        sent.append(answer.json()["event_id"])
    wait_processed(superuser_engine, sent)
    with signed_in(stack, settings, role="reader") as client:
        page = client.get("/console/leads", params={"email": lead}).text
    assert page.index("Re: first") < page.index("Re: second")
    assert "2026-12-01" in page and "2026-12-02" in page


def test_the_overview_draws_the_last_hour_and_day_as_pictures(
    stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    sent = []
    for i in range(3):
        raw = encode(reply(f"picture{i}@example.org"))
        answer = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw))
        sent.append(answer.json()["event_id"])
    wait_processed(superuser_engine, sent)
    [letter] = dead_letters_of(stack, superuser_engine, [reply("picture.dead@example.org")])
    with signed_in(stack, settings, role="reader") as client:
        page = client.get("/console")
    assert page.status_code == 200
    html_text = page.text
    assert html_text.count('<svg class="chart"') == 6  # 3 pictures, last hour and last day
    assert "<h2>Last hour</h2>" in html_text and "<h2>Last day</h2>" in html_text
    # Each bar says what it holds (a spike is a bar, not a number to read); the last hour's
    # bars add up to what was sent, whichever minutes they fell in.
    last_hour = html_text.split("<h2>Last hour</h2>", 1)[1].split("<h2>Last day</h2>", 1)[0]

    def total(name: str) -> int:
        found = re.findall(rf"<title>\d\d:\d\d {name}: (\d+)</title>", last_hour)
        return sum(int(count) for count in found)

    assert (total("processed"), total("dead"), total("opened")) == (3, 1, 1)
    assert "<title>Queue depth</title>" in html_text
    assert "<script" not in html_text and "style=" not in html_text  # the CSP allows neither
    assert letter


def test_the_first_overview_arrives_complete_with_its_workers(
    isolated: IsolatedStack, settings: Settings
) -> None:
    isolated.worker()
    _, url = isolated.receiver()  # a fresh receiver: nobody has asked the workers yet
    with signed_in(url, settings, role="reader") as client:
        page = client.get("/console").text
    assert "asking…" not in page
    workers = re.search(
        r'<span class="label">Workers</span><span class="figure">(\S+)</span>', page
    )
    assert workers and workers.group(1) == "1", page


def test_dead_letters_guide_the_admin_from_filter_to_replay_to_outcome(
    stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    letters = dead_letters_of(stack, superuser_engine, leads(3, "guide"))
    with signed_in(stack, settings, role="admin") as admin:
        listing = admin.get("/console/dead-letters").text
        # The filters offer what exists, not free text.
        assert (
            '<select name="reason"><option value="">any</option><option value="config_error"'
            in (listing)
        )
        assert (
            '<select name="error_class"><option value="">any</option><option value="ConfigError"'
            in (listing)
        )
        # Each reason says what to do.
        assert "fix the seed or the pipeline, then replay all with this reason" in listing

        preview = admin.post(
            "/console/dead-letters/replay",
            data={"csrf": csrf_of(listing), "status": "open", "reason": "config_error"},
        )
        assert preview.status_code == 200
        for letter in letters:  # the dry run lists what it will replay
            assert f'href="/console/dead-letters/{letter}">#{letter}</a>' in preview.text

        page = f"/console/dead-letters/{letters[0]}"
        shown = admin.get(page).text
        assert 'id="what-to-do"' in shown
        done = admin.post(f"{page}/replay", data={"csrf": csrf_of(shown)})
        assert done.status_code == 303

        def says_processed() -> bool:
            return "Replayed, and the event is processed now." in admin.get(page).text

        wait_for(says_processed, timeout=30, message="the page never said what became of it")
        after = admin.get(page).text
        assert 'id="replay"' not in after  # no second replay of a replayed one
        event_id = scalar(
            superuser_engine, "SELECT event_id FROM dead_letters WHERE id = :i", i=letters[0]
        )
        assert f'href="/console/events/{event_id}"' in after


def test_lists_download_as_csv_for_their_filter_with_formulas_neutralised(
    stack: str, settings: Settings, superuser_engine: Engine
) -> None:
    formula = '=HYPERLINK("http://evil.example","click")'
    sent = []
    for lead in ("csv.one@example.org", "csv.two@example.org"):
        raw = encode(reply(lead, event_type="lead_interested"))
        answer = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw))
        sent.append(answer.json()["event_id"])
    raw = encode(reply("csv.formula@example.org", event_type=formula))
    answer = httpx.post(f"{stack}/webhooks/instantly", content=raw, headers=signed_headers(raw))
    sent.append(answer.json()["event_id"])
    wait_processed(superuser_engine, sent)
    with signed_in(stack, settings, role="reader") as client:
        events_page = client.get("/console/events", params={"event_type": "lead_interested"}).text
        assert 'href="/console/events.csv?event_type=lead_interested"' in events_page
        answer = client.get("/console/events.csv", params={"event_type": "lead_interested"})
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/csv")
        assert (
            'filename="events_event_type-lead_interested.csv"'
            in answer.headers["content-disposition"]
        )
        rows = list(csv.reader(io.StringIO(answer.text)))
        assert rows[0][:3] == ["id", "received_at", "occurred_at"]
        assert sorted(row[8] for row in rows[1:]) == ["csv.one@example.org", "csv.two@example.org"]
        every = list(csv.reader(io.StringIO(client.get("/console/events.csv").text)))
        [tricky] = [row for row in every[1:] if row[8] == "csv.formula@example.org"]
        assert tricky[4] == "'" + formula  # a spreadsheet shows it as text, never runs it
        assert client.get("/console/events.csv", params={"status": "nope"}).status_code == 400
        audit_csv = client.get("/console/audit.csv")
        assert audit_csv.status_code == 200 and audit_csv.text.startswith("id,created_at,actor")
        letters = client.get("/console/dead-letters.csv", params={"status": "all"})
        assert letters.status_code == 200 and letters.text.startswith("id,last_failed_at")
    assert httpx.get(f"{stack}/console/events.csv").status_code == 401  # signed in only
