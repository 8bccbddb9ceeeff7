"""One address is one address everywhere: in any case, with its domain typed as Unicode or as
its A-label, and never with a local part over RFC 5321's 64 octets."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bulkmail import contacts, db, emails, errors, headers, importer, mailboxes
from tests import mailserver

LONG_LOCAL_PARTS = ["x" * 65, "ü" * 33]  # 65 and 66 octets (33 characters)


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("a@münchen.de", "a@xn--mnchen-3ya.de"),
        ("a@MÜNCHEN.DE", "a@xn--mnchen-3ya.de"),
        ("a@XN--MNCHEN-3YA.de", "a@xn--mnchen-3ya.de"),
        ("Jörg@Bücher.example", "Jörg@xn--bcher-kva.example"),
        ("Plain@Example.COM", "Plain@example.com"),
        ("x" * 64 + "@example.com", "x" * 64 + "@example.com"),
    ],
)
def test_the_canonical_form_keeps_the_local_part_and_writes_the_domain_as_an_a_label(
    typed: str, stored: str
) -> None:
    assert headers.normalize_address(typed) == stored
    assert contacts.normalize_email(typed) == stored.lower()
    assert mailboxes.normalize_email(typed) == stored.lower()


@pytest.mark.parametrize("local", LONG_LOCAL_PARTS)
def test_a_local_part_over_64_octets_is_refused_everywhere_an_address_enters(
    engine: sa.Engine, local: str
) -> None:
    address = f"{local}@example.com"
    octets = len(local.encode())
    reason = f"the part before the @ is {octets} octets long, and RFC 5321 allows 64; shorten it"
    mailserver.add_sender(engine)
    with db.session_scope(engine) as session:
        with pytest.raises(errors.InvalidInput, match=f"^contact address .*{reason}$"):
            contacts.add(session, email=address)
        with pytest.raises(errors.InvalidInput, match=f"^email address .*{reason}$"):
            mailboxes.add_user(session, name="Long", email=address)
        with pytest.raises(errors.InvalidInput, match=f"^email address .*{reason}$"):
            mailboxes.add_queue(session, name="Long", email=address)
        new = emails.NewEmail(from_address=mailserver.SENDER, to=[address], subject="Hi")
        with pytest.raises(errors.InvalidInput, match=f"^to address .*{reason}$"):
            emails.create(session, new)
        rejected: list[importer.Rejected] = []
        result = importer.import_csv(
            session, ["email\n", f"{address}\n", "ok@example.com\n"], on_rejected=rejected.append
        )
    assert (result.inserted, result.rejected) == (1, 1)
    assert (
        str(rejected[0]) == f"line 2: contact address {address!r} is not a valid address: {reason}"
    )


def test_contacts_are_one_in_any_case_and_domain_form(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        contact_id = contacts.add(session, email="Ada@München.de").id
        with pytest.raises(errors.Conflict, match="ada@xn--mnchen-3ya.de already exists"):
            contacts.add(session, email="ADA@xn--mnchen-3ya.de")
        for typed in ("ada@münchen.de", "ADA@XN--MNCHEN-3YA.DE", " Ada@München.DE "):
            assert contacts.get_by_email(session, typed).id == contact_id
        result = importer.import_csv(
            session, ["email,first_name\n", "ada@MÜNCHEN.de,Ada\n", "ADA@xn--mnchen-3ya.de,A\n"]
        )
        assert (result.inserted, result.updated, result.duplicates) == (0, 1, 1)
        assert contacts.count(session) == 1
        assert contacts.get_by_email(session, "ada@münchen.de").first_name == "A"


def test_mailboxes_are_one_in_any_case_and_domain_form(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        user = mailboxes.add_user(session, name="Ops", email="Ops@Bücher.example")
        assert user.email == "ops@xn--bcher-kva.example"
        with pytest.raises(errors.Conflict, match="already exists"):
            mailboxes.add_queue(session, name="Ops", email="OPS@xn--BCHER-kva.example")
        for typed in ("ops@bücher.example", "OPS@XN--BCHER-KVA.EXAMPLE"):
            assert mailboxes.find(session, typed).id == user.id
            assert mailboxes.find_optional(session, typed) is user
        assert mailboxes.find_optional(session, "not an address") is None
        email = emails.create(
            session,
            emails.NewEmail(from_address="OPS@bücher.example", to=["a@münchen.de"], subject="Hi"),
        )
        assert (email.from_address, email.to_addresses) == (
            "ops@xn--bcher-kva.example",
            ["a@xn--mnchen-3ya.de"],
        )
        assert email.message_id.endswith("@xn--bcher-kva.example")
        for sender in ("Ops@Bücher.Example", "ops@xn--bcher-kva.example"):
            assert [e.id for e in emails.list_emails(session, sender=sender)] == [email.id]
