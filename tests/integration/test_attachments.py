"""Attachments: bytes stored once per content, reused by reference, removed when unreferenced."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading

import pytest
import sqlalchemy as sa

from bulkmail import attachments, db, emails, errors, mailboxes, models, organization
from bulkmail.attachments import Owner


@pytest.fixture
def draft(engine: sa.Engine) -> int:
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Sam", email="sam@example.org")
        new = emails.NewEmail(from_address="sam@example.org", to=["r@example.com"], subject="s")
        return emails.create(session, new).id


@pytest.fixture
def template_id(engine: sa.Engine) -> int:
    with db.session_scope(engine) as session:
        template = models.Template(name="news", subject="Hi", body_html="<p>Hi</p>")
        session.add(template)
        session.flush()
        return template.id


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


def test_same_bytes_are_stored_once_and_reused_by_reference(
    engine: sa.Engine, draft: int, template_id: int
) -> None:
    data = b"%PDF-1.4 report" * 1000
    with db.session_scope(engine) as session:
        first = attachments.add(session, Owner(email_id=draft), file_name="report.pdf", data=data)
        second = attachments.add(
            session, Owner(template_id=template_id), file_name="copy.pdf", data=data
        )
        third = attachments.add(
            session, Owner(template_id=template_id), file_name="ref.pdf", reuse=first.attachment_id
        )
    assert first.attachment_id == second.attachment_id == third.attachment_id
    assert _count(engine, "attachment_blobs") == 1
    assert _count(engine, "attachments") == 3
    with db.session_scope(engine) as session:
        listed = attachments.list_for(session, Owner(template_id=template_id))
        assert [(x.record.file_name, x.size, x.record.order_number) for x in listed] == [
            ("copy.pdf", len(data), 0),
            ("ref.pdf", len(data), 1),
        ]
        assert listed[0].record.mime_type == "application/pdf"
        assert attachments.read(session, third.id) == data
        blob = session.get(models.AttachmentBlob, first.attachment_id)
        assert blob is not None
        assert blob.sha256 == hashlib.sha256(data).hexdigest()


def test_blob_is_removed_only_when_nothing_references_it(engine: sa.Engine, draft: int) -> None:
    with db.session_scope(engine) as session:
        a = attachments.add(session, Owner(email_id=draft), file_name="a.txt", data=b"x")
        b = attachments.add(
            session, Owner(email_id=draft), file_name="b.txt", reuse=a.attachment_id
        )
    with db.session_scope(engine) as session:
        attachments.delete(session, a.id)
    assert _count(engine, "attachment_blobs") == 1
    with db.session_scope(engine) as session:
        attachments.delete(session, b.id)
    assert _count(engine, "attachment_blobs") == 0


def test_deleting_the_email_removes_its_records_and_orphan_blobs(
    engine: sa.Engine, draft: int, template_id: int
) -> None:
    with db.session_scope(engine) as session:
        attachments.add(session, Owner(email_id=draft), file_name="only.txt", data=b"only")
        shared = attachments.add(session, Owner(email_id=draft), file_name="s.txt", data=b"shared")
        attachments.add(
            session, Owner(template_id=template_id), file_name="s.txt", reuse=shared.attachment_id
        )
    with db.session_scope(engine) as session:
        emails.delete(session, draft)
    assert _count(engine, "attachments") == 1
    with engine.connect() as connection:
        left = connection.scalars(sa.text("SELECT size FROM attachment_blobs")).all()
    assert left == [len(b"shared")]


def test_upload_limit_names_file_size_and_limit(engine: sa.Engine, draft: int) -> None:
    with db.session_scope(engine) as session:
        organization.update(session, max_upload_size=1000)
    with pytest.raises(errors.InvalidInput, match=r"file big\.bin is 1,001 bytes; .* 1,000 bytes"):
        with db.session_scope(engine) as session:
            attachments.add(session, Owner(email_id=draft), file_name="big.bin", data=b"x" * 1001)
    assert _count(engine, "attachment_blobs") == 0
    with db.session_scope(engine) as session:
        attachments.add(session, Owner(email_id=draft), file_name="ok.bin", data=b"x" * 1000)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.exe", "evil.exe"),
        ("a\r\nContent-Type: text/html.txt", "html.txt"),
        ("evil\r\nBcc: x.txt", "evil Bcc: x.txt"),
        ('quo"ted.txt', 'quo"ted.txt'),
        ("résumé.pdf", "résumé.pdf"),
        ("..", "attachment"),
    ],
)
def test_file_names_are_sanitised(engine: sa.Engine, draft: int, given: str, stored: str) -> None:
    with db.session_scope(engine) as session:
        record = attachments.add(session, Owner(email_id=draft), file_name=given, data=b"")
    assert record.file_name == stored


def test_zero_byte_file_is_fine(engine: sa.Engine, draft: int) -> None:
    with db.session_scope(engine) as session:
        record = attachments.add(session, Owner(email_id=draft), file_name="empty.txt", data=b"")
        assert attachments.read(session, record.id) == b""
        assert record.mime_type == "text/plain"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mime_type": "text/html\r\nX: y"}, "is not like type/subtype"),
        ({"mime_type": "nonsense"}, "is not like type/subtype"),
        ({"content_id": "logo\r\n@x"}, "content id contains a CR"),
        ({"content_id": "has space"}, "printable ASCII"),
        ({"subject": "s\nBcc: x@evil.example"}, "attachment subject contains a LF"),
        ({"reuse": 424242, "data": None}, "attachment_id 424242 not found"),
    ],
)
def test_bad_attachment_input_is_refused_and_stores_nothing(
    engine: sa.Engine, draft: int, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"file_name": "f.txt", "data": b"data"}
    arguments.update(kwargs)
    with pytest.raises(errors.BulkmailError, match=message), db.session_scope(engine) as session:
        attachments.add(session, Owner(email_id=draft), **arguments)  # type: ignore[arg-type]
    assert _count(engine, "attachments") == 0
    assert _count(engine, "attachment_blobs") == 0


def test_attachments_of_a_pending_send_email_are_frozen(engine: sa.Engine, draft: int) -> None:
    with db.session_scope(engine) as session:
        record = attachments.add(session, Owner(email_id=draft), file_name="a.txt", data=b"a")
        emails.send(session, draft)
    with pytest.raises(errors.Conflict, match="Pending Send; attachments can change only"):
        with db.session_scope(engine) as session:
            attachments.add(session, Owner(email_id=draft), file_name="b.txt", data=b"b")
    with pytest.raises(errors.Conflict), db.session_scope(engine) as session:
        attachments.delete(session, record.id)
    assert _count(engine, "attachments") == 1


def test_link_template_attachments_adds_references_only(
    engine: sa.Engine, draft: int, template_id: int
) -> None:
    with db.session_scope(engine) as session:
        attachments.add(session, Owner(template_id=template_id), file_name="a.pdf", data=b"a")
        attachments.add(
            session,
            Owner(template_id=template_id),
            file_name="logo.png",
            data=b"png",
            content_id="logo@example.org",
        )
        second = emails.create(
            session,
            emails.NewEmail(from_address="sam@example.org", to=["q@example.com"], subject="s"),
        ).id
        attachments.link_template_attachments(
            session, template_id, models.Email.id.in_([draft, second])
        )
    assert _count(engine, "attachment_blobs") == 2
    with db.session_scope(engine) as session:
        for email_id in (draft, second):
            listed = attachments.list_for(session, Owner(email_id=email_id))
            assert [(x.record.file_name, x.record.content_id) for x in listed] == [
                ("a.pdf", None),
                ("logo.png", "logo@example.org"),
            ]


def test_concurrent_uploads_of_the_same_bytes_store_one_blob(engine: sa.Engine, draft: int) -> None:
    data = b"same file from two processes" * 100
    barrier = threading.Barrier(4)
    ids: list[int] = []
    failures: list[BaseException] = []

    def upload() -> None:
        try:
            barrier.wait(timeout=10)
            with db.session_scope(engine) as session:
                ids.append(
                    attachments.add(
                        session, Owner(email_id=draft), file_name="f", data=data
                    ).attachment_id
                )
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(set(ids)) == 1
    assert _count(engine, "attachment_blobs") == 1
    assert _count(engine, "attachments") == 4


def test_a_file_is_stored_in_chunks_once_and_reads_back_whole(
    engine: sa.Engine, draft: int, template_id: int
) -> None:
    # Three chunks and a bit, on disk as an API upload over 1 MiB is: stored by COPY.
    data = os.urandom(3 * (1 << 20) + 17)
    barrier = threading.Barrier(3)
    ids: list[int] = []
    failures: list[BaseException] = []

    def upload() -> None:
        try:
            with tempfile.TemporaryFile() as file:
                file.write(data)
                barrier.wait(timeout=10)
                with db.session_scope(engine) as session:
                    record = attachments.add(
                        session, Owner(email_id=draft), file_name="big.bin", data=file
                    )
                    ids.append(record.attachment_id)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=upload) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(set(ids)) == 1
    assert _count(engine, "attachment_blobs") == 1
    with db.session_scope(engine) as session:
        # The same bytes given whole find the blob the file made.
        whole = attachments.add(session, Owner(template_id=template_id), file_name="b", data=data)
        assert whole.attachment_id == ids[0]
        assert attachments.read(session, whole.id) == data
        blob = session.get(models.AttachmentBlob, ids[0])
        assert blob is not None
        assert (blob.sha256, blob.size) == (hashlib.sha256(data).hexdigest(), len(data))
    # Over the organization's limit, a file is refused before anything is stored.
    with db.session_scope(engine) as session:
        organization.update(session, max_upload_size=1_000)
    with tempfile.TemporaryFile() as file, db.session_scope(engine) as session:
        file.write(b"y" * 1_001)
        with pytest.raises(errors.InvalidInput, match="1,001 bytes"):
            attachments.add(session, Owner(email_id=draft), file_name="y.bin", data=file)
    assert _count(engine, "attachment_blobs") == 1
