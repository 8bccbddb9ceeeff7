"""Contacts: the people bulk mail goes to."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import email_validator
import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import errors, headers, models
from bulkmail import query as query_module

# The longest value each text field holds (the column widths of the schema).
TEXT_FIELDS = {"first_name": 200, "last_name": 200, "company": 200, "country": 100, "language": 35}

# Addresses that email-validator accepts unchanged (apart from case), checked in well under a
# microsecond: ASCII dot-atom local part, hostname labels without "--", an all-letter TLD.
# Anything else goes through email-validator itself, which takes ~20 us per address; imports
# of a million rows are dominated by it otherwise.
_SIMPLE_ADDRESS = re.compile(
    r"[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,63})"
)
_SPECIAL_USE_DOMAINS = frozenset(email_validator.SPECIAL_USE_DOMAIN_NAMES)


def normalize_email(value: str) -> str:
    """The stored form of a contact address: ``headers.normalize_address``'s, lowercased.

    So the domain is an A-label (``a@münchen.de`` is stored as ``a@xn--mnchen-3ya.de``) and
    contacts are matched case-insensitively on import, on lookup and in queries.
    """
    # ASCII first: str.lower() maps a few non-ASCII letters (the Kelvin sign) to ASCII ones.
    lowered = value.lower()
    simple = _SIMPLE_ADDRESS.fullmatch(lowered) if value.isascii() else None
    if simple is not None:
        at = lowered.index("@")
        if (
            at <= headers.MAX_LOCAL_PART
            and len(lowered) <= headers.MAX_ADDRESS_LENGTH
            and "--" not in lowered[at:]
            and simple.group(1) not in _SPECIAL_USE_DOMAINS
        ):
            return lowered
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
    _check_texts(fields)
    contact = models.Contact(
        email=address,
        tags=_clean_tags(tags),
        attributes=dict(attributes or {}),
        do_not_bulk_email=do_not_bulk_email,
        **fields,
    )
    session.add(contact)
    session.flush()
    return contact


def _check_texts(fields: Mapping[str, str | None]) -> None:
    for name, value in fields.items():
        if value is not None:
            headers.check_header_value(name.replace("_", " "), value)
            if len(value) > TEXT_FIELDS[name]:
                raise errors.InvalidInput(
                    f"{name.replace('_', ' ')} is longer than {TEXT_FIELDS[name]} characters"
                )


def _clean_tags(tags: Iterable[str]) -> list[str]:
    return sorted({headers.check_header_value("tag", t).strip() for t in tags} - {""})


def get(session: orm.Session, contact_id: int) -> models.Contact:
    contact = session.get(models.Contact, contact_id)
    if contact is None:
        raise errors.NotFound(f"no contact has the id {contact_id}")
    return contact


def update(
    session: orm.Session,
    contact_id: int,
    *,
    email: str | None = None,
    texts: Mapping[str, str | None] | None = None,
    tags: Iterable[str] | None = None,
    attributes: Mapping[str, object] | None = None,
    do_not_bulk_email: bool | None = None,
) -> models.Contact:
    """Change the given fields of a contact (``texts``: first_name … language; a None value
    empties that field); what is not given stays as it is."""
    contact = get(session, contact_id)
    if email is not None:
        address = normalize_email(email)
        other = session.scalar(
            sa.select(models.Contact.id).where(
                models.Contact.email == address, models.Contact.id != contact_id
            )
        )
        if other is not None:
            raise errors.Conflict(f"contact {other} has the address {address} already")
        contact.email = address
    if texts:
        unknown = sorted(set(texts) - set(TEXT_FIELDS))
        if unknown:
            raise errors.InvalidInput(f"unknown contact field {', '.join(unknown)}")
        _check_texts(texts)
        for name, value in texts.items():
            setattr(contact, name, value)
    if tags is not None:
        contact.tags = _clean_tags(tags)
    if attributes is not None:
        contact.attributes = dict(attributes)
    if do_not_bulk_email is not None:
        contact.do_not_bulk_email = do_not_bulk_email
    session.flush()
    return contact


def delete(session: orm.Session, contact_id: int) -> None:
    """Delete a contact; emails sent to it keep their addresses (their link is cleared)."""
    session.delete(get(session, contact_id))
    session.flush()


def list_contacts(
    session: orm.Session, *, query: str | None = None, limit: int = 100, after: int = 0
) -> list[models.Contact]:
    """The first ``limit`` contacts (by id, from the id after ``after``: keyset pagination)
    that match the recipient ``query``, or all."""
    select = (
        sa.select(models.Contact)
        .where(models.Contact.id > after)
        .order_by(models.Contact.id)
        .limit(limit)
    )
    if query is not None:
        select = select.where(query_module.parse(query))
    return list(session.scalars(select))


def count(session: orm.Session, query: str | None = None) -> int:
    """How many contacts match the recipient ``query`` (all contacts without one)."""
    select = sa.select(sa.func.count()).select_from(models.Contact)
    if query is not None:
        select = select.where(query_module.parse(query))
    return session.scalar(select) or 0


def get_by_email(session: orm.Session, address: str) -> models.Contact:
    contact = session.scalar(
        sa.select(models.Contact).where(models.Contact.email == normalize_email(address))
    )
    if contact is None:
        raise errors.NotFound(f"no contact has the address {address.strip()}")
    return contact


# A contact as templates see it and `contacts list --json` shows it, in this order.
FIELDS = (
    "id",
    "email",
    "first_name",
    "last_name",
    "company",
    "country",
    "language",
    "tags",
    "attributes",
    "do_not_bulk_email",
)


def as_dict(contact: models.Contact) -> dict[str, object]:
    data = {name: getattr(contact, name) for name in FIELDS}
    # Copies, so that changing the dict leaves the ORM object as it is.
    data["tags"] = list(contact.tags)
    data["attributes"] = dict(contact.attributes)
    return data
