"""The walk a new user takes, through the installed command against a fresh PostgreSQL."""

from __future__ import annotations

import dataclasses
import json

from tests.acceptance.conftest import Cli


def test_email_from_create_to_delete(cli: Cli) -> None:
    assert "database at revision" in cli.ok("db", "upgrade")
    admin_id = cli.ok(
        "users",
        "add",
        "--name",
        "Ada Admin",
        "--email",
        "ada@example.org",
        "--privilege",
        "approve_email_address",
    ).strip()
    sender_id = cli.ok("users", "add", "--name", "Sam", "--email", "sam@example.org").strip()
    assert admin_id.isdigit()
    assert sender_id.isdigit()
    assert admin_id != sender_id

    email_id = cli.ok(
        "email",
        "create",
        "--from",
        "sam@example.org",
        "--to",
        "rita@example.com",
        "--cc",
        "carl@example.com",
        "--bcc",
        "bea@example.com",
        "--subject",
        "Quarterly news",
        "--text",
        "-",
        "--priority",
        "high",
        "--send-after",
        "2030-01-01T09:00:00+01:00",
        stdin="Hello Rita\n",
    ).strip()
    shown = json.loads(cli.ok("email", "show", email_id, "--json"))
    assert shown["status"] == "Draft"
    assert (shown["statuscode"], shown["statecode"]) == (1, 0)
    assert shown["subject"] == "Quarterly news"
    assert shown["from"] == "sam@example.org"
    assert (shown["to"], shown["cc"], shown["bcc"]) == (
        ["rita@example.com"],
        ["carl@example.com"],
        ["bea@example.com"],
    )
    assert shown["text"] == "Hello Rita\n"
    assert shown["delivery_attempts"] == 0
    assert shown["failure_reason"] is None
    assert shown["message_id"].endswith("@example.org")
    assert shown["send_after"] == "2030-01-01T08:00:00+00:00"

    cli.ok(
        "email",
        "update",
        email_id,
        "--subject",
        "Quarterly news (v2)",
        "--to",
        "rita@example.com",
        "--to",
        "ron@example.com",
    )
    shown = json.loads(cli.ok("email", "show", email_id, "--json"))
    assert shown["subject"] == "Quarterly news (v2)"
    assert shown["to"] == ["rita@example.com", "ron@example.com"]

    assert "Pending Send" in cli.ok("email", "send", email_id)
    err = cli.refused("email", "update", email_id, "--subject", "too late")
    assert err == (
        f"Error: email {email_id} is Pending Send; only Draft or Failed emails can be edited"
    )
    shown = json.loads(cli.ok("email", "show", email_id, "--json"))
    assert (shown["status"], shown["statuscode"], shown["subject"]) == (
        "Pending Send",
        6,
        "Quarterly news (v2)",
    )

    listed = json.loads(cli.ok("email", "list", "--status", "pending send", "--json"))
    assert [e["id"] for e in listed] == [int(email_id)]
    assert json.loads(cli.ok("email", "list", "--status", "draft", "--json")) == []

    assert "deleted" in cli.ok("email", "delete", email_id)
    err = cli.refused("email", "show", email_id)
    assert f"email {email_id} not found" in err


def test_injection_and_privilege_refusals(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    cli.ok("users", "add", "--name", "Sam", "--email", "sam@example.org")
    cli.ok(
        "users",
        "add",
        "--name",
        "Ada",
        "--email",
        "ada@example.org",
        "--privilege",
        "approve_email_address",
    )

    err = cli.refused(
        "email",
        "create",
        "--from",
        "sam@example.org",
        "--to",
        "a@b.c\r\nRCPT TO:<x@evil>",
        "--subject",
        "x",
    )
    assert "to address contains a CR character" in err
    err = cli.refused(
        "email",
        "create",
        "--from",
        "sam@example.org",
        "--to",
        "ok@example.com",
        "--subject",
        "x\r\nBcc: spy@evil.example",
    )
    assert "subject contains a CR character" in err
    err = cli.refused(
        "email", "create", "--from", "sam@example.org", "--to", "alice@x(<bob@y>", "--subject", "x"
    )
    assert "is not a valid address" in err
    assert json.loads(cli.ok("email", "list", "--json")) == []

    err = cli.refused("mailbox", "approve", "ada@example.org", "--as", "sam@example.org")
    assert "sam@example.org lacks the privilege approve_email_address" in err
    users = {u["email"]: u for u in json.loads(cli.ok("users", "list", "--json"))}
    assert users["ada@example.org"]["approval_status"] == "Empty"

    assert "Approved" in cli.ok("mailbox", "approve", "sam@example.org", "--as", "ada@example.org")
    assert "Rejected" in cli.ok("mailbox", "reject", "sam@example.org", "--as", "ada@example.org")
    users = {u["email"]: u for u in json.loads(cli.ok("users", "list", "--json"))}
    assert users["sam@example.org"]["approval_status"] == "Rejected"

    cli.ok("org", "set", "--require-approval-user")
    email_id = cli.ok(
        "email", "create", "--from", "sam@example.org", "--to", "ok@example.com", "--subject", "hi"
    ).strip()
    err = cli.refused("email", "send", email_id)
    assert "sender mailbox not approved" in err
    assert json.loads(cli.ok("email", "show", email_id, "--json"))["status"] == "Draft"


def test_org_queues_and_contacts(cli: Cli) -> None:
    cli.ok("db", "upgrade")
    org = json.loads(cli.ok("org", "show", "--json"))
    assert org["max_upload_size"] == 5_242_880
    assert (org["require_approval_user"], org["require_approval_queue"]) == (False, False)
    cli.ok("org", "set", "--require-approval-queue", "--max-upload-size", "10000000")
    org = json.loads(cli.ok("org", "show", "--json"))
    assert (org["require_approval_queue"], org["max_upload_size"]) == (True, 10_000_000)
    err = cli.refused("org", "set", "--max-upload-size", "131072001")
    assert "out of range" in err
    assert "131,072,000" in err

    queue_id = cli.ok("queues", "add", "--name", "News", "--email", "news@example.org").strip()
    queues = json.loads(cli.ok("queues", "list", "--json"))
    assert [(q["id"], q["name"], q["email"]) for q in queues] == [
        (int(queue_id), "News", "news@example.org")
    ]
    assert "already exists" in cli.refused(
        "queues", "add", "--name", "N2", "--email", "news@example.org"
    )

    cli.ok(
        "contacts",
        "add",
        "--email",
        "zoe@example.com",
        "--first-name",
        "Zoë",
        "--country",
        "DE",
        "--tag",
        "vip",
        "--attr",
        "plan=pro",
        "--no-bulk-email",
    )
    rows = json.loads(cli.ok("contacts", "list", "--json"))
    assert rows[0]["first_name"] == "Zoë"
    assert rows[0]["attributes"] == {"plan": "pro"}
    assert rows[0]["do_not_bulk_email"] is True
    cli.refused("contacts", "add", "--email", "x@example.com", "--attr", "novalue", code=2)
    assert "zoe@example.com" in cli.ok("contacts", "list")


def test_missing_schema_and_usage_errors(cli: Cli) -> None:
    err = cli.refused("email", "list")
    assert "has no bulkmail schema" in err
    assert "bulkmail db upgrade" in err
    cli.ok("db", "upgrade")
    cli.refused("email", "show", "not-a-number", code=2)
    cli.refused("email", "create", "--from", "x@example.org", "--subject", "no to", code=2)
    err = cli.refused("email", "list", "--status", "bounced")
    assert "unknown status 'bounced'" in err


def test_a_bad_setting_is_one_line_naming_the_variable(cli: Cli) -> None:
    bad = dataclasses.replace(
        cli, env={"BULKMAIL_MAX_ATTEMPTS": "abc", "BULKMAIL_EXPANSION_BATCH": "0"}
    )
    refusal = bad.refused("org", "show")
    assert "BULKMAIL_MAX_ATTEMPTS='abc': input should be a valid integer" in refusal
    assert "BULKMAIL_EXPANSION_BATCH='0': input should be greater than or equal to 1" in refusal
    assert refusal.endswith("fix or unset the environment variable (see the README's Settings)")


def test_unreachable_database_is_one_line(cli: Cli) -> None:
    dead = Cli("postgresql+psycopg://postgres@127.0.0.1:1/none", cli.cwd)
    err = dead.refused("email", "list")
    assert "cannot reach the database" in err
    assert "BULKMAIL_DATABASE_URL" in err
