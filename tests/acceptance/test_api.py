"""The HTTP API as its users drive it: tokens made with the CLI, a real ``bulkmail web``
(uvicorn) in a subprocess on the suite's PostgreSQL, httpx, and the README's external sender run
as it is printed there against an aiosmtpd server."""

from __future__ import annotations

import datetime as dt
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bulkmail import db, mailboxes, models, tokens
from bulkmail.status import Status
from tests import mailserver, webserver
from tests.acceptance.conftest import Cli

README = Path(__file__).resolve().parents[2] / "README.md"
CLAIM = "/api/v1/background-send-email"
OUTCOMES = "/api/v1/background-send-email/outcomes"


@pytest.fixture
def start_web(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., webserver.Web]]:
    with webserver.started(pg_url, tmp_path) as start:
        yield start


def _token(cli: Cli, user: str, *more: str) -> str:
    secret = cli.ok("users", "token", "create", "--user", user, *more).strip()
    assert secret.startswith(tokens.PREFIX)
    return secret


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status, body
    assert body["detail"], body
    return body


def test_tokens_and_bad_input_are_refused_and_change_nothing(
    engine: sa.Engine, pg_url: str, tmp_path: Path, start_web: Callable[..., webserver.Web]
) -> None:
    cli = Cli(pg_url, tmp_path)
    cli.ok("users", "add", "--name", "Relay", "--email", "relay@example.org",
           "--privilege", "background_send_email")  # fmt: skip
    cli.ok("users", "add", "--name", "Viewer", "--email", "viewer@example.org")
    relay = _token(cli, "relay@example.org", "--name", "relay-1", "--expires", "30d")
    viewer = _token(cli, "viewer@example.org")
    revoked = _token(cli, "relay@example.org", "--name", "old")
    listed = cli.ok("users", "token", "list", "--json")
    assert relay not in listed
    assert '"name": "old"' in listed
    old_id = next(t.id for t in _tokens(engine) if t.name == "old")
    assert cli.ok("users", "token", "revoke", str(old_id)).strip() == f"token {old_id} revoked"
    expired = _token(cli, "relay@example.org", "--name", "short")
    with db.session_scope(engine) as session:
        session.execute(
            sa.update(models.ApiToken)
            .where(models.ApiToken.name == "short")
            .values(expires_at=models.utcnow() - dt.timedelta(seconds=1))
        )
    assert "in the past" in cli.refused(
        "users", "token", "create", "--user", "viewer@example.org", "--expires", "2020-01-01"
    )
    assert "no user or queue" in cli.refused(
        "users", "token", "create", "--user", "nobody@example.org"
    )
    ids = mailserver.insert_pending(engine, mailserver.add_sender(engine), 5)
    # The dashboard's token is set too: a user's token needs none of it.
    web = start_web(BULKMAIL_WEB_TOKEN="dashboard-token")
    with httpx.Client(base_url=web.url, timeout=30) as http:
        claim = {"limit": 5, "lease_seconds": 60}
        assert "Bearer" in _problem(http.post(CLAIM, json=claim), 401)["detail"]
        # The dashboard's token authenticates, but acts as no user.
        detail = _problem(http.post(CLAIM, json=claim, headers=_bearer("dashboard-token")), 401)
        assert "users token create" in detail["detail"]
        for secret, why in (
            (tokens.PREFIX + "wrong", "not valid"),
            (revoked, "revoked"),
            (expired, "expired"),
        ):
            found = _problem(http.post(CLAIM, json=claim, headers=_bearer(secret)), 401)
            assert why in found["detail"]
            assert secret not in found["detail"]
        lacking = _problem(http.post(CLAIM, json=claim, headers=_bearer(viewer)), 403)
        assert lacking["detail"].startswith(
            "viewer@example.org lacks the privilege background_send_email"
        )
        mine = _bearer(relay)
        bad = [
            (http.post(CLAIM, content=b'{"limit": 5', headers=mine | _json()), 400),
            (http.post(CLAIM, json={"limit": 5, "lease": 60}, headers=mine), 422),
            (http.post(CLAIM, json={"limit": "5"}, headers=mine), 422),
            (http.post(CLAIM, json={"limit": 0}, headers=mine), 422),
            (http.post(CLAIM, json=[5], headers=mine), 422),
            (http.post(CLAIM, content=b"limit=5", headers=mine), 415),
            (http.post(CLAIM, content=b" " * (5 << 20), headers=mine | _json()), 413),
        ]
        for response, status in bad:
            _problem(response, status)
        # Too long for httpx: the request line as any client can send it.
        status, body = _raw_post(web.url, CLAIM + "?q=" + "x" * 100_000, relay)
        assert status == 414, (status, body)
        assert b"query string is longer" in body
        _problem(http.get("/api/v1/emails", params={"message_id": "a\x00b"}, headers=mine), 400)
        _problem(http.get("/api/v1/emails/99999999999999999999", headers=mine), 404)
        unknown = _problem(bad[1][0], 422)
        assert unknown["errors"] == [
            {"field": "lease", "problem": "Extra inputs are not permitted"}
        ]
        assert _statuses(engine, ids) == {Status.PENDING_SEND: 5}

        claimed = http.post(CLAIM, json={"limit": 2, "lease_seconds": 60}, headers=mine)
        assert claimed.status_code == 200, claimed.text
        handed = claimed.json()["emails"]
        assert [e["id"] for e in handed] == ids[:2]
        first, second = handed
        assert first["mail_from"] == mailserver.SENDER
        assert first["rcpt_to"] == ["r0@example.com"]
        # CR/LF in a reported text is refused, and the whole report with it.
        injected = {"id": first["id"], "claim_token": first["claim_token"],
                    "connection_failed": "broken\r\nX-Injected: yes"}  # fmt: skip
        _problem(http.post(OUTCOMES, json={"outcomes": [injected]}, headers=mine), 422)
        assert _statuses(engine, ids) == {Status.SENDING: 2, Status.PENDING_SEND: 3}
        report = [
            {"id": first["id"], "claim_token": first["claim_token"],
             "reply": {"code": 250, "enhanced_code": "2.0.0", "text": "queued as 7"}},
            {"id": second["id"], "claim_token": "00000000-0000-4000-8000-000000000000",
             "reply": {"code": 250, "text": "ok"}},
        ]  # fmt: skip
        done = http.post(OUTCOMES, json={"outcomes": report}, headers=mine)
        assert done.status_code == 200, done.text
        assert done.json() == {
            "sent": 1, "retried": 0, "failed": 0, "canceled": 0, "released": 0, "stale": 1,
            "items": [{"id": first["id"], "result": "applied"},
                      {"id": second["id"], "result": "stale"}],
        }  # fmt: skip
        assert _statuses(engine, ids) == {
            Status.SENT: 1,
            Status.SENDING: 1,
            Status.PENDING_SEND: 3,
        }
        sent = mailserver.emails(engine, [first["id"]])[0]
        assert sent.last_smtp_reply == "250 2.0.0 queued as 7"
        assert sent.claimed_by is None
        # A revoked token is refused from the next call on.
        assert cli.ok("users", "token", "revoke", str(_tokens(engine)[0].id))
        _problem(http.post(CLAIM, json=claim, headers=mine), 401)
        assert _statuses(engine, ids)[Status.PENDING_SEND] == 3


def _raw_post(url: str, path: str, secret: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    try:
        connection.request("POST", path, b"{}", {**_bearer(secret), **_json()})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def _tokens(engine: sa.Engine) -> list[models.ApiToken]:
    with db.session_scope(engine) as session:
        return list(session.scalars(sa.select(models.ApiToken).order_by(models.ApiToken.id)))


def _statuses(engine: sa.Engine, ids: list[int]) -> dict[Status, int]:
    found: dict[Status, int] = {}
    for email in mailserver.emails(engine, ids):
        found[Status(email.statuscode)] = found.get(Status(email.statuscode), 0) + 1
    return found


def readme_sender() -> str:
    """The external sender exactly as the README prints it."""
    text = README.read_text()
    section = text[text.index("### BackgroundSendEmail") :]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "the README's BackgroundSendEmail section has no Python block"
    return found.group(1)


def test_two_readme_senders_one_killed_mid_batch_every_email_is_sent(
    engine: sa.Engine, pg_url: str, tmp_path: Path, start_web: Callable[..., webserver.Web]
) -> None:
    script = tmp_path / "sender.py"
    script.write_text(readme_sender())
    with db.session_scope(engine) as session:
        mailboxes.add_user(
            session,
            name="Relay",
            email="relay@example.org",
            privileges=[mailboxes.BACKGROUND_SEND_EMAIL],
        )
        _, secret = tokens.create(session, user="relay@example.org", name="relay")
    ids = mailserver.insert_pending(engine, mailserver.add_sender(engine), 400)
    # Reaping at every claim a second apart: the lease below is 10 s.
    web = start_web(BULKMAIL_REAP_INTERVAL="1")
    ledger = mailserver.Ledger(delay=0.002)
    # The killed sender gets the first batch (ids in order); it stops at its 51st message.
    ledger.hold.add("r50@example.com")
    batch = 100
    with mailserver.serving(ledger) as port:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")},
            "API_URL": web.url + "/api/v1",
            "API_TOKEN": secret,
            "SMTP_PORT": str(port),
            "BATCH": str(batch),
            "LEASE_SECONDS": "10",
        }

        def sender(name: str) -> subprocess.Popen[bytes]:
            with (tmp_path / f"{name}.log").open("wb") as log:
                return subprocess.Popen(
                    [sys.executable, str(script)], env=env, stdout=log, stderr=subprocess.STDOUT
                )

        killed = sender("killed")
        claimed_at = time.monotonic()
        assert ledger.held.wait(20), (tmp_path / "killed.log").read_text()
        survivor = sender("survivor")
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        ledger.release()
        assert survivor.wait(60) == 0, (tmp_path / "survivor.log").read_text()
        assert _statuses(engine, ids) == {Status.SENT: 300, Status.SENDING: 100}
        # After the killed sender's lease, the next claim reaps it and sends its batch again.
        time.sleep(max(0.0, claimed_at + 10.5 - time.monotonic()))
        again = sender("after-lease")
        assert again.wait(60) == 0, (tmp_path / "after-lease.log").read_text()
    assert _statuses(engine, ids) == {Status.SENT: 400}
    received = ledger.received()
    emails = mailserver.emails(engine, ids)
    assert set(received) == {e.message_id for e in emails}
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates == 50, duplicates  # what the killed sender sent before it stopped
    assert duplicates <= batch
    log = (tmp_path / "after-lease.log").read_text()
    assert "sent 100, retried 0, failed 0, stale 0" in log, log
