"""The migrations own the schema: they must build exactly what the models describe, and the
database itself must refuse what the models forbid."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bulkmail import db, migrate, models
from bulkmail.status import FailureKind
from tests import mailserver


def test_migrations_and_models_agree(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "target_metadata": models.Base.metadata}
        )
        diff = compare_metadata(context, models.Base.metadata)
    assert diff == []
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_upgrade_twice_is_a_no_op(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_downgrade_to_base_and_back(engine: sa.Engine) -> None:
    migrate.downgrade(engine, "base")
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    migrate.upgrade(engine)
    assert {"emails", "contacts", "system_users", "queues", "organization"} <= set(
        sa.inspect(engine).get_table_names()
    )


def _insert_email(connection: sa.Connection, statecode: int, statuscode: int | None) -> None:
    connection.execute(
        sa.text(
            "INSERT INTO emails (statecode, statuscode, direction, from_address, to_addresses,"
            " cc_addresses, bcc_addresses, subject, priority, delivery_attempts, message_id,"
            " tracking_token, created_at, modified_at) VALUES (:state, :status, 1, 'a@example.org',"
            " '[]', '[]', '[]', 's', 1, 0, :mid, :token, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        ),
        {
            "state": statecode,
            "status": statuscode,
            "mid": f"{statecode}-{statuscode}@example.org",
            "token": f"00000000-0000-0000-0000-00000000{statecode:02d}{statuscode or 0:02d}",
        },
    )


@pytest.mark.parametrize(
    ("statecode", "statuscode"), [(0, 3), (1, 1), (2, 6), (0, 5), (1, 8), (0, 99), (5, 1)]
)
def test_database_rejects_a_status_outside_its_state(
    engine: sa.Engine, statecode: int, statuscode: int
) -> None:
    with (
        pytest.raises(sa.exc.IntegrityError, match="ck_emails_status_in_state"),
        engine.begin() as c,
    ):
        _insert_email(c, statecode, statuscode)


def test_database_rejects_a_null_status(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        _insert_email(connection, 0, None)


def test_database_accepts_every_valid_pair_and_refuses_a_bad_update(engine: sa.Engine) -> None:
    pairs = [(0, 1), (0, 8), (1, 2), (1, 3), (1, 4), (1, 6), (1, 7), (2, 5)]
    with engine.begin() as connection:
        for state, code in pairs:
            _insert_email(connection, state, code)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(sa.text("UPDATE emails SET statuscode = 3 WHERE statuscode = 1"))
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM emails")) == len(pairs)


def test_organization_row_exists_with_defaults(engine: sa.Engine) -> None:
    with db.session_scope(engine) as session:
        org = session.get(models.Organization, 1)
        assert org is not None
        assert (org.require_approval_user, org.require_approval_queue) == (False, False)
        assert org.max_upload_size == 5_242_880


def test_organization_upload_limit_is_checked_by_the_database(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(sa.text("UPDATE organization SET max_upload_size = 131072001"))


def test_claim_indexes_exist(engine: sa.Engine) -> None:
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("emails")}
    assert {"ix_emails_pending_claim", "ix_emails_sending_lease"} <= names


@pytest.mark.parametrize(
    "tags",
    [
        [],
        ["vip"],
        ["a", "b"],
        ['a", "b', "c"],  # a separator inside a value must not split it
        ['say "hi"', "back\\slash", "tab\there"],
        ["Köln", "東京", ""],
    ],
)
def test_json_lists_read_back_exactly(engine: sa.Engine, tags: list[str]) -> None:
    with db.session_scope(engine) as session:
        contact = models.Contact(email="json@example.com", tags=tags, attributes={"k": [1, "x"]})
        session.add(contact)
    with db.session_scope(engine) as session:
        stored = session.scalars(sa.select(models.Contact)).one()
        assert (stored.tags, stored.attributes) == (tags, {"k": [1, "x"]})


def test_email_bodies_are_stored_with_lz4_where_the_server_has_it(pg_url: str) -> None:
    # The embedded PostgreSQL (the suite's own server) is built without lz4: there the bodies
    # keep PostgreSQL's default, pglz. BULKMAIL_TEST_PG naming a server with lz4 checks lz4.
    engine = db.make_engine(pg_url, poolclass=sa.NullPool)
    migrate.upgrade(engine)
    body = "".join(f"line {i} of a rendered body\n" for i in range(400))  # 12 KB: compressed
    with engine.begin() as connection:
        _insert_email(connection, 0, 1)
        connection.execute(sa.text("UPDATE emails SET body_text = :body"), {"body": body})
        methods = connection.execute(
            sa.text(
                "SELECT attname, attcompression FROM pg_attribute"
                " WHERE attrelid = 'emails'::regclass AND attname LIKE 'body%' ORDER BY attname"
            )
        ).all()
        stored = connection.execute(
            sa.text("SELECT pg_column_compression(body_text), body_text FROM emails")
        ).one()
        has_lz4 = connection.execute(
            sa.text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
                " WHERE name = 'default_toast_compression'"
            )
        ).scalar()
    engine.dispose()
    setting, method = ("l", "lz4") if has_lz4 else ("", "pglz")
    assert [tuple(row) for row in methods] == [("body_html", setting), ("body_text", setting)]
    assert tuple(stored) == (method, body)


def test_migration_0010_gives_stored_failures_their_kind(engine: sa.Engine) -> None:
    migrate.downgrade(engine, "0009")
    reasons = {
        "render failed: html template line 1: boom": FailureKind.RENDER,
        "gave up after 10 attempts: 451 4.3.0 later": FailureKind.GAVE_UP,
        "sender mailbox not approved: news@example.org is Rejected": FailureKind.BLOCKED,
        "message cannot be built: the subject holds a NUL": FailureKind.UNBUILDABLE,
        "550 5.1.1 no such user": FailureKind.REFUSED,
    }
    with engine.begin() as connection:
        for number, reason in enumerate(reasons):
            connection.execute(
                sa.text(
                    "INSERT INTO emails (statecode, statuscode, direction, from_address,"
                    " to_addresses, subject, priority, delivery_attempts, failure_reason,"
                    " message_id, tracking_token, created_at, modified_at)"
                    " VALUES (0, 8, 1, 'a@example.org', '[]', 's', 1, 1, :reason, :mid,"
                    " gen_random_uuid(), now(), now())"
                ),
                {"reason": reason, "mid": f"m{number}@example.org"},
            )
    migrate.upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT failure_reason, failure_kind FROM emails"))
        kinds = {row.failure_reason: row.failure_kind for row in rows}
    assert kinds == {reason: int(kind) for reason, kind in reasons.items()}


def test_the_idn_migration_stores_domains_as_a_labels(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Rows as the previous version stored them: the domain in Unicode, lowercased.
    with db.session_scope(engine) as session:
        session.add_all(
            [
                models.Contact(email="a@münchen.de"),
                models.Contact(email="jörg@münchen.de"),
                models.Contact(email="b@münchen.de"),
                models.Contact(email="b@xn--mnchen-3ya.de"),  # both forms were two contacts
                models.Contact(email="c@example.org"),
                models.Contact(email=None),
                models.SystemUser(name="Ops", email="ops@bücher.example"),
                models.Queue(name="Help", email="help@xn--bcher-kva.example"),
            ]
        )
    with db.session_scope(engine) as session:
        user_id = session.scalars(sa.select(models.SystemUser.id)).one()
        session.add(
            models.BulkOperation(
                sender_user_id=user_id, sender_address="ops@bücher.example", query=""
            )
        )
    migrate.downgrade(engine, "0011")
    mailserver.insert_pending(engine, user_id, 1, from_address="ops@bücher.example")

    migrate.upgrade(engine)

    with db.session_scope(engine) as session:
        assert set(session.scalars(sa.select(models.Contact.email))) == {
            "a@xn--mnchen-3ya.de",
            "jörg@xn--mnchen-3ya.de",
            "b@münchen.de",
            "b@xn--mnchen-3ya.de",
            "c@example.org",
            None,
        }
        assert session.scalars(sa.select(models.SystemUser.email)).one() == (
            "ops@xn--bcher-kva.example"
        )
        assert session.scalars(sa.select(models.Email.from_address)).one() == (
            "ops@xn--bcher-kva.example"
        )
        assert session.scalars(sa.select(models.BulkOperation.sender_address)).one() == (
            "ops@xn--bcher-kva.example"
        )
    assert "b@münchen.de: b@xn--mnchen-3ya.de is taken by another row" in caplog.text
