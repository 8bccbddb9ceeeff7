"""The demo's sample data (``bulkmail demo``): contacts, a sender mailbox, a template with an
attachment, and the recipient query of its bulk send.

Some contacts opted out of bulk email and some have no address, so the send shows them skipped
and counted. The same count of contacts always gets the same data.
"""

from __future__ import annotations

import random

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import attachments, mailboxes, models, status, templates

SENDER = "newsletter@example.org"
SENDER_NAME = "bulkmail demo"
TEMPLATE = "welcome"
QUERY = "country != 'US' or attributes.plan = 'team'"
COUNTRIES = ["DE", "FR", "GB", "NL", "SE", "US"]
PLANS = ["free", "pro", "team"]
SUBJECT = "Welcome, {{ contact.first_name }}"
HTML = """<html><body>
<h1>Hello {{ contact.first_name }}!</h1>
<p>Thank you for using the <b>{{ contact.attributes.plan }}</b> plan in
{{ contact.country }}.</p>
<ul>{% for tag in contact.tags %}<li>{{ tag }}</li>{% endfor %}</ul>
<p>Our price list is attached.</p>
<p>{{ sender.name }}</p>
</body></html>
"""
TEXT = """Hello {{ contact.first_name }}!

Thank you for using the {{ contact.attributes.plan }} plan in {{ contact.country }}.
Our price list is attached.

{{ sender.name }}
"""
ATTACHMENT = "price-list.csv"


def address(number: int) -> str:
    """The address of the demo's contact ``number`` (from 0)."""
    return f"contact{number}@example.com"


def seed(session: orm.Session, contacts: int) -> None:
    """Store ``contacts`` contacts (every 50th opted out, every 97th without an address), the
    sender mailbox, and the template with its attachment."""
    chance = random.Random(42)
    now = models.utcnow()
    rows = [
        {
            "email": None if n % 97 == 96 else address(n),
            "first_name": f"Contact{n}",
            "last_name": "Demo",
            "country": chance.choice(COUNTRIES),
            "language": "en",
            "tags": sorted(chance.sample(["beta", "newsletter", "vip"], k=chance.randint(0, 2))),
            "attributes": {"plan": chance.choice(PLANS)},
            "do_not_bulk_email": n % 50 == 49,
            "created_at": now,
            "modified_at": now,
        }
        for n in range(contacts)
    ]
    session.execute(sa.insert(models.Contact), rows)
    mailboxes.add_user(session, name=SENDER_NAME, email=SENDER)
    template = templates.create(session, name=TEMPLATE, subject=SUBJECT, html=HTML, text=TEXT)
    price_list = "product,price\n" + "".join(f"item {i},{i * 3}.00\n" for i in range(200))
    attachments.add(
        session,
        attachments.Owner(template_id=template.id),
        file_name=ATTACHMENT,
        data=price_list.encode(),
    )


def sent_message_ids(session: orm.Session, operation_id: int) -> set[str]:
    """The Message-IDs of the bulk operation's Sent emails, to check against what arrived."""
    return set(
        session.scalars(
            sa.select(models.Email.message_id).where(
                models.Email.bulk_operation_id == operation_id,
                models.Email.statuscode == int(status.Status.SENT),
            )
        )
    )
