"""Contacts: the people bulk mail goes to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import errors, headers, models

_TEXT_FIELDS = {"first_name": 200, "last_name": 200, "company": 200, "country": 100, "language": 35}


def normalize_email(value: str) -> str:
    # Contacts are matched case-insensitively on import and in queries.
    return headers.normalize_address(value, field="contact address").lower()


def add(
    session: orm.Session,
    *,
    email: str | None,
    first_name: str | None = None,
    last_name: str | None = None,
    company: str | None = None,
    country: str | None = None,
    language: str | None = None,
    tags: Iterable[str] = (),
    attributes: Mapping[str, object] | None = None,
    do_not_bulk_email: bool = False,
) -> models.Contact:
    address = normalize_email(email) if email is not None else None
    if address is not None and session.scalar(
        sa.select(models.Contact.id).where(models.Contact.email == address)
    ):
        raise errors.Conflict(f"a contact with the address {address} already exists")
    fields = {
        "first_name": first_name,
        "last_name": last_name,
        "company": company,
        "country": country,
        "language": language,
    }
    for name, value in fields.items():
        if value is not None:
            headers.check_header_value(name.replace("_", " "), value)
            if len(value) > _TEXT_FIELDS[name]:
                raise errors.InvalidInput(
                    f"{name.replace('_', ' ')} is longer than {_TEXT_FIELDS[name]} characters"
                )
    clean_tags = sorted({headers.check_header_value("tag", t).strip() for t in tags} - {""})
    contact = models.Contact(
        email=address,
        tags=clean_tags,
        attributes=dict(attributes or {}),
        do_not_bulk_email=do_not_bulk_email,
        **fields,
    )
    session.add(contact)
    session.flush()
    return contact


def list_contacts(session: orm.Session, *, limit: int = 100) -> list[models.Contact]:
    query = sa.select(models.Contact).order_by(models.Contact.id).limit(limit)
    return list(session.scalars(query))


def get_by_email(session: orm.Session, address: str) -> models.Contact:
    contact = session.scalar(
        sa.select(models.Contact).where(models.Contact.email == address.strip().lower())
    )
    if contact is None:
        raise errors.NotFound(f"no contact has the address {address.strip()}")
    return contact


def as_dict(contact: models.Contact) -> dict[str, object]:
    return {
        "id": contact.id,
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "company": contact.company,
        "country": contact.country,
        "language": contact.language,
        "tags": list(contact.tags),
        "attributes": dict(contact.attributes),
        "do_not_bulk_email": contact.do_not_bulk_email,
    }
