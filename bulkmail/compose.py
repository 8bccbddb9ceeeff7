"""From stored email rows to ``mime.Message`` values: the one place that knows both.

Loads are batched: the pollers compose hundreds of emails per round trip, and a blob shared by
all of them is read once per batch (and encoded once per process by ``mime.PartCache``).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import ARRAY

from bulkmail import emails, mime, models, unsubscribe


class Stored(Protocol):
    """What composing needs of an email: a stored row, or the poller's claimed copy of one."""

    @property
    def id(self) -> int: ...
    @property
    def message_id(self) -> str: ...
    @property
    def bulk_operation_id(self) -> int | None: ...
    @property
    def sent_at(self) -> dt.datetime | None: ...
    @property
    def from_address(self) -> str: ...
    @property
    def from_name(self) -> str | None: ...
    @property
    def to_addresses(self) -> list[str]: ...
    @property
    def cc_addresses(self) -> list[str]: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def subject(self) -> str: ...
    @property
    def body_text(self) -> str | None: ...
    @property
    def body_html(self) -> str | None: ...


def messages(
    session: orm.Session,
    rows: Sequence[Stored],
    *,
    now: dt.datetime | None = None,
    links: unsubscribe.Links | None = None,
) -> dict[int, mime.Message]:
    """The ``mime.Message`` of each email in ``rows``, by email id.

    With ``links``, each email of a bulk operation carries its List-Unsubscribe fields.
    """
    date = now or dt.datetime.now(dt.UTC)
    operation_ids = sorted(
        {row.bulk_operation_id for row in rows if row.bulk_operation_id is not None}
    )
    parts = _attachments(session, rows, operation_ids)
    replies = _operation_reply_to(session, operation_ids)
    return {
        row.id: mime.Message(
            message_id=row.message_id,
            date=row.sent_at or date,
            from_address=row.from_address,
            from_name=row.from_name,
            to=tuple(row.to_addresses),
            cc=tuple(row.cc_addresses),
            reply_to=row.reply_to or replies.get(row.bulk_operation_id),
            subject=row.subject,
            text=row.body_text,
            html=row.body_html,
            attachments=tuple(parts.get(row.id, ())),
            headers=(
                links.headers(row.id)
                if links is not None and row.bulk_operation_id is not None
                else ()
            ),
        )
        for row in rows
    }


def message_bytes(
    session: orm.Session, email_id: int, *, links: unsubscribe.Links | None = None
) -> bytes:
    """The exact bytes the SMTP server will receive for one email (before dot-stuffing)."""
    email = emails.get(session, email_id)
    return mime.build(messages(session, [email], links=links)[email.id])


def _operation_reply_to(session: orm.Session, operation_ids: list[int]) -> dict[int | None, str]:
    """The Reply-To of those of the operations that have one.

    An operation's emails do not carry it (migration 0011): a batch reads it here, one primary
    key per operation in the batch, rather than every email storing a copy.
    """
    if not operation_ids:
        return {}
    Op = models.BulkOperation
    found = session.execute(
        sa.select(Op.id, Op.reply_to).where(Op.id.in_(operation_ids), Op.reply_to.is_not(None))
    )
    return {row.id: row.reply_to for row in found}


def _attachments(
    session: orm.Session, rows: Sequence[Stored], operation_ids: list[int]
) -> dict[int, list[mime.Attachment]]:
    """Each email's attachments: its own records and its bulk operations', in their order."""
    if not rows:
        return {}
    A = models.Attachment
    operation_ids = sorted(
        {row.bulk_operation_id for row in rows if row.bulk_operation_id is not None}
    )
    owned = _among(A.email_id, [row.id for row in rows], "email_ids")
    if operation_ids:
        owned = sa.or_(owned, _among(A.bulk_operation_id, operation_ids, "operation_ids"))
    records = session.execute(
        sa.select(
            A.email_id,
            A.bulk_operation_id,
            A.file_name,
            A.mime_type,
            A.content_id,
            A.attachment_id,
        )
        .where(owned)
        .order_by(A.order_number, A.id)
    ).all()
    blob_ids = {record.attachment_id for record in records}
    blobs = {
        row.id: (row.sha256, row.data)
        for row in session.execute(
            sa.select(
                models.AttachmentBlob.id, models.AttachmentBlob.sha256, models.AttachmentBlob.data
            ).where(models.AttachmentBlob.id.in_(blob_ids))
        )
    }
    emails_of: dict[int | None, list[int]] = defaultdict(list)
    for row in rows:
        emails_of[row.bulk_operation_id].append(row.id)
    # Records in their order; an operation's go to each of its emails in the batch.
    result: dict[int, list[mime.Attachment]] = defaultdict(list)
    for record in records:
        sha256, data = blobs[record.attachment_id]
        part = mime.Attachment(
            sha256=sha256,
            filename=record.file_name,
            mime_type=record.mime_type,
            data=data,
            content_id=record.content_id,
        )
        owners = (
            [record.email_id]
            if record.email_id is not None
            else emails_of[record.bulk_operation_id]
        )
        for email_id in owners:
            result[email_id].append(part)
    return result


def _among(
    column: orm.InstrumentedAttribute[int | None], ids: Sequence[int | None], name: str
) -> sa.ColumnElement[bool]:
    # One array literal in one text parameter: an IN list of a batch's ids, or an array dumped
    # element by element, costs more to send than the query takes to run.
    literal = "{" + ",".join(map(str, ids)) + "}"
    return column == sa.any_(sa.cast(sa.bindparam(name, literal), ARRAY(sa.BigInteger)))
