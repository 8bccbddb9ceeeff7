"""`bulkmail demo`: one bulk send through the production code on the embedded PostgreSQL of the
working directory, every message filed by the local catcher, nothing else touched."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import re
import shlex
from pathlib import Path

from tests import mailserver
from tests.acceptance.conftest import Cli

SENT_LINE = re.compile(r"^([\d,]+) sent in ", re.MULTILINE)


def _sent(out: str) -> int:
    found = SENT_LINE.search(out)
    assert found is not None, out
    return int(found.group(1).replace(",", ""))


def _exported_url(out: str) -> str:
    """The database URL the demo tells the user to export."""
    found = re.search(r"^  export BULKMAIL_DATABASE_URL=(.+)$", out, re.MULTILINE)
    assert found is not None, out
    (url,) = shlex.split(found.group(1))
    return url


def _parsed(path: Path) -> email.message.EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_demo_files_every_email_it_sends_and_its_commands_work(workdir: Path) -> None:
    bulkmail = Cli(None, workdir)
    # The user's own data, in the default database of the same embedded server.
    bulkmail.ok("contacts", "add", "--email", "keep@example.org")

    out = bulkmail.ok("demo", "--contacts", "300")

    files = sorted((workdir / "demo-outbox").glob("*.eml"))
    assert len(files) == _sent(out)
    assert len(files) > 200
    for path in files:
        message = _parsed(path)
        assert message["Message-ID"] == f"<{path.stem}>"
        assert str(message["Subject"]).startswith("Welcome, Contact")
        assert message["From"] == "bulkmail demo <newsletter@example.org>"
        (attached,) = message.iter_attachments()
        assert isinstance(attached, email.message.EmailMessage)
        assert attached.get_filename() == "price-list.csv"
        assert attached.get_content().startswith("product,price\n")
    assert f"{len(files)} messages arrived in ./demo-outbox/" in out

    # The commands it prints run on its database, on the server of this folder.
    url = _exported_url(out)
    assert "bulkmail_demo" in url
    assert str(workdir / ".bulkmail" / "postgres") in url
    demo = Cli(url, workdir)
    assert json.loads(demo.ok("bulk", "status", "1", "--json"))["sent"] == len(files)
    assert "Welcome, Contact1" in demo.ok(
        "templates", "render", "welcome", "--contact", "contact1@example.com"
    )
    # A second run starts over; the user's database saw none of it.
    again = bulkmail.ok("demo", "--contacts", "150")
    assert len(list((workdir / "demo-outbox").glob("*.eml"))) == _sent(again) < len(files)
    assert json.loads(demo.ok("bulk", "status", "1", "--json"))["matched"] <= 150
    (kept,) = json.loads(bulkmail.ok("contacts", "list", "--json"))
    assert kept["email"] == "keep@example.org"


def test_demo_leaves_the_database_of_bulkmail_database_url_alone(
    workdir: Path, fresh_pg_url: str
) -> None:
    bulkmail = Cli(fresh_pg_url, workdir)
    out = bulkmail.ok("demo", "--contacts", "100")
    assert "the demo does not use BULKMAIL_DATABASE_URL" in out
    assert str(workdir / ".bulkmail" / "postgres") in _exported_url(out)
    assert _sent(out) == len(list((workdir / "demo-outbox").glob("*.eml"))) > 0
    # Never even migrated: the demo did not connect to it.
    assert "bulkmail db upgrade" in bulkmail.refused("contacts", "count")


def test_demo_exits_3_naming_what_did_not_arrive(workdir: Path) -> None:
    ledger = mailserver.Ledger()
    refused = {f"contact{n}@example.com" for n in range(0, 40, 2)}
    deferred = {f"contact{n}@example.com" for n in range(1, 40, 2)}
    ledger.rcpt_replies.update(dict.fromkeys(refused, "550 5.1.1 no such mailbox"))
    ledger.rcpt_replies.update(dict.fromkeys(deferred, "451 4.2.0 mailbox busy, try later"))
    with mailserver.serving(ledger) as port:
        done = Cli(None, workdir)(
            "demo", "--contacts", "300", "--smtp-url", f"smtp://127.0.0.1:{port}"
        )
    assert done.code == 3, done.err
    assert "Traceback" not in done.err
    (line,) = done.err.strip().splitlines()
    found = re.fullmatch(
        r"Error: (\d+) of (\d+) emails did not arrive: (\d+) Failed, (\d+) Pending Send; "
        r"a failure: contact\d+@example\.com: (.+)",
        line,
    )
    assert found is not None, line
    missing, emails, failed, pending, reason = found.groups()
    assert int(emails) - int(missing) == ledger.count() == _sent(done.out)
    assert int(missing) == int(failed) + int(pending)
    # Refused ones fail, deferred ones wait for a retry: the demo does not wait a minute for it.
    assert int(failed) > 0
    assert int(pending) > 0
    assert "550 5.1.1 no such mailbox" in reason
    recipients = {to for d in ledger.deliveries() for to in d.recipients}
    assert not recipients & (refused | deferred)


def test_demo_checks_the_smtp_url_before_anything_and_never_shows_its_password(
    workdir: Path,
) -> None:
    bulkmail = Cli(None, workdir)
    for url in ("smtp://u:pw/secret@127.0.0.1:1", "smtp://u:s3cret@127.0.0.1:1"):
        done = bulkmail("demo", "--smtp-url", url)
        assert done.code == 1, done
        assert "Traceback" not in done.err
        assert len(done.err.strip().splitlines()) == 1, done.err
        for secret in ("pw/secret", "secret", "s3cret"):
            assert secret not in done.out + done.err
        assert "u:***@127.0.0.1:1" in done.err
    assert "cannot reach the SMTP server" in done.err
    # Refused before the embedded server was started or a database dropped.
    assert not (workdir / ".bulkmail").exists()


def test_demo_without_its_extra_says_how_to_install_it(workdir: Path) -> None:
    # A package of that name that cannot be imported: aiosmtpd as it is when not installed.
    shadow = workdir / "shadow"
    (shadow / "aiosmtpd").mkdir(parents=True)
    (shadow / "aiosmtpd" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'aiosmtpd'\", name='aiosmtpd')\n"
    )
    bulkmail = Cli(None, workdir, env={"PYTHONPATH": str(shadow)})
    error = bulkmail.refused("demo")
    assert "pip install 'bulkmail[demo]'" in error
    assert not (workdir / ".bulkmail").exists()


def test_demo_stops_waiting_for_a_server_that_takes_no_session(workdir: Path) -> None:
    # The server offers no AUTH, so no session with a user name can be opened: the poller
    # would wait for it for ever, warning; the demo gives up after run.STALL seconds.
    with mailserver.serving(mailserver.Ledger()) as port:
        done = Cli(None, workdir)(
            "demo", "--contacts", "100", "--smtp-url", f"smtp://u:s3cret@127.0.0.1:{port}"
        )
    assert done.code == 3, done.err
    assert "s3cret" not in done.out + done.err
    assert "offers no AUTH" in done.err
    last = done.err.strip().splitlines()[-1]
    assert last.startswith("Error: ")
    assert "Pending Send; no email got an answer for 20 s, so the demo stopped waiting" in last
    assert _sent(done.out) == 0
