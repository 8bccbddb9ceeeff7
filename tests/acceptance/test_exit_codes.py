"""Exit codes through the installed command: 0 all done, 1 an error, 2 usage, 3 done with
failures or rejections (README, CLI reference)."""

from __future__ import annotations

import dataclasses
import json

from tests import mailserver
from tests.acceptance.conftest import Cli

SENDER = "sam@example.org"
SEND = ("bulk", "send", "--template", "news", "--sender", SENDER)


def seed(cli: Cli) -> None:
    """A sender, a template that fails for a contact with one seat, and five contacts."""
    cli.ok("db", "upgrade")
    cli.ok("users", "add", "--name", "Sam Sender", "--email", SENDER)
    page = cli.cwd / "news.html"
    page.write_text("<p>{{ 100 // ((contact.attributes.seats | int) - 1) }} each</p>")
    cli.ok("templates", "create", "--name", "news", "--subject", "News", "--html", str(page))
    people = cli.cwd / "people.csv"
    people.write_text(
        "email,country,seats\n"
        "ok1@example.com,DE,5\n"
        "ok2@example.com,DE,6\n"
        "bounce@example.com,FR,5\n"
        "fine@example.com,FR,5\n"
        "one@example.com,AT,1\n"
    )
    cli.ok("contacts", "import", str(people))


def status(cli: Cli, operation_id: str) -> dict[str, object]:
    shown: dict[str, object] = json.loads(cli.ok("bulk", "status", operation_id, "--json"))
    return shown


def test_waiting_exits_0_when_every_email_went_out_and_3_when_one_failed(cli: Cli) -> None:
    seed(cli)
    clean = cli.ok(*SEND, "--query", "country = 'DE'").strip()
    bounced = cli.ok(*SEND, "--query", "country = 'FR'").strip()
    ledger = mailserver.Ledger()
    ledger.rcpt_replies["bounce@example.com"] = "550 5.1.1 no such user"
    with mailserver.serving(ledger) as port:
        poller = dataclasses.replace(cli, env={"BULKMAIL_SMTP_URL": f"smtp://127.0.0.1:{port}"})
        poller.ok("worker", "poller", "--exit-when-idle")
    assert sorted(d.recipients[0] for d in ledger.deliveries()) == [
        "fine@example.com",
        "ok1@example.com",
        "ok2@example.com",
    ]

    done = cli("bulk", "wait", clean)
    assert (done.code, done.err) == (0, "")
    assert f"bulk operation {clean} completed: 2 sent, 0 failed" in done.out

    failed = cli("bulk", "wait", bounced)
    assert failed.code == 3, failed.err
    assert f"bulk operation {bounced} completed: 1 sent, 1 failed" in failed.out
    assert (status(cli, bounced)["status"], status(cli, bounced)["failed"]) == ("completed", 1)


def test_send_wait_exits_3_when_emails_fail_to_render_and_wait_when_canceled(cli: Cli) -> None:
    seed(cli)
    # Its only email fails to render: the operation completes at once, with a failure.
    rendered = cli(*SEND, "--query", "country = 'AT'", "--wait")
    assert rendered.code == 3, rendered.err
    operation_id = rendered.out.splitlines()[0]
    assert f"bulk operation {operation_id} completed: 0 sent, 1 failed" in rendered.out

    canceled = cli.ok(*SEND, "--query", "country = 'DE'").strip()
    cli.ok("bulk", "cancel", canceled)
    waited = cli("bulk", "wait", canceled)
    assert waited.code == 3, waited.err
    assert f"bulk operation {canceled} canceled: 0 sent, 0 failed, 2 canceled" in waited.out

    assert "bulk operation 99 not found" in cli.refused("bulk", "wait", "99")
    assert "Error" in cli.refused("bulk", "wait", "many", code=2)


def test_an_import_with_rejected_rows_exits_3_and_imports_the_rest(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    good = cli.cwd / "good.csv"
    good.write_text("email\na@example.com\n")
    assert cli("contacts", "import", str(good)).code == 0
    mixed = cli.cwd / "mixed.csv"
    mixed.write_text("email\nb@example.com\nnot-an-address\nc@example.com\n")
    done = cli("contacts", "import", str(mixed))
    assert done.code == 3
    assert done.out.strip().endswith(
        "2 inserted, 0 updated, 0 unchanged, 0 duplicates (a later row won), 1 rejected"
    )
    assert done.err.startswith("line 3: contact address 'not-an-address' is not a valid address")
    assert cli("contacts", "import", str(mixed), "--json").code == 3
    assert "nothing was imported (strict mode)" in cli.refused(
        "contacts", "import", str(mixed), "--strict"
    )
    assert cli.ok("contacts", "count").strip() == "3"
