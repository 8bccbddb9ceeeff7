"""Submitting bulk sends on PostgreSQL: counts that agree with the expansion, and one operation
per idempotency key even when two requests race."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from bulkmail import bulk, contacts, db, errors, expansion, mailboxes, models, submission, templates

SENDER = "sam@example.org"


@pytest.fixture
def pg(engine: sa.Engine) -> sa.Engine:
    """The test's database with a sender (and what each test file needs besides)."""
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Sam Sender", email=SENDER)
        templates.create(session, name="news", subject="News", html="<p>Hi</p>", text="Hi")
        for n in range(12):
            contacts.add(
                session,
                email=None if n % 4 == 3 else f"c{n}@example.com",
                country="DE" if n % 2 else "FR",
                do_not_bulk_email=n % 3 == 0,
            )
    return engine


def asked(query: str = "id > 0", **changes: str) -> submission.Asked:
    fields = {"template_name": "news", "sender_address": SENDER, "query": query}
    return submission.Asked(**(fields | changes))


@pytest.mark.parametrize("query", ["id > 0", "country = 'DE'", "country = 'FR'", "id > 100"])
def test_the_counts_are_the_expansions(pg: sa.Engine, query: str) -> None:
    with db.session_scope(pg) as session:
        counted = submission.audience(session, query)
        operation_id = submission.submit(session, asked(query), allow_empty=True).operation.id
    expansion.expand(pg, operation_id, batch_size=5)
    with db.session_scope(pg) as session:
        done = bulk.get(session, operation_id)
        assert (counted.matched, counted.skipped_opted_out, counted.skipped_no_address) == (
            done.matched,
            done.skipped_opted_out,
            done.skipped_no_address,
        )
        assert counted.recipients == done.created


def test_an_empty_audience_is_refused_unless_allowed(pg: sa.Engine) -> None:
    with pytest.raises(errors.InvalidInput, match="nothing was stored"), db.session_scope(pg) as s:
        submission.submit(s, asked("id > 100"))
    with db.session_scope(pg) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(models.BulkOperation)) == 0
        assert submission.submit(session, asked("id > 100"), allow_empty=True).created


def test_two_requests_with_one_key_racing_store_one_operation(pg: sa.Engine) -> None:
    first = db.session_scope(pg)
    session = first.__enter__()
    mine = submission.submit(session, asked(), idempotency_key="k")
    outcome: list[submission.Submission | BaseException] = []

    def other() -> None:
        try:
            with db.session_scope(pg) as session:
                outcome.append(submission.submit(session, asked(), idempotency_key="k"))
        except BaseException as error:
            outcome.append(error)

    racing = threading.Thread(target=other)
    racing.start()
    # The other request found no operation with the key yet, and waits on the unique index.
    racing.join(timeout=2)
    assert racing.is_alive()
    first.__exit__(None, None, None)
    racing.join(timeout=30)
    (theirs,) = outcome
    assert isinstance(theirs, submission.Submission)
    assert (theirs.operation.id, theirs.created, mine.created) == (mine.operation.id, False, True)
    with db.session_scope(pg) as session:
        assert session.scalars(sa.select(models.BulkOperation.id)).all() == [mine.operation.id]


def test_a_key_repeated_with_another_request_is_refused_naming_the_differences(
    pg: sa.Engine,
) -> None:
    with db.session_scope(pg) as session:
        submission.submit(session, asked(name="Autumn"), idempotency_key="k")
        again = submission.submit(session, asked(name=" Autumn "), idempotency_key="k")
        assert not again.created
    with pytest.raises(errors.Conflict, match="different query and reply-to"):
        with db.session_scope(pg) as session:
            submission.submit(
                session,
                asked("id > 1", name="Autumn", reply_to="help@example.org"),
                idempotency_key="k",
            )
