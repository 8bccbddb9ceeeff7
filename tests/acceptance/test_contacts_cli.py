"""Contacts at scale through the installed command: import a CSV, preview a recipient query."""

from __future__ import annotations

import json

from tests.acceptance.conftest import Cli

CSV = (
    "email,first_name,country,tags,do_not_bulk_email,plan,seats\n"
    "ada@example.org,Ada,DE,customer;vip,,pro,12\n"  # 2
    "bob@example.com,Bob,DE,customer;churned,,team,3\n"  # 3
    "not-an-address,Nobody,DE,,,pro,1\n"  # 4
    "cy@example.net,Cy,FR,customer,yes,team,40\n"  # 5
    "dee@example.org,Dee,DE,,maybe,free,\n"  # 6
    "eve@example.org,Eve,DE,newsletter,,team,7\n"  # 7
)
EXAMPLE = "country = 'DE' and attributes.plan in ('pro','team') and not tags contains 'churned'"


def test_import_then_preview_recipients(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    (cli.cwd / "contacts.csv").write_text(CSV, encoding="utf-8")

    err = cli.refused("contacts", "import", "contacts.csv", "--strict")
    assert err.startswith("Error: line 4: contact address 'not-an-address' is not a valid")
    assert err.endswith("; nothing was imported (strict mode)")
    assert cli.ok("contacts", "count").strip() == "0"

    done = cli("contacts", "import", "contacts.csv")
    assert done.code == 3, done.err  # imported, but with rejected rows
    assert done.err.splitlines() == [
        "line 4: contact address 'not-an-address' is not a valid address: "
        "An email address must have an @-sign.",
        "line 6: do_not_bulk_email 'maybe' is not one of true/false, 1/0, yes/no",
    ]
    assert done.out.strip() == (
        "6 rows: 4 inserted, 0 updated, 0 unchanged, 0 duplicates (a later row won), 2 rejected"
    )

    assert cli.ok("contacts", "count").strip() == "4"
    assert cli.ok("contacts", "count", "--query", EXAMPLE).strip() == "2"
    listed = json.loads(cli.ok("contacts", "list", "--query", EXAMPLE, "--json"))
    assert [row["email"] for row in listed] == ["ada@example.org", "eve@example.org"]
    assert listed[0]["attributes"] == {"plan": "pro", "seats": "12"}
    assert listed[0]["tags"] == ["customer", "vip"]
    limited = json.loads(
        cli.ok("contacts", "list", "--query", "attributes.seats > 5", "--limit", "2", "--json")
    )
    assert [row["email"] for row in limited] == ["ada@example.org", "cy@example.net"]
    table = cli.ok("contacts", "list", "--query", "do_not_bulk_email = true")
    assert "cy@example.net" in table
    assert "ada@example.org" not in table

    repeated = cli("contacts", "import", "contacts.csv", "--json")
    assert repeated.code == 3, repeated.err
    again = json.loads(repeated.out)
    assert again == {
        "rows": 6,
        "inserted": 0,
        "updated": 0,
        "unchanged": 4,
        "duplicates": 0,
        "rejected": 2,
        "rejections": [
            {
                "line": 4,
                "reason": "contact address 'not-an-address' is not a valid address: "
                "An email address must have an @-sign.",
            },
            {
                "line": 6,
                "reason": "do_not_bulk_email 'maybe' is not one of true/false, 1/0, yes/no",
            },
        ],
    }


def test_a_bad_query_is_one_clean_line(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    err = cli.refused("contacts", "count", "--query", "country = ")
    assert err == (
        "Error: query column 11: expected a value ('text', 42, true, false or "
        "date '2026-01-31') after '=', found the end of the query"
    )
    err = cli.refused("contacts", "list", "--query", "contry = 'DE'")
    assert err.startswith("Error: query column 1: unknown field 'contry' (did you mean country?)")
    err = cli.refused("contacts", "list", "--query", "country = 'DE' and\n(tags = 'x'")
    assert (
        err
        == "Error: query line 2 column 12: expected ')' after \"'x'\", found the end of the query"
    )
