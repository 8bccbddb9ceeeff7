"""``bulkmail web`` as an operator uses it: a real browser (Debian's chromium, driven by
Playwright) on the dashboard while a real poller sends a bulk operation, ``/metrics`` against
the database, and every refusal of the gate."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from bulkmail import db, mailboxes, models
from bulkmail.status import ApprovalStatus, Status
from tests import bulkops, mailserver, pollers, services, webserver

CHROMIUM = "/usr/bin/chromium"
TOKEN = "s3cret-dashboard-token"
METRICS_TOKEN = "m3trics-token"


@pytest.fixture
def start_web(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., webserver.Web]]:
    with webserver.started(pg_url, tmp_path) as start:
        yield start


@pytest.fixture
def chromium() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        services.missing("chromium", f"{CHROMIUM} is missing; run `bash .ci/services`")
    with sync_playwright() as playwright:
        # As root, chromium runs only without its sandbox.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_overview_follows_a_bulk_send_and_cancel_stops_it(
    engine: sa.Engine,
    pg_url: str,
    start_web: Callable[..., webserver.Web],
    chromium: Browser,
    tmp_path: Path,
) -> None:
    bulkops.seed(engine)
    bulkops.add_contacts(engine, 2000)
    operation_id = bulkops.submit(engine, name="December news")
    bulkops.expand(engine, operation_id, batch_size=1000)
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Ops", email="ops@example.org")
    web = start_web(BULKMAIL_WEB_ACTOR="ops@example.org")
    # Slow enough that the send takes about 15 s: the browser sees it move, and the cancel
    # comes in the middle. Some recipients are refused, so failures show too.
    ledger = mailserver.Ledger(delay=0.06)
    # The poller sends two claimed batches at once and a cancel withdraws what it has not
    # handed over, in whichever order it claimed them: one recipient in ten is refused, so
    # some are refused before the cancel whatever reached the server first.
    for number in range(3, 2000, 10):
        ledger.rcpt_replies[f"c{number}@example.com"] = "550 5.1.1 no such user"
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    page = chromium.new_page(viewport={"width": 1400, "height": 1200})
    with mailserver.serving(ledger) as port, pollers.started(pg_url, tmp_path) as start_poller:
        page.goto(web.url + "/")
        page.evaluate("window.sameDocument = true")
        sent = page.locator('[data-status="Sent"]')
        assert sent.inner_text() == "0"
        poller = start_poller(f"smtp://127.0.0.1:{port}")
        _wait(lambda: int(sent.inner_text()) > 0, "the overview never showed a sent email")
        first = int(sent.inner_text())
        _wait(lambda: int(sent.inner_text()) > first, "the sent count did not advance")
        row = page.locator(f'tr[data-operation="{operation_id}"]')
        _wait(lambda: int(row.locator("td.sent").inner_text()) > first, "the progress stood still")
        assert page.evaluate("window.sameDocument") is True  # no reload: htmx swapped it
        assert page.locator("#pollers-alive").inner_text() == "1"
        page.screenshot(path=screenshots / "overview.png", full_page=True)

        row.locator(f'a[href="/operations/{operation_id}"]').click()
        page.wait_for_url(f"**/operations/{operation_id}")
        assert page.locator("#status").inner_text() == "sending"
        page.screenshot(path=screenshots / "operation-sending.png", full_page=True)
        page.click("#cancel")
        page.wait_for_url(f"**/operations/{operation_id}?done=*")
        assert page.locator("#status").inner_text() == "canceled"
        assert "canceled" in page.locator("#done").inner_text()
        # A part of a batch the poller had handed to the server before the cancel is sent;
        # the page follows its outcome without a reload.
        page.evaluate("window.sameDocument = true")
        held = page.locator("#sending")
        _wait(lambda: held.inner_text() == "0", "the poller's last part never came back")
        assert page.evaluate("window.sameDocument") is True
        page.screenshot(path=screenshots / "operation-canceled.png", full_page=True)
        # What the page says, the JSON says, and the database says.
        shown = {k: int(page.locator(f"#{k}").inner_text()) for k in ("sent", "canceled")}
        assert poller.process.poll() is None, poller.log()[-3000:]
        page.goto(f"{web.url}/workers")
        alive = page.locator(f'tr[data-worker*="-{poller.process.pid}-"]')
        assert alive.locator("td.state").inner_text() == "alive"
        # Its totals come with its next heartbeat (every 5 s); the page follows them.
        sent_by_poller = alive.locator("td.n").first
        _wait(lambda: int(sent_by_poller.inner_text()) == shown["sent"], "the poller's totals")
        page.screenshot(path=screenshots / "workers.png", full_page=True)
    bulkops.assert_counters_match_the_emails(engine, operation_id)
    stored = bulkops.operation(engine, operation_id)
    assert (stored.status, stored.sending, stored.pending) == ("canceled", 0, 0)
    assert stored.canceled > 0
    assert stored.sent > 0
    assert shown == {"sent": stored.sent, "canceled": stored.canceled}
    data = web.json(f"/api/v1/operations/{operation_id}")
    counters = ("matched", "created", "pending", "sending", "sent", "failed", "canceled")
    assert {k: data[k] for k in counters} == {k: getattr(stored, k) for k in counters}
    assert data["status"] == "canceled"
    assert sum(data["series"]["sent"]) == stored.sent  # the chart reads the rollups
    assert len(ledger.deliveries()) == stored.sent
    overview = web.json("/api/v1/overview")
    assert overview["emails"]["Sent"] == stored.sent
    assert overview["emails"]["Canceled"] == stored.canceled
    assert os.path.getsize(screenshots / "operation-canceled.png") > 10_000

    # The refused recipient's email page lists its attempt with the server's reply.
    with db.session_scope(engine) as session:
        refused = session.scalars(
            sa.select(models.Email).where(models.Email.statuscode == int(Status.FAILED))
        ).first()
        assert refused is not None
        refused_id, refused_message_id = refused.id, refused.message_id
        refused_to = list(refused.to_addresses)
    page.goto(f"{web.url}/emails/{refused_id}")
    attempts = page.locator("#attempts").inner_text()
    assert "550 5.1.1 no such user" in attempts
    headers = page.locator("#headers").inner_text()
    assert f"<{refused_message_id}>" in headers
    assert refused_to[0] in headers
    assert "permanent" in attempts
    page.screenshot(path=screenshots / "email.png", full_page=True)
    status, headers, eml = web.request(f"/emails/{refused_id}.eml")
    assert (status, headers["content-type"]) == (200, "message/rfc822")
    assert f"Message-ID: <{refused_message_id}>".encode() in eml


def test_metrics_say_what_the_database_says(
    engine: sa.Engine, pg_url: str, start_web: Callable[..., webserver.Web]
) -> None:
    bulkops.seed(engine)
    bulkops.add_contacts(engine, 30)
    operation_id = bulkops.submit(engine)
    bulkops.expand(engine, operation_id)
    claimed = bulkops.claim(engine, limit=20)
    bulkops.complete(engine, claimed[:15], bulkops.SENT)
    bulkops.complete(engine, claimed[15:18], bulkops.RETRY)
    bulkops.complete(engine, claimed[18:], bulkops.REFUSED)
    web = start_web(BULKMAIL_WEB_TOKEN=TOKEN, BULKMAIL_METRICS_TOKEN=METRICS_TOKEN)

    assert web.request("/metrics")[0] == 401
    assert web.request("/metrics", token=TOKEN)[0] == 401  # it has a token of its own
    status, _, body = web.request("/metrics", token=METRICS_TOKEN)
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    with engine.connect() as connection:
        by_status = dict(
            connection.execute(
                sa.select(models.Email.statuscode, sa.func.count()).group_by(
                    models.Email.statuscode
                )
            ).all()
        )
    for code in (Status.PENDING_SEND, Status.SENT, Status.FAILED, Status.SENDING):
        key = code.label.lower().replace(" ", "_")
        assert samples["bulkmail_emails", (("status", key),)] == by_status.get(int(code), 0)
    assert samples["bulkmail_emails_sent_total", ()] == 15
    assert samples["bulkmail_emails_retried_total", ()] == 3
    assert samples["bulkmail_emails_failed_total", ()] == 2
    attempts = {
        r: samples["bulkmail_delivery_attempts_total", (("result", r),)]
        for r in ("delivered", "temporary", "permanent")
    }
    assert attempts == {"delivered": 15, "temporary": 3, "permanent": 2}
    # bulkops' replies carry no code: they count as "none".
    assert samples["bulkmail_smtp_replies_total", (("class", "none"),)] == 20
    assert samples["bulkmail_bulk_operations", (("status", "sending"),)] == 1
    assert samples["bulkmail_retry_backlog_emails", (("due", "later"),)] == 3
    assert samples["bulkmail_oldest_pending_age_seconds", ()] >= 0
    assert ("bulkmail_build_info", (("version", "0.1.0"),)) in samples
    assert TOKEN.encode() not in body
    assert METRICS_TOKEN.encode() not in body


def test_without_a_token_it_answers_only_to_loopback_names(
    engine: sa.Engine, start_web: Callable[..., webserver.Web]
) -> None:
    web = start_web()
    assert web.request("/api/v1/workers")[0] == 200
    assert web.request("/api/v1/workers", headers={"Host": "localhost"})[0] == 200
    # A page of another site that resolves its own name to 127.0.0.1 (DNS rebinding).
    status, _, body = web.request("/api/v1/workers", headers={"Host": "attacker.example"})
    assert status == 403
    assert b"answers only to 127.0.0.1 or localhost" in body


def test_the_gate_refuses_and_changes_nothing(
    engine: sa.Engine, start_web: Callable[..., webserver.Web], tmp_path: Path
) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Viewer", email="viewer@example.org")
        mailboxes.add_user(
            session,
            name="Approver",
            email="approver@example.org",
            privileges=[mailboxes.APPROVE_EMAIL_ADDRESS],
        )
        mailboxes.add_queue(session, name="News", email="news@example.org")

    def approval() -> int:
        with db.session_scope(engine) as session:
            return mailboxes.find(session, "news@example.org").approval_status

    # Beyond loopback without a token: it does not start.
    refused = webserver.subprocess.run(
        [str(webserver.BULKMAIL), "web", "--host", "0.0.0.0", "--port", "0"],  # noqa: S104
        env={k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
        | {"BULKMAIL_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "Error: refusing to listen on 0.0.0.0 without authentication: set BULKMAIL_WEB_TOKEN,"
        " or listen on 127.0.0.1 (the default)"
    ]

    web = start_web(BULKMAIL_WEB_TOKEN=TOKEN, BULKMAIL_WEB_ACTOR="viewer@example.org")
    approve = "/api/v1/mailboxes/approve"
    form = {"address": "news@example.org"}
    # No token, a wrong one: refused before anything runs.
    assert web.request("/api/v1/overview")[0] == 401
    assert web.request("/api/v1/overview", token="wrong")[0] == 401
    status, headers, _ = web.request("/mailboxes")
    assert (status, headers["location"]) == (303, "/login?next=/mailboxes")
    assert web.request(approve, form=form)[0] == 401
    assert web.request(approve, form=form, token="wrong")[0] == 401
    # The right token, as a user without the privilege: refused, saying why.
    status, _, body = web.request(approve, form=form, token=TOKEN)
    assert status == 403
    assert json.loads(body)["detail"].startswith(
        "viewer@example.org lacks the privilege approve_email_address"
    )
    # A browser's session cookie without the CSRF token: refused.
    status, headers, _ = web.request("/login", form={"token": TOKEN, "next": "/mailboxes"})
    assert (status, headers["location"]) == (303, "/mailboxes")
    cookie = headers["set-cookie"].split(";")[0]
    assert TOKEN not in cookie
    status, _, body = web.request("/mailboxes/approve", form=form, headers={"Cookie": cookie})
    assert status == 403
    assert b"CSRF token is missing or wrong" in body
    assert approval() == int(ApprovalStatus.EMPTY)

    # Read-only: no action shown, every one refused, even for an approver.
    read_only = start_web(
        BULKMAIL_WEB_TOKEN=TOKEN,
        BULKMAIL_WEB_ACTOR="approver@example.org",
        BULKMAIL_WEB_READ_ONLY="true",
    )
    status, _, body = read_only.request("/mailboxes", token=TOKEN)
    assert status == 200
    assert b"news@example.org" in body
    assert b"/mailboxes/approve" not in body
    assert b"<button" not in body
    status, _, body = read_only.request(approve, form=form, token=TOKEN)
    assert status == 403
    assert b"read-only" in body
    assert approval() == int(ApprovalStatus.EMPTY)

    # The approver, with the token: a body past an action's limit is refused unread; then done.
    approver = start_web(BULKMAIL_WEB_TOKEN=TOKEN, BULKMAIL_WEB_ACTOR="approver@example.org")
    status, _, body = approver.request(approve, form={**form, "padding": "x" * 20_000}, token=TOKEN)
    assert status == 413
    assert b"larger than 16,384 bytes" in body
    assert approval() == int(ApprovalStatus.EMPTY)
    status, _, body = approver.request(approve, form=form, token=TOKEN)
    assert (status, json.loads(body)) == (200, {"done": "news@example.org is Approved"})
    assert approval() == int(ApprovalStatus.APPROVED)
    for server in (web, read_only, approver):
        assert TOKEN not in server.log.read_text()
