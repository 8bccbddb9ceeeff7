"""Templates, attachments, send-template and export through the installed command."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest

from bulkmail import contacts, db, mailboxes, migrate, templates
from tests.acceptance.conftest import Cli


@pytest.fixture
def ready(cli: Cli) -> Cli:
    """A schema, a sender, three contacts and the template "welcome". Seeded through the library:
    the commands that do this are tested on their own, and each call of the command costs about
    a second of start-up."""
    engine = db.make_engine(cli.database_url)
    try:
        migrate.upgrade(engine)
        with db.session_scope(engine) as session:
            mailboxes.add_user(session, name="Sam Sender", email="sam@example.org")
            for n in range(3):
                contacts.add(
                    session,
                    email=f"c{n}@example.com",
                    first_name=f"C{n}",
                    attributes={"plan": f"p{n}"},
                )
            templates.create(
                session,
                name="welcome",
                subject="Welcome {{ contact.first_name }}",
                html="<p>Hello {{ contact.first_name }}, plan {{ contact.attributes.plan }}</p>\n"
                "<p>From {{ sender.name }}</p>\n",
            )
    finally:
        engine.dispose()
    return cli


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ 'x'|attr('format') }}",
    "{{ '{0}'.format_map({}) }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "<p>{% if %}</p>",
]


def test_sandbox_escapes_fail_cleanly(ready: Cli) -> None:
    path = ready.cwd / "evil.html"
    for body in SANDBOX_ESCAPES:
        path.write_text(body)
        ready.refused(
            "templates", "create", "--name", "evil", "--subject", "s", "--html", str(path)
        )
    names = [t["name"] for t in json.loads(ready.ok("templates", "list", "--json"))]
    assert names == ["welcome"]


def test_templates_show_render_update_delete(ready: Cli) -> None:
    shown = json.loads(ready.ok("templates", "show", "welcome", "--json"))
    assert shown["subject"] == "Welcome {{ contact.first_name }}"
    out = ready.ok(
        "templates", "render", "welcome", "--contact", "c1@example.com", "--from", "sam@example.org"
    )
    assert "Subject: Welcome C1" in out
    assert "Hello C1, plan p1" in out
    assert "From Sam Sender" in out
    ready.ok("templates", "update", "welcome", "--subject", "Hi {{ contact.first_name }}")
    rendered = json.loads(
        ready.ok("templates", "render", "welcome", "--contact", "c2@example.com", "--json")
    )
    assert rendered["subject"] == "Hi C2"
    err = ready.refused("templates", "update", "welcome", "--subject", "{{ oops")
    assert "subject template line 1" in err
    assert "deleted" in ready.ok("templates", "delete", "welcome")
    assert "no template named 'welcome'" in ready.refused("templates", "show", "welcome")


def test_a_preview_renders_empty_fields_and_the_ids_of_no_email_as_empty_text(ready: Cli) -> None:
    engine = db.make_engine(ready.database_url)
    try:
        with db.session_scope(engine) as session:
            contacts.add(session, email="anon@example.com", attributes={"plan": "p9"})
            templates.create(
                session,
                name="ids",
                subject="Hi {{ contact.first_name }}",
                html="<p>{{ contact.first_name }}|{{ email.id }}|{{ email.message_id }}</p>",
            )
    finally:
        engine.dispose()
    welcome, ids = (
        json.loads(ready.ok("templates", "render", name, "--contact", "anon@example.com", "--json"))
        for name in ("welcome", "ids")
    )
    assert welcome == {
        "subject": "Welcome",
        "text": "Hello , plan p9\n\nFrom Example Newsletter",
        "html": "<p>Hello , plan p9</p>\n<p>From Example Newsletter</p>",
    }
    assert ids == {"subject": "Hi", "text": "||", "html": "<p>||</p>"}


def test_contact_name_with_header_injection_is_refused(ready: Cli) -> None:
    err = ready.refused(
        "contacts",
        "add",
        "--email",
        "eve@example.com",
        "--first-name",
        "Eve\r\nBcc: someone@example.net",
    )
    assert "first name contains a CR character" in err
    assert json.loads(ready.ok("contacts", "count", "--query", "email = 'eve@example.com'")) == 0


def test_template_attachment_is_stored_once_for_many_sends(ready: Cli) -> None:
    big = ready.cwd / "guide.pdf"
    big.write_bytes(b"%PDF-1.7\n" + b"\x00\x01binary" * 150_000)
    out = ready.ok("attachments", "add", "--template", "welcome", str(big))
    record_id, attachment_id = out.split()
    assert attachment_id.startswith("attachment_id=")
    ids = [
        ready.ok(
            "email",
            "send-template",
            "--template",
            "welcome",
            "--contact",
            f"c{n}@example.com",
            "--from",
            "sam@example.org",
        ).strip()
        for n in range(3)
    ]
    blobs = set()
    for email_id in ids:
        rows = json.loads(ready.ok("attachments", "list", "--email", email_id, "--json"))
        assert [(r["file_name"], r["size"], r["mime_type"]) for r in rows] == [
            ("guide.pdf", big.stat().st_size, "application/pdf")
        ]
        blobs.add(rows[0]["attachment_id"])
    assert blobs == {int(attachment_id.removeprefix("attachment_id="))}
    copy = ready.cwd / "copy.pdf"
    ready.ok("attachments", "get", record_id, "-o", str(copy))
    assert copy.read_bytes() == big.read_bytes()
    shown = json.loads(ready.ok("email", "show", ids[0], "--json"))
    assert (shown["status"], shown["subject"]) == ("Pending Send", "Welcome C0")


def test_upload_limit_and_hostile_names(ready: Cli) -> None:
    ready.ok("org", "set", "--max-upload-size", "1000")
    big = ready.cwd / "big.bin"
    big.write_bytes(b"x" * 1001)
    err = ready.refused("attachments", "add", "--template", "welcome", str(big))
    assert "big.bin is 1,001 bytes" in err
    assert "limit is 1,000 bytes" in err
    small = ready.cwd / "small.txt"
    small.write_text("hello")
    out = ready.ok(
        "attachments", "add", "--template", "welcome", str(small), "--name", "../../etc/passwd"
    )
    record_id = out.split()[0]
    reused = ready.ok(
        "attachments",
        "add",
        "--template",
        "welcome",
        "--reuse",
        out.split()[1].removeprefix("attachment_id="),
        "--name",
        'we"ird\r\n.txt',
    )
    rows = json.loads(ready.ok("attachments", "list", "--template", "welcome", "--json"))
    assert [r["file_name"] for r in rows] == ["passwd", 'we"ird .txt']
    assert "deleted" in ready.ok("attachments", "delete", record_id)
    assert "deleted" in ready.ok("attachments", "delete", reused.split()[0])
    assert json.loads(ready.ok("attachments", "list", "--template", "welcome", "--json")) == []
    err = ready.refused("attachments", "add", "--template", "welcome", "--reuse", "999999")
    assert "attachment_id 999999 not found" in err


def test_export_is_the_message_without_bcc(ready: Cli, tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_text(".leading dot\n" + "y" * 5000 + "\n")
    email_id = ready.ok(
        "email",
        "create",
        "--from",
        "sam@example.org",
        "--to",
        "rita@example.com",
        "--cc",
        "carl@example.com",
        "--bcc",
        "hidden@example.com",
        "--subject",
        "Grüße",
        "--text",
        str(body),
    ).strip()
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    ready.ok("attachments", "add", "--email", email_id, str(logo), "--name", "résumé.png")
    target = tmp_path / "out.eml"
    ready.ok("email", "export", email_id, "-o", str(target))
    raw = target.read_bytes()
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert b"hidden@example.com" not in raw
    assert parsed["Subject"] == "Grüße"
    assert parsed["From"] == "Sam Sender <sam@example.org>"
    assert parsed["To"] == "rita@example.com"
    assert parsed["Cc"] == "carl@example.com"
    shown = json.loads(ready.ok("email", "show", email_id, "--json"))
    assert parsed["Message-ID"] == f"<{shown['message_id']}>"
    text = parsed.get_body(("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == ".leading dot\n" + "y" * 5000 + "\n"
    (attached,) = list(parsed.iter_attachments())
    assert attached.get_filename() == "résumé.png"
    assert attached.get_content() == logo.read_bytes()
