"""What a sender expects of `bulkmail bulk send`, through the installed command on PostgreSQL:
a query reaching nobody is refused, a dry run stores nothing, a broker that is down does not
invite a second send, and an idempotency key makes a retry return the first operation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import sqlalchemy as sa

from bulkmail import db
from tests import mailserver
from tests.acceptance.conftest import Cli

SENDER = "sam@example.org"
SEND = ("bulk", "send", "--template", "news", "--sender", SENDER)
# Breaks for a contact with one seat, and for nobody else.
HTML = (
    "<p>Hi {{ contact.first_name }}, {{ 100 // ((contact.attributes.seats | int) - 1) }} each</p>"
)
TEXT = "Hi {{ contact.first_name }}"


@pytest.fixture
def seeded(cli: Cli) -> Cli:
    """A sender, the template "news", two contacts in DE, one opted out, one without address."""
    cli.ok("db", "upgrade")
    cli.ok("users", "add", "--name", "Sam Sender", "--email", SENDER)
    page = cli.cwd / "news.html"
    page.write_text(HTML)
    text = cli.cwd / "news.txt"
    text.write_text(TEXT)
    cli.ok(
        *(
            "templates",
            "create",
            "--name",
            "news",
            "--subject",
            "News for {{ contact.first_name }}",
        ),
        *("--html", str(page), "--text", str(text)),
    )
    people = cli.cwd / "people.csv"
    people.write_text(
        "email,first_name,country,do_not_bulk_email,seats\n"
        "c1@example.com,C1,DE,false,5\n"
        "c2@example.com,C2,DE,false,6\n"
        "out@example.com,,DE,true,\n"
        "out2@example.com,,FR,true,\n"
    )
    cli.ok("contacts", "import", str(people))
    # No command stores a contact without an address; older data and other tools do.
    with _engine(cli).begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO contacts (email, country, tags, attributes, do_not_bulk_email,"
                " created_at, modified_at) VALUES (NULL, 'DE', '[]', '{}', false, now(), now()),"
                " (NULL, 'FR', '[]', '{}', false, now(), now())"
            )
        )
    return cli


def _engine(cli: Cli) -> sa.Engine:
    return db.make_engine(cli.database_url, poolclass=sa.NullPool)


def snapshot(cli: Cli) -> dict[str, object]:
    """Every row of every table, and every sequence's position."""
    with _engine(cli).connect() as connection:
        tables = sa.inspect(connection).get_table_names()
        rows: dict[str, object] = {
            name: connection.execute(sa.text(f'SELECT * FROM "{name}" ORDER BY 1')).all()
            for name in tables
        }
        rows["sequences"] = connection.execute(
            sa.text("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
        ).all()
    return rows


def operations(cli: Cli) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = json.loads(cli.ok("bulk", "list", "--json"))
    return listed


def test_a_query_that_reaches_nobody_is_refused_with_the_counts(seeded: Cli) -> None:
    before = snapshot(seeded)
    refusal = seeded.refused(*SEND, "--query", "country = 'NL'")
    assert refusal == (
        "Error: the query matches no contact; nothing was stored (`bulkmail contacts list "
        "--query` shows who matches; --allow-empty stores the operation anyway)"
    )
    refusal = seeded.refused(*SEND, "--query", "country = 'FR'")
    assert refusal.startswith(
        "Error: the query matches 2 contacts, and nobody would get an email: 2 skipped "
        "(1 opted out of bulk email, 1 without an address); nothing was stored"
    )
    assert snapshot(seeded) == before

    operation_id = seeded.ok(*SEND, "--query", "country = 'FR'", "--allow-empty").strip()
    (stored,) = operations(seeded)
    assert stored["id"] == int(operation_id)
    assert (stored["status"], stored["matched"], stored["created"]) == ("completed", 2, 0)
    assert (stored["skipped_opted_out"], stored["skipped_no_address"]) == (1, 1)


def test_a_dry_run_counts_renders_one_sample_and_stores_nothing(seeded: Cli) -> None:
    before = snapshot(seeded)
    query = ("--query", "country = 'DE'", "--reply-to", "Help@Example.org")
    shown = seeded.ok(*SEND, *query, "--dry-run")
    assert shown.startswith("dry run: nothing was stored\n")
    counts = {
        "matched": 4,
        "recipients": 2,
        "skipped, opted out of bulk email": 1,
        "skipped, no address": 1,
    }
    for label, count in counts.items():
        assert f"\n{label:<34}{count:>10}\n" in shown
    assert (
        "From: Sam Sender <sam@example.org>\nTo: c1@example.com\nReply-To: Help@example.org\n"
        "Subject: News for C1\n\n--- text ---\nHi C1\n--- html ---\n<p>Hi C1, 25 each</p>\n"
    ) in shown

    data = json.loads(seeded.ok(*SEND, *query, "--dry-run", "--json"))
    assert data == {
        "dry_run": True,
        "matched": 4,
        "recipients": 2,
        "skipped_opted_out": 1,
        "skipped_no_address": 1,
        "sample": {
            "contact_id": data["sample"]["contact_id"],
            "from": SENDER,
            "from_name": "Sam Sender",
            "to": "c1@example.com",
            "reply_to": "Help@example.org",
            "subject": "News for C1",
            "text": "Hi C1",
            "html": "<p>Hi C1, 25 each</p>",
            "error": None,
        },
    }
    assert snapshot(seeded) == before


def test_a_dry_run_shows_a_render_failure_and_an_empty_audience(seeded: Cli) -> None:
    seeded.ok(
        "contacts", "add", "--email", "a0@example.com", "--country", "AT", "--attr", "seats=1"
    )
    before = snapshot(seeded)
    data = json.loads(seeded.ok(*SEND, "--query", "country = 'AT'", "--dry-run", "--json"))
    assert data["recipients"] == 1
    assert data["sample"]["error"] == (
        "render failed: html template line 1: integer division or modulo by zero"
    )
    assert "it would fail, render failed: html template line 1" in seeded.ok(
        *SEND, "--query", "country = 'AT'", "--dry-run"
    )
    empty = json.loads(seeded.ok(*SEND, "--query", "country = 'FR'", "--dry-run", "--json"))
    assert (empty["matched"], empty["recipients"], empty["sample"]) == (2, 0, None)
    assert "nobody would get an email" in seeded.ok(*SEND, "--query", "country = 'FR'", "--dry-run")
    assert snapshot(seeded) == before


def test_a_dry_run_makes_the_checks_of_a_send(seeded: Cli) -> None:
    before = snapshot(seeded)
    bad = [
        ((*SEND, "--query", "country ="), "query column 10: expected a value"),
        ((*SEND, "--query", "id > 0", "--reply-to", "no address"), "reply-to address"),
        (("bulk", "send", "--template", "nope", "--sender", SENDER, "--query", "id > 0"), "nope"),
    ]
    for args, problem in bad:
        assert problem in seeded.refused(*args, "--dry-run")
    assert "--dry-run stores nothing" in seeded.refused(
        *SEND, "--query", "id > 0", "--dry-run", "--wait", code=2
    )
    assert snapshot(seeded) == before


def test_a_send_while_the_broker_is_down_is_stored_once_and_started_later(seeded: Cli) -> None:
    down = dataclasses.replace(
        seeded, env={"BULKMAIL_BROKER_URL": f"redis://127.0.0.1:{mailserver.free_port()}/0"}
    )
    keyed = (*SEND, "--query", "country = 'DE'", "--idempotency-key", "autumn-2026")
    first = down(*keyed)
    assert first.code == 0, first.err
    operation_id = first.out.strip()
    assert operation_id.isdigit()
    assert "Traceback" not in first.err
    assert "broker cannot be reached" in first.err
    assert "the reconciler will start it when the broker is back" in first.err
    (stored,) = operations(seeded)
    assert (stored["id"], stored["status"]) == (int(operation_id), "queued")
    assert stored["idempotency_key"] == "autumn-2026"

    # The user retries, the broker still down: the same operation, nothing new stored.
    again = down(*keyed)
    assert (again.code, again.out.strip()) == (0, operation_id)
    assert "stored by an earlier request with this idempotency key" in again.err
    assert [op["id"] for op in operations(seeded)] == [int(operation_id)]

    # The same key for another request is refused, and stores nothing.
    refusal = seeded.refused(*SEND, "--query", "country = 'AT'", "--idempotency-key", "autumn-2026")
    assert f"was used for bulk operation {operation_id} with a different query" in refusal

    # Once the broker is back (memory:// expands right here), a retry rings the doorbell.
    back = seeded(*keyed, "--json")
    assert back.code == 0, back.err
    shown = json.loads(back.out)
    assert (shown["id"], shown["stored"]) == (int(operation_id), False)
    assert type(shown["created"]) is int  # the counter, not the flag
    (stored,) = operations(seeded)
    assert (stored["status"], stored["created"], stored["pending"]) == ("sending", 2, 2)
    emails = json.loads(seeded.ok("email", "list", "--json"))
    assert sorted(e["to"][0] for e in emails) == ["c1@example.com", "c2@example.com"]


def test_without_a_key_each_send_stores_its_own_operation(seeded: Cli) -> None:
    for _ in range(2):
        seeded.ok(*SEND, "--query", "country = 'DE'")
    assert [op["idempotency_key"] for op in operations(seeded)] == [None, None]
    assert "idempotency key is empty" in seeded.refused(
        *SEND, "--query", "country = 'DE'", "--idempotency-key", "  "
    )
    assert "idempotency key contains a LF" in seeded.refused(
        *SEND, "--query", "country = 'DE'", "--idempotency-key", "a\nb"
    )
    assert len(operations(seeded)) == 2
