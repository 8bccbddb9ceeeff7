"""Human tables in an 80-column terminal: no line is longer, the key columns stay, text wraps
inside its column, and what is left out is named (``--json`` has everything)."""

from __future__ import annotations

import dataclasses
import json

from tests.acceptance.conftest import Cli

SENDER = "samantha.sender.longname@newsletter-department.example.org"
TEMPLATE = "autumn newsletter 2026 for our enterprise customers"
WIDTH = 80


def seed(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    cli.ok(
        "users", "add", "--name", "Samantha Sender-Longname of the Newsletter", "--email", SENDER
    )
    cli.ok(
        "queues", "add", "--name", "Customer Support Europe", "--email", "support-eu@example.org"
    )
    people = cli.cwd / "people.csv"
    people.write_text(
        "email,first_name,last_name,country,tags,plan,notes\n"
        + "".join(
            f"person.number{n}.with.a.long.address@subdomain.example-company.org,"
            "Maximilian-Alexander,Oberbergmeister-Schwarzenegger,DE,customer;vip;beta-tester,"
            "enterprise,a note of several words\n"
            for n in range(3)
        )
    )
    cli.ok("contacts", "import", str(people))
    page = cli.cwd / "news.html"
    page.write_text("<p>Hi {{ contact.first_name }}</p>")
    cli.ok(
        *("templates", "create", "--name", TEMPLATE, "--html", str(page)),
        *("--subject", "All the news of the season for you, {{ contact.first_name }}!"),
    )
    terms = cli.cwd / "terms-and-conditions-of-the-enterprise-plan-2026.pdf"
    terms.write_bytes(b"%PDF-1.4 terms")
    cli.ok("attachments", "add", "--template", TEMPLATE, str(terms), "--content-id", "terms@x")
    cli.ok(
        *("bulk", "send", "--template", TEMPLATE, "--sender", SENDER, "--query", "id > 0"),
        *("--name", "Autumn newsletter 2026 to every enterprise customer in Germany"),
        *("--reply-to", "customer-care-department@newsletter-department.example.org"),
    )
    cli.ok(
        *("email", "create", "--from", SENDER, "--to", "a.very.long.recipient@example.org"),
        *("--to", "Second.Recipient@example.org", "--cc", "third.recipient@example.org"),
        *("--subject", "A subject long enough to need wrapping in a narrow terminal window"),
    )


def assert_fits(out: str) -> None:
    too_long = [line for line in out.splitlines() if len(line) > WIDTH]
    assert not too_long, "\n".join(too_long)


def header(out: str) -> list[str]:
    """The column names of a table, from its header row."""
    line = next(line for line in out.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def first_cells(out: str) -> list[str]:
    """The first column of a table's rows (continuation lines left out)."""
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    return [cell for cell in rows if cell]


def test_every_list_and_status_fits_80_columns(cli: Cli) -> None:
    seed(cli)
    narrow = dataclasses.replace(cli, env={"COLUMNS": str(WIDTH)})

    def listed(*args: str) -> tuple[str, list[dict[str, object]]]:
        out = narrow.ok(*args)
        assert_fits(out)
        data: list[dict[str, object]] = json.loads(narrow.ok(*args, "--json"))
        assert first_cells(out) == [str(row["id"]) for row in data]
        return out, data

    out, operations = listed("bulk", "list")
    assert header(out)[:3] == ["id", "name", "status"]
    assert "sending" in out
    assert "not shown: " in out
    assert "(see --json)" in out
    assert operations[0]["created_at"] is not None

    out, emails = listed("email", "list")
    assert header(out)[:2] == ["id", "status"]
    assert {"to", "subject"} <= set(header(out))
    assert out.count("Pending Send") == 3
    assert "Draft" in out
    assert "created_at" in json.dumps(emails)

    out, found = listed("email", "list", "--to", "second.recipient@EXAMPLE.org")
    assert [email["subject"] for email in found] == [
        "A subject long enough to need wrapping in a narrow terminal window"
    ]
    assert "Draft" in out

    out, _ = listed("contacts", "list")
    assert header(out)[:2] == ["id", "email"]
    for args, columns in [
        (("users", "list"), ["id", "name", "email"]),
        (("queues", "list"), ["id", "name", "email", "approval_status"]),
        (("templates", "list"), ["id", "name", "subject"]),
        (("attachments", "list", "--template", TEMPLATE), ["id", "object_type"]),
    ]:
        out, _ = listed(*args)
        assert header(out)[: len(columns)] == columns

    for args in [
        ("bulk", "status", str(operations[0]["id"])),
        ("email", "show", str(emails[0]["id"])),
        ("templates", "show", TEMPLATE),
        ("org", "show"),
    ]:
        out = narrow.ok(*args)
        assert_fits(out)
        assert "│ id " in out or args[0] == "org"
    status = narrow.ok("bulk", "status", str(operations[0]["id"]))
    assert "│ status " in status
    assert "│ reply_to " in status


def test_a_wide_terminal_shows_every_column(cli: Cli) -> None:
    seed(cli)
    out = cli.ok("email", "list")  # 200 columns
    assert header(out) == [
        "id",
        "status",
        "from",
        "to",
        "subject",
        "delivery_attempts",
        "created_at",
    ]
    assert "not shown" not in out
