"""SendEmailFromTemplate: one email rendered for one contact from a stored template, then sent."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import orm

from bulkmail import attachments, contacts, emails, mailboxes, models, rendering, templates


def send_from_template(
    session: orm.Session,
    *,
    template_name: str,
    contact_address: str,
    from_address: str,
    reply_to: str | None = None,
    message_id_domain: str | None = None,
) -> models.Email:
    """Render ``template_name`` for the contact, store the email with the template's
    attachments by reference (no new blob), and move it to Pending Send.

    A render error or a blocked sender raises, and the caller's transaction stores nothing.
    """
    template = templates.get(session, template_name)
    contact = contacts.get_by_email(session, contact_address)
    sender = mailboxes.find(session, from_address)
    assert contact.email is not None  # found by its address
    email = emails.create(
        session,
        emails.NewEmail(
            from_address=sender.email,
            to=[contact.email],
            reply_to=reply_to,
            subject="",
            regarding_contact_id=contact.id,
            template_id=template.id,
        ),
        message_id_domain=message_id_domain,
    )
    rendered = rendering.render(
        templates.compile_template(template),
        contact=templates.contact_context(contact),
        sender={"name": sender.name, "address": sender.email},
        # One email to one contact is no bulk mail: it carries no unsubscribe link.
        email={"id": email.id, "message_id": email.message_id, "unsubscribe_url": None},
        now=dt.datetime.now(dt.UTC),
    )
    email.subject, email.body_html, email.body_text = rendered.subject, rendered.html, rendered.text
    attachments.link_template_attachments(session, template.id, models.Email.id == email.id)
    return emails.send(session, email.id)
