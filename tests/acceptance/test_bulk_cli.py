"""A bulk operation through the installed command: send, status, list, retry-failed, cancel.

The command runs with its default memory:// broker, so the expansion runs in the ``bulk send``
process itself, as in the embedded setup.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

from tests.acceptance.conftest import BULKMAIL, Cli

# Breaks for a contact whose seats attribute is -1, and for nobody else.
HTML = (
    "<p>Hi {{ contact.first_name }}:"
    " {{ 1000 // ((contact.attributes.seats | default(0) | int) + 1) }}</p>"
)


def status(cli: Cli, operation_id: str) -> dict[str, object]:
    shown: dict[str, object] = json.loads(cli.ok("bulk", "status", operation_id, "--json"))
    return shown


def test_a_bulk_operation_from_send_to_cancel(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    cli.ok("users", "add", "--name", "Sam Sender", "--email", "sam@example.org")
    for n in range(3):
        cli.ok("contacts", "add", "--email", f"c{n}@example.com", "--first-name", f"C{n}")
    cli.ok("contacts", "add", "--email", "broken@example.com", "--attr", "seats=-1")
    cli.ok("contacts", "add", "--email", "out@example.com", "--no-bulk-email")
    cli.ok("contacts", "add", "--email", "other@example.org", "--first-name", "Other")
    page = cli.cwd / "news.html"
    page.write_text(HTML)
    cli.ok("templates", "create", "--name", "news", "--subject", "News", "--html", str(page))

    query = "email like '%@example.com'"
    operation_id = cli.ok(
        *("bulk", "send", "--template", "news", "--sender", "sam@example.org"),
        *("--query", query, "--name", "Autumn"),
    ).strip()
    assert operation_id.isdigit()
    shown = status(cli, operation_id)
    assert shown["status"] == "sending"
    assert (shown["name"], shown["query"], shown["sender"]) == ("Autumn", query, "sam@example.org")
    counters = ("matched", "created", "skipped_opted_out", "skipped_no_address", "render_failures")
    assert [shown[c] for c in counters] == [5, 3, 1, 0, 1]
    by_status = ("pending", "sending", "sent", "failed", "canceled")
    assert [shown[c] for c in by_status] == [3, 0, 0, 1, 0]
    assert shown["expanded_at"] is not None
    assert shown["last_error"] is None
    assert "Autumn" in cli.ok("bulk", "status", operation_id)
    listed = json.loads(cli.ok("bulk", "list", "--json"))
    assert [(op["id"], op["status"]) for op in listed] == [(int(operation_id), "sending")]
    assert "Autumn" in cli.ok("bulk", "list")
    failed = json.loads(cli.ok("email", "list", "--status", "failed", "--json"))
    assert [e["failure_reason"] for e in failed] == [
        "render failed: html template line 1: integer division or modulo by zero"
    ]

    assert cli.ok("bulk", "retry-failed", operation_id).startswith("0 emails")
    page.write_text("<p>Hi {{ contact.first_name }}</p>")
    cli.ok("templates", "update", "news", "--html", str(page))
    assert cli.ok("bulk", "retry-failed", operation_id).startswith("1 emails")
    shown = status(cli, operation_id)
    assert (shown["pending"], shown["failed"], shown["render_failures"]) == (4, 0, 0)

    assert "4 emails canceled" in cli.ok("bulk", "cancel", operation_id)
    shown = status(cli, operation_id)
    assert (shown["status"], shown["pending"], shown["canceled"]) == ("canceled", 0, 4)
    assert shown["completed_at"] is not None
    assert "is canceled" in cli.refused("bulk", "retry-failed", operation_id)
    assert cli.ok("bulk", "reconcile", "--stale-after", "0") == "nothing to reconcile\n"


def test_bulk_commands_refuse_bad_input_in_one_line(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    cli.ok("users", "add", "--name", "Sam Sender", "--email", "sam@example.org")
    page = cli.cwd / "news.html"
    page.write_text("<p>Hi</p>")
    cli.ok("templates", "create", "--name", "news", "--subject", "News", "--html", str(page))
    send = ("bulk", "send", "--template", "news", "--sender", "sam@example.org", "--query")

    assert "query column 11: expected a value" in cli.refused(*send, "country = ")
    assert "no template named 'old'" in cli.refused(
        "bulk", "send", "--template", "old", "--sender", "sam@example.org", "--query", "id > 0"
    )
    assert "no user or queue has the address" in cli.refused(
        "bulk", "send", "--template", "news", "--sender", "x@example.org", "--query", "id > 0"
    )
    cli.ok("org", "set", "--require-approval-user")
    assert "sender mailbox not approved" in cli.refused(*send, "id > 0")
    assert json.loads(cli.ok("bulk", "list", "--json")) == []
    assert "bulk operation 7 not found" in cli.refused("bulk", "status", "7")
    assert "bulk operation 7 not found" in cli.refused("bulk", "cancel", "7")


def test_a_bulk_operations_emails_carry_its_template_attachment(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    cli.ok("users", "add", "--name", "Sam Sender", "--email", "sam@example.org")
    cli.ok("contacts", "add", "--email", "c0@example.com", "--first-name", "C0")
    page = cli.cwd / "news.html"
    page.write_text("<p>Hi {{ contact.first_name }}</p>")
    cli.ok("templates", "create", "--name", "news", "--subject", "News", "--html", str(page))
    terms = cli.cwd / "terms.txt"
    terms.write_text("the terms\n")
    cli.ok("attachments", "add", "--template", "news", str(terms))
    query = "email = 'c0@example.com'"
    cli.ok("bulk", "send", "--template", "news", "--sender", "sam@example.org", "--query", query)

    (email,) = json.loads(cli.ok("email", "list", "--json"))
    (record,) = json.loads(cli.ok("attachments", "list", "--email", str(email["id"]), "--json"))
    assert (record["object_type"], record["file_name"]) == ("bulk operation", "terms.txt")
    assert "bulk operation" in cli.ok("attachments", "list", "--email", str(email["id"]))
    exported = cli.cwd / "out.eml"
    cli.ok("email", "export", str(email["id"]), "-o", str(exported))
    assert b'filename="terms.txt"' in exported.read_bytes()
    refusal = cli.refused("attachments", "delete", str(record["id"]))
    assert "goes out with every email of bulk operation" in refusal
    assert json.loads(cli.ok("attachments", "list", "--email", str(email["id"]), "--json"))


def test_waiting_on_an_operation_that_no_poller_sends_says_so(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    cli.ok("users", "add", "--name", "Sam Sender", "--email", "sam@example.org")
    cli.ok("contacts", "add", "--email", "c0@example.com", "--first-name", "C0")
    page = cli.cwd / "news.html"
    page.write_text(HTML)
    cli.ok("templates", "create", "--name", "news", "--subject", "News", "--html", str(page))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    assert cli.database_url is not None
    env |= {"BULKMAIL_DATABASE_URL": cli.database_url, "COLUMNS": "200"}
    waiting = subprocess.Popen(
        [
            *(str(BULKMAIL), "bulk", "send", "--template", "news"),
            *("--sender", "sam@example.org", "--query", "country is null", "--wait"),
        ],
        cwd=cli.cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Interrupted once the warning is out (it comes after 10 s without a poller), or after 20 s.
    assert waiting.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(waiting.stdout or ()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and waiting.poll() is None:
        if any("`bulkmail worker poller`" in line for line in lines):
            break
        time.sleep(0.2)
    if waiting.poll() is None:
        waiting.send_signal(signal.SIGINT)
    # Generous: on a loaded machine the interrupted query's cancel can take seconds.
    waiting.wait(timeout=30)
    reader.join(timeout=30)
    waiting.stdout.close()
    out = "".join(lines)
    assert "no poller has run in the last 10 s: 1 emails wait in Pending Send" in out, out
    assert "`bulkmail worker poller`" in out
