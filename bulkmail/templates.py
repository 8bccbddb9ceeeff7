"""Stored templates: validated when saved, compiled once and rendered per recipient."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import attachments, contacts, errors, headers, models, rendering


class _AnyAttributes(dict[str, object]):
    """Custom attributes differ per contact, so the save-time check accepts any of them; a
    recipient lacking one fails at send time, that email alone, with the reason."""

    def __missing__(self, key: str) -> str:
        return f"sample {key}"


def validate(subject: str, html: str, text: str | None) -> None:
    """The check a template passes when saved: compiles, and renders for a sample contact."""
    sample = {**rendering.SAMPLE_CONTACT, "attributes": _AnyAttributes()}
    rendering.validate(subject=subject, html=html, text=text, contact=sample)


def compile_template(template: models.Template) -> rendering.CompiledTemplate:
    return rendering.compile_template(
        subject=template.subject, html=template.body_html, text=template.body_text
    )


def create(
    session: orm.Session, *, name: str, subject: str, html: str, text: str | None = None
) -> models.Template:
    """Store a template after checking it compiles and renders for a sample contact."""
    name = headers.check_name("template name", name)
    if session.scalar(sa.select(models.Template.id).where(models.Template.name == name)):
        raise errors.Conflict(f"a template named {name!r} already exists; update it instead")
    validate(subject, html, text)
    template = models.Template(name=name, subject=subject, body_html=html, body_text=text)
    session.add(template)
    session.flush()
    return template


def update(
    session: orm.Session,
    name: str,
    *,
    subject: str | None = None,
    html: str | None = None,
    text: str | None = None,
) -> models.Template:
    """Change parts of a template; the result is validated as a whole before it is stored."""
    template = get(session, name)
    new_subject = template.subject if subject is None else subject
    new_html = template.body_html if html is None else html
    new_text = template.body_text if text is None else (text or None)
    validate(new_subject, new_html, new_text)
    template.subject, template.body_html, template.body_text = new_subject, new_html, new_text
    session.flush()
    return template


def get(session: orm.Session, name: str) -> models.Template:
    template = session.scalar(sa.select(models.Template).where(models.Template.name == name))
    if template is None:
        raise errors.NotFound(f"no template named {name!r}; `bulkmail templates list` shows them")
    return template


def list_templates(session: orm.Session) -> list[models.Template]:
    return list(session.scalars(sa.select(models.Template).order_by(models.Template.name)))


def delete(session: orm.Session, name: str) -> None:
    """Delete a template and its attachment records; emails made from it keep theirs."""
    template = get(session, name)
    blobs = attachments.blob_ids(session, attachments.Owner(template_id=template.id))
    session.delete(template)
    session.flush()
    attachments.collect_garbage(session, blobs)


def contact_context(contact: models.Contact) -> dict[str, object]:
    """What a template sees as ``contact``: its fields, tags and ``attributes``."""
    return contacts.as_dict(contact)


def render_for(
    session: orm.Session,
    name: str,
    *,
    contact_address: str,
    sender: models.SystemUser | models.Queue | None = None,
    email_id: int | None = None,
    message_id: str | None = None,
) -> rendering.Rendered:
    """Render a stored template for one contact, as it would go out."""
    template = get(session, name)
    contact = contacts.get_by_email(session, contact_address)
    return rendering.render(
        compile_template(template),
        contact=contact_context(contact),
        sender={"name": sender.name, "address": sender.email}
        if sender
        else rendering.SAMPLE_SENDER,
        email={"id": email_id, "message_id": message_id, "unsubscribe_url": None},
        now=dt.datetime.now(dt.UTC),
    )


def as_dict(template: models.Template) -> dict[str, object]:
    return {
        "id": template.id,
        "name": template.name,
        "subject": template.subject,
        "html": template.body_html,
        "text": template.body_text,
        "created_at": template.created_at.isoformat(),
        "modified_at": template.modified_at.isoformat(),
    }
