"""Incoming mail as a user runs it: `bulkmail mailbox incoming`, two `bulkmail worker inbound`
processes on one mailbox of a real Dovecot, one of them killed with kill -9 mid-sync, then
`email list --direction incoming`, `email show` and the sync state: each message once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from cryptography.fernet import Fernet

from bulkmail import db, mailboxes
from tests import dovecot, mailsamples
from tests.acceptance.conftest import BULKMAIL, Cli

QUEUE = "news@example.org"


def _worker(cli: Cli, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    assert cli.database_url is not None
    env.update(
        cli.env,
        BULKMAIL_DATABASE_URL=cli.database_url,
        BULKMAIL_INBOUND_POLL_INTERVAL="0.2",
        BULKMAIL_INBOUND_LEASE_SECONDS="2",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BULKMAIL), "worker", "inbound"],
            env=env,
            cwd=cli.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _imported(engine: sa.Engine) -> tuple[int, int]:
    """(incoming emails, distinct mailbox keys among them): equal when none is there twice."""
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT count(*), count(DISTINCT (uidvalidity, uid)) FROM incoming_emails")
        ).one()
    return int(row[0]), int(row[1])


def test_two_workers_one_killed_import_each_message_once(
    pg_url: str, engine: sa.Engine, tmp_path: Path, dovecot_server: dovecot.Dovecot
) -> None:
    cli = Cli(pg_url, tmp_path, {"BULKMAIL_SECRET_KEY": Fernet.generate_key().decode()})
    with db.session_scope(engine) as session:
        mailboxes.add_queue(session, name="News", email=QUEUE)
    user = f"u{uuid.uuid4().hex[:10]}"
    url = f"imap://{user}@127.0.0.1:{dovecot_server.imap_port}/INBOX"
    (tmp_path / "wrong").write_text("not-it\n")
    (tmp_path / "password").write_text(dovecot.PASSWORD + "\n")
    cli.ok("mailbox", "incoming", "set", QUEUE, "--url", url, "--password-file", "wrong")
    err = cli.refused("mailbox", "incoming", "test", QUEUE)
    assert err.startswith(
        f"Error: the imap server 127.0.0.1:{dovecot_server.imap_port} refused the login of {user}"
    )
    out = cli.ok("mailbox", "incoming", "set", QUEUE, "--url", url, "--password-file", "password")
    assert out.strip() == f"{QUEUE}: imap://{user}@127.0.0.1:{dovecot_server.imap_port}/INBOX"
    count = 1_000
    with dovecot_server.client(user) as client:
        client.multiappend(
            "INBOX",
            [
                mailsamples.plain("ann@example.com", QUEUE, "Question"),
                *(mailsamples.plain(f"c{i}@example.com", QUEUE, f"m{i}") for i in range(count)),
            ],
        )

    first = _worker(cli, tmp_path / "first.log")
    second = _worker(cli, tmp_path / "second.log")
    try:
        deadline = time.monotonic() + 60
        while _imported(engine)[0] < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        # Whichever holds the mailbox dies mid-sync; the other takes over when the lease ends.
        with engine.connect() as connection:
            owner = str(connection.scalar(sa.text("SELECT lease_owner FROM incoming_profiles")))
        holder, other = (first, second) if f"-{first.pid}-" in owner else (second, first)
        holder.kill()
        holder.wait(timeout=10)
        assert 100 <= _imported(engine)[0] <= count, "the sync was not cut in the middle"
        while _imported(engine)[0] <= count and time.monotonic() < deadline:
            time.sleep(0.1)
        other.send_signal(signal.SIGTERM)
        assert other.wait(timeout=30) == 0
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait()

    assert _imported(engine) == (count + 1, count + 1)
    listed = json.loads(
        cli.ok("email", "list", "--direction", "incoming", "--mailbox", QUEUE, "--limit", "5000",
               "--json")
    )  # fmt: skip
    assert sorted(e["subject"] for e in listed) == sorted(
        ["Question", *(f"m{i}" for i in range(count))]
    )
    assert {(e["status"], e["direction"]) for e in listed} == {("Received", "incoming")}
    question = next(e for e in listed if e["subject"] == "Question")
    shown = cli.ok("email", "show", str(question["id"]))
    assert "ann@example.com" in shown
    assert QUEUE in shown
    state = json.loads(cli.ok("mailbox", "incoming", "show", QUEUE, "--json"))
    assert (state["imported"], state["last_error"], state["password"]) == (
        count + 1,
        None,
        "stored encrypted",
    )
    logs = (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()
    assert dovecot.PASSWORD not in json.dumps(state) + logs + shown
