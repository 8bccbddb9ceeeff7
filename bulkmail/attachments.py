"""Attachments (the reference model's ActivityMimeAttachment) and the blobs holding their bytes.

Bytes are stored once per content, keyed by SHA-256: attaching the same file again, even from
two processes at once, points a new record at the existing blob. A record can also be made by
reference to an ``attachment_id`` without sending the bytes again. A blob goes away only when
no record points at it any more.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy import exc, orm
from sqlalchemy.dialects import postgresql

from bulkmail import errors, headers, mime, models, organization
from bulkmail.status import EDITABLE, Status

_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", re.IGNORECASE)
_CONTENT_ID = re.compile(r"[!-;=?-~]{1,250}")  # printable ASCII without space, '<' or '>'


@dataclass(frozen=True, kw_only=True)
class Owner:
    """The email or the template an attachment belongs to: exactly one of the two."""

    email_id: int | None = None
    template_id: int | None = None

    def __post_init__(self) -> None:
        if (self.email_id is None) == (self.template_id is None):
            raise errors.InvalidInput("an attachment belongs to one email or one template")

    def where(self) -> sa.ColumnElement[bool]:
        """The records this owner owns."""
        if self.email_id is not None:
            return models.Attachment.email_id == self.email_id
        return models.Attachment.template_id == self.template_id

    def carried(self) -> sa.ColumnElement[bool]:
        """The records that go out with this owner: an email's own and its bulk operation's."""
        if self.email_id is None:
            return self.where()
        operation = (
            sa.select(models.Email.bulk_operation_id)
            .where(models.Email.id == self.email_id)
            .scalar_subquery()
        )
        return sa.or_(self.where(), models.Attachment.bulk_operation_id == operation)

    def describe(self) -> str:
        if self.email_id is not None:
            return f"email {self.email_id}"
        return f"template {self.template_id}"


@dataclass(frozen=True, kw_only=True)
class Listed:
    """An attachment record with its blob's size, as ``attachments list`` shows it."""

    record: models.Attachment
    size: int


def check_size(session: orm.Session, file_name: str, size: int) -> None:
    """Refuse a file larger than the organization's upload limit, naming both numbers."""
    limit = organization.get(session).max_upload_size
    if size > limit:
        raise errors.InvalidInput(
            f"file {file_name} is {size:,} bytes; the organization's limit is {limit:,} bytes "
            "(an administrator can raise it with `bulkmail org set --max-upload-size`)"
        )


def store_blob(session: orm.Session, data: bytes) -> int:
    """The ``attachment_id`` of a blob holding ``data``, inserting it only if it is new."""
    digest = hashlib.sha256(data).hexdigest()
    session.execute(
        postgresql.insert(models.AttachmentBlob)
        .values(sha256=digest, size=len(data), data=data, created_at=models.utcnow())
        .on_conflict_do_nothing(index_elements=["sha256"])
    )
    blob_id = session.scalar(
        sa.select(models.AttachmentBlob.id).where(models.AttachmentBlob.sha256 == digest)
    )
    assert blob_id is not None
    return blob_id


# How much of a file is read at a time when it is stored from a file.
_CHUNK = 1 << 20


def store_file(session: orm.Session, file: BinaryIO) -> int:
    """``store_blob`` for a seekable file, never holding more than a chunk of it in memory.

    The bytes go to PostgreSQL by COPY, chunk by chunk, and only when no blob holds them yet.
    A transaction-scoped advisory lock on the digest makes two processes storing the same new
    file at once store it once: the second finds the first's blob.
    """
    digest, size = hashlib.sha256(), 0
    file.seek(0)
    while chunk := file.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    sha256 = digest.hexdigest()
    blob = sa.select(models.AttachmentBlob.id).where(models.AttachmentBlob.sha256 == sha256)
    session.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sha256))))
    found = session.scalar(blob)
    if found is not None:
        return found
    created = models.utcnow().isoformat()
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy("COPY attachment_blobs (sha256, size, created_at, data) FROM STDIN") as copy:
        # COPY's text format: a bytea value as \x and hex digits, its backslash escaped.
        copy.write(f"{sha256}\t{size}\t{created}\t\\\\x")
        file.seek(0)
        while chunk := file.read(_CHUNK):
            copy.write(chunk.hex())
        copy.write("\n")
    stored = session.scalar(blob)
    assert stored is not None
    return stored


def add(
    session: orm.Session,
    owner: Owner,
    *,
    file_name: str,
    data: bytes | BinaryIO | None = None,
    reuse: int | None = None,
    mime_type: str | None = None,
    subject: str | None = None,
    order_number: int | None = None,
    content_id: str | None = None,
) -> models.Attachment:
    """Attach ``data`` (bytes or a seekable file; stored once) or the existing blob ``reuse``
    to ``owner``."""
    if (data is None) == (reuse is None):
        raise errors.InvalidInput("give either the file's bytes or an attachment_id to reuse")
    _check_owner(session, owner)
    name = mime.safe_filename(file_name)
    if isinstance(data, bytes):
        check_size(session, name, len(data))
        blob_id = store_blob(session, data)
    elif data is not None:
        check_size(session, name, data.seek(0, 2))
        blob_id = store_file(session, data)
    else:
        assert reuse is not None
        if session.get(models.AttachmentBlob, reuse) is None:
            raise errors.NotFound(
                f"attachment_id {reuse} not found; `bulkmail attachments list` shows the ids"
            )
        blob_id = reuse
    if order_number is None:
        highest = session.scalar(
            sa.select(sa.func.max(models.Attachment.order_number)).where(owner.carried())
        )
        order_number = 0 if highest is None else highest + 1
    record = models.Attachment(
        email_id=owner.email_id,
        template_id=owner.template_id,
        attachment_id=blob_id,
        file_name=name,
        mime_type=_mime_type(mime_type, name),
        subject=headers.check_header_value("attachment subject", subject) if subject else None,
        order_number=order_number,
        content_id=_content_id(content_id) if content_id else None,
    )
    session.add(record)
    session.flush()
    return record


def list_for(session: orm.Session, owner: Owner) -> list[Listed]:
    """What goes out with ``owner``: for an email of a bulk operation, the operation's too."""
    rows = session.execute(
        sa.select(models.Attachment, models.AttachmentBlob.size)
        .join(models.AttachmentBlob, models.AttachmentBlob.id == models.Attachment.attachment_id)
        .where(owner.carried())
        .order_by(models.Attachment.order_number, models.Attachment.id)
    )
    return [Listed(record=record, size=size) for record, size in rows]


def get(session: orm.Session, record_id: int) -> models.Attachment:
    record = session.get(models.Attachment, record_id)
    if record is None:
        raise errors.NotFound(f"attachment {record_id} not found")
    return record


def read(session: orm.Session, record_id: int) -> bytes:
    """The bytes of an attachment record's file."""
    blob_id = get(session, record_id).attachment_id
    data = session.scalar(
        sa.select(models.AttachmentBlob.data).where(models.AttachmentBlob.id == blob_id)
    )
    assert data is not None
    return data


def delete(session: orm.Session, record_id: int) -> None:
    """Remove an attachment record, and its blob when nothing else points at it."""
    record = get(session, record_id)
    if record.bulk_operation_id is not None:
        raise errors.Conflict(
            f"attachment {record_id} goes out with every email of bulk operation "
            f"{record.bulk_operation_id} and cannot be removed from one of them; change the "
            "template's attachments for operations sent later"
        )
    if record.email_id is not None:
        _check_owner(session, Owner(email_id=record.email_id))
    blob_id = record.attachment_id
    session.delete(record)
    session.flush()
    collect_garbage(session, [blob_id])


def blob_ids(session: orm.Session, owner: Owner) -> list[int]:
    """The blobs ``owner``'s attachments use; hand them to ``collect_garbage`` once it is gone."""
    return list(session.scalars(sa.select(models.Attachment.attachment_id).where(owner.where())))


def collect_garbage(session: orm.Session, candidates: Iterable[int]) -> int:
    """Delete those of ``candidates`` that no attachment record points at; returns how many."""
    removed = 0
    for blob_id in sorted(set(candidates)):
        unreferenced = ~sa.exists().where(models.Attachment.attachment_id == blob_id)
        try:
            # A record made concurrently by reference makes the foreign key refuse the delete:
            # the blob is in use again, so keeping it is right.
            with session.begin_nested():
                result = session.execute(
                    sa.delete(models.AttachmentBlob).where(
                        models.AttachmentBlob.id == blob_id, unreferenced
                    )
                )
        except exc.IntegrityError:
            continue
        removed += result.rowcount  # type: ignore[attr-defined]
    return removed


def link_operation_attachments(
    executor: orm.Session | sa.Connection,
    template_id: int,
    operation_id: int,
    *,
    now: dt.datetime | None = None,
) -> None:
    """Copy the template's records to the bulk operation, whose emails all carry them: one
    record per attachment however many emails, references to the template's blobs, no bytes."""
    template = models.Attachment.__table__.alias("template_attachment")
    rows = sa.select(
        sa.literal(operation_id, sa.BigInteger),
        *_copied(template),
        sa.literal(now or models.utcnow(), models.UTCDateTime),
    ).where(template.c.template_id == template_id)
    columns = ["bulk_operation_id", *_COPIED, "created_at"]
    executor.execute(sa.insert(models.Attachment).from_select(columns, rows))


def operation_has_attachments(executor: orm.Session | sa.Connection, operation_id: int) -> bool:
    return bool(
        executor.scalar(
            sa.select(sa.exists().where(models.Attachment.bulk_operation_id == operation_id))
        )
    )


_COPIED = ("attachment_id", "file_name", "mime_type", "subject", "order_number", "content_id")


def _copied(template: sa.FromClause) -> list[sa.ColumnElement[Any]]:
    return [template.c[name] for name in _COPIED]


def link_template_attachments(
    executor: orm.Session | sa.Connection,
    template_id: int,
    emails: sa.ColumnElement[bool],
    *,
    now: dt.datetime | None = None,
) -> None:
    """Give each email matching ``emails`` a record for each of the template's attachments:
    references to the template's blobs, no bytes. One INSERT ... SELECT, however many emails."""
    template = models.Attachment.__table__.alias("template_attachment")
    rows = (
        sa.select(
            models.Email.id,
            *_copied(template),
            sa.literal(now or models.utcnow(), models.UTCDateTime),
        )
        .join_from(models.Email, template, template.c.template_id == template_id)
        .where(emails)
    )
    columns = ["email_id", *_COPIED, "created_at"]
    executor.execute(sa.insert(models.Attachment).from_select(columns, rows))


def as_dict(listed: Listed) -> dict[str, object]:
    record = listed.record
    return {
        "id": record.id,
        "attachment_id": record.attachment_id,
        "object_type": record.object_type,
        "object_id": record.object_id,
        "file_name": record.file_name,
        "mime_type": record.mime_type,
        "size": listed.size,
        "subject": record.subject,
        "order_number": record.order_number,
        "content_id": record.content_id,
    }


def _check_owner(session: orm.Session, owner: Owner) -> None:
    if owner.email_id is not None:
        email = session.get(models.Email, owner.email_id)
        if email is None:
            raise errors.NotFound(f"email {owner.email_id} not found")
        if email.current_status not in EDITABLE:
            raise errors.Conflict(
                f"email {email.id} is {email.current_status.label}; attachments can change only "
                f"while it is {Status.DRAFT.label} or {Status.FAILED.label}"
            )
    elif session.get(models.Template, owner.template_id) is None:
        raise errors.NotFound(f"template {owner.template_id} not found")


def _mime_type(given: str | None, file_name: str) -> str:
    if given is None:
        guessed, _ = mimetypes.guess_type(file_name, strict=False)
        return guessed or "application/octet-stream"
    value = given.strip().lower()
    if not _MIME_TYPE.fullmatch(value):
        raise errors.InvalidInput(f"MIME type {given!r} is not like type/subtype, e.g. image/png")
    return value


def _content_id(given: str) -> str:
    value = headers.check_header_value("content id", given).strip().removeprefix("<")
    value = value.removesuffix(">")
    if not _CONTENT_ID.fullmatch(value):
        raise errors.InvalidInput(
            f"content id {given!r} must be printable ASCII without spaces, e.g. logo@example.org"
        )
    return value
