"""Stored templates and SendEmailFromTemplate."""

from __future__ import annotations

import email
import email.policy

import pytest
import sqlalchemy as sa

from bulkmail import (
    attachments,
    compose,
    contacts,
    db,
    errors,
    mailboxes,
    models,
    sending,
    templates,
)
from bulkmail.status import Status

HTML = "<p>Hello {{ contact.first_name }} from {{ contact.attributes.city }}</p>"


@pytest.fixture
def seeded(engine: sa.Engine) -> sa.Engine:
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Sam Sender", email="sam@example.org")
        contacts.add(
            session, email="rita@example.com", first_name="Rita", attributes={"city": "Köln"}
        )
        contacts.add(
            session, email="max@example.com", first_name="<b>Max</b>", attributes={"city": "Bonn"}
        )
        templates.create(
            session,
            name="welcome",
            subject="Hi {{ contact.first_name }}",
            html=HTML,
            text=None,
        )
    return engine


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


def test_render_for_a_contact(seeded: sa.Engine) -> None:
    with db.session_scope(seeded) as session:
        rendered = templates.render_for(session, "welcome", contact_address="max@example.com")
    assert rendered.subject == "Hi <b>Max</b>"
    assert rendered.html == "<p>Hello &lt;b&gt;Max&lt;/b&gt; from Bonn</p>"
    assert "Hello <b>Max</b> from Bonn" in rendered.text


def test_a_preview_and_a_single_send_render_an_empty_field_as_empty_text(
    seeded: sa.Engine,
) -> None:
    with db.session_scope(seeded) as session:
        contacts.add(session, email="anon@example.com", attributes={"city": "Köln"})
    with db.session_scope(seeded) as session:
        preview = templates.render_for(session, "welcome", contact_address="anon@example.com")
        sent = sending.send_from_template(
            session,
            template_name="welcome",
            contact_address="anon@example.com",
            from_address="sam@example.org",
        )
        stored = (sent.subject, sent.body_html, sent.body_text)
    assert (preview.subject, preview.html) == ("Hi", "<p>Hello  from Köln</p>")
    assert preview.text == "Hello from Köln"
    assert stored == (preview.subject, preview.html, preview.text)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"html": "<p>{% if %}</p>"}, "html template line 1"),
        ({"subject": "{{ contact.nope }}"}, "contact.nope"),
        ({"html": "{{ ''.__class__.__mro__ }}"}, "__class__"),
        ({"html": "{{ 'x' * 10**9 }}"}, "exceeds"),
        ({"name": "bad\r\nname"}, "template name contains a CR"),
        ({"name": "welcome"}, "already exists"),
    ],
)
def test_bad_templates_are_refused_at_save(
    seeded: sa.Engine, fields: dict[str, str], message: str
) -> None:
    arguments = {"name": "other", "subject": "s", "html": "<p>x</p>", **fields}
    with pytest.raises(errors.BulkmailError, match=message), db.session_scope(seeded) as session:
        templates.create(session, **arguments)
    with db.session_scope(seeded) as session:
        assert [t.name for t in templates.list_templates(session)] == ["welcome"]


def test_update_validates_the_whole_and_keeps_the_old_on_error(seeded: sa.Engine) -> None:
    with pytest.raises(errors.InvalidInput), db.session_scope(seeded) as session:
        templates.update(session, "welcome", html="{{ broken")
    with db.session_scope(seeded) as session:
        templates.update(session, "welcome", subject="Hello {{ contact.first_name }}!")
        template = templates.get(session, "welcome")
        assert (template.subject, template.body_html) == ("Hello {{ contact.first_name }}!", HTML)


def test_send_from_template_stores_rendered_email_with_attachments_by_reference(
    seeded: sa.Engine,
) -> None:
    pdf = b"%PDF" + b"x" * 1_000_000
    with db.session_scope(seeded) as session:
        template_id = templates.get(session, "welcome").id
        attachments.add(
            session, attachments.Owner(template_id=template_id), file_name="guide.pdf", data=pdf
        )
    ids = []
    for address in ("rita@example.com", "max@example.com"):
        with db.session_scope(seeded) as session:
            ids.append(
                sending.send_from_template(
                    session,
                    template_name="welcome",
                    contact_address=address,
                    from_address="sam@example.org",
                ).id
            )
    assert _count(seeded, "attachment_blobs") == 1
    assert _count(seeded, "attachments") == 3
    with db.session_scope(seeded) as session:
        first = session.get(models.Email, ids[0])
        assert first is not None
        assert first.current_status is Status.PENDING_SEND
        assert (first.subject, first.to_addresses) == ("Hi Rita", ["rita@example.com"])
        assert first.body_html == "<p>Hello Rita from Köln</p>"
        assert first.regarding_contact_id is not None
        assert first.template_id == template_id
        raw = compose.message_bytes(session, ids[0])
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Hi Rita"
    assert parsed["To"] == "rita@example.com"
    assert parsed["Message-ID"] == f"<{first.message_id}>"
    (attached,) = list(parsed.iter_attachments())
    assert attached.get_filename() == "guide.pdf"
    assert attached.get_content() == pdf


def test_send_from_template_stores_nothing_when_the_render_fails(seeded: sa.Engine) -> None:
    with db.session_scope(seeded) as session:
        contacts.add(session, email="nocity@example.com", first_name="N")
    with pytest.raises(errors.InvalidInput, match="contact.attributes.city"):
        with db.session_scope(seeded) as session:
            sending.send_from_template(
                session,
                template_name="welcome",
                contact_address="nocity@example.com",
                from_address="sam@example.org",
            )
    assert _count(seeded, "emails") == 0


def test_send_from_template_refuses_a_contact_name_injecting_headers(seeded: sa.Engine) -> None:
    with db.session_scope(seeded) as session:
        contacts_row = contacts.add(
            session, email="evil@example.com", first_name="x", attributes={"city": "c"}
        )
        contacts_row.first_name = "Eve\r\nBcc: someone@example.net"
    with pytest.raises(errors.InvalidInput, match="CR"):
        with db.session_scope(seeded) as session:
            sending.send_from_template(
                session,
                template_name="welcome",
                contact_address="evil@example.com",
                from_address="sam@example.org",
            )
    assert _count(seeded, "emails") == 0


def test_send_without_issuing_marks_sent(seeded: sa.Engine) -> None:
    from bulkmail import emails

    with db.session_scope(seeded) as session:
        draft = emails.create(
            session,
            emails.NewEmail(from_address="sam@example.org", to=["x@example.com"], subject="s"),
        )
        emails.send(session, draft.id, issue_send=False)
    with db.session_scope(seeded) as session:
        row = session.get(models.Email, draft.id)
        assert row is not None
        assert row.current_status is Status.SENT
        assert row.sent_at is not None


def test_deleting_a_template_keeps_emails_and_shared_blobs(seeded: sa.Engine) -> None:
    with db.session_scope(seeded) as session:
        template_id = templates.get(session, "welcome").id
        attachments.add(
            session, attachments.Owner(template_id=template_id), file_name="a.txt", data=b"a"
        )
        attachments.add(
            session, attachments.Owner(template_id=template_id), file_name="b.txt", data=b"b"
        )
        sent = sending.send_from_template(
            session,
            template_name="welcome",
            contact_address="rita@example.com",
            from_address="sam@example.org",
        )
    with db.session_scope(seeded) as session:
        templates.delete(session, "welcome")
    assert _count(seeded, "attachment_blobs") == 2
    with db.session_scope(seeded) as session:
        row = session.get(models.Email, sent.id)
        assert row is not None
        assert row.template_id is None
        assert len(attachments.list_for(session, attachments.Owner(email_id=sent.id))) == 2
    with db.session_scope(seeded) as session:
        from bulkmail import emails

        emails.cancel(session, sent.id)
        emails.delete(session, sent.id)
    assert _count(seeded, "attachment_blobs") == 0
