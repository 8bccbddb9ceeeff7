"""Finding the emails sent to an address (``email list --to``) on PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bulkmail import db, emails, errors, mailboxes

SENDER = "sam@example.org"


@pytest.fixture
def pg(engine: sa.Engine) -> sa.Engine:
    """The test's database with a sender (and what each test file needs besides)."""
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Sam Sender", email=SENDER)
    return engine


def write(engine: sa.Engine, subject: str, **lists: list[str]) -> None:
    with db.session_scope(engine) as session:
        emails.create(
            session,
            emails.NewEmail(from_address=SENDER, subject=subject, **lists),  # type: ignore[arg-type]
        )


def subjects(engine: sa.Engine, recipient: str, limit: int = 100) -> list[str]:
    with db.session_scope(engine) as session:
        found = emails.list_emails(session, recipient=recipient, limit=limit)
        return [email.subject for email in found]


def test_an_address_is_found_in_to_cc_and_bcc_whatever_its_case(pg: sa.Engine) -> None:
    write(pg, "to", to=["Ann.Lee@Example.org", "bob@example.org"])
    write(pg, "cc", to=["bob@example.org"], cc=["ann.lee@example.org"])
    write(pg, "bcc", to=["bob@example.org"], bcc=["ANN.LEE@EXAMPLE.ORG"])
    write(pg, "others", to=["ann.lee@example.org.uk", "xann.lee@example.org"], cc=["lee@x.org"])
    write(pg, "idn", to=["ann@bücher.example"])

    assert subjects(pg, "ann.lee@example.org") == ["bcc", "cc", "to"]
    assert subjects(pg, " ANN.LEE@example.ORG ") == ["bcc", "cc", "to"]
    assert subjects(pg, "ann.lee@example.org", limit=2) == ["bcc", "cc"]
    assert subjects(pg, "bob@example.org") == ["bcc", "cc", "to"]
    assert subjects(pg, "nobody@example.org") == []
    assert subjects(pg, "ann@xn--bcher-kva.example") == ["idn"]
    assert subjects(pg, "Ann@Bücher.example") == ["idn"]
    with db.session_scope(pg) as session:
        (found,) = emails.list_emails(session, recipient="bob@example.org", sender=SENDER, limit=1)
        assert found.subject == "bcc"


@pytest.mark.parametrize("value", ["not an address", 'x"]@example.org', "a@b\r\nBcc: c@d.org"])
def test_a_lookup_by_something_that_is_no_address_is_refused(pg: sa.Engine, value: str) -> None:
    with pytest.raises(errors.InvalidInput, match="recipient address"):
        subjects(pg, value)
