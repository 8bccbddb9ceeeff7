"""The schema as SQLAlchemy 2 models; Alembic migrations own it and a test keeps both equal."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql

from bulkmail import providers, status

BigId = sa.BigInteger()
Json = postgresql.JSONB()

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DEFAULT_MAX_UPLOAD_SIZE = 5_242_880
MAX_UPLOAD_SIZE_LIMIT = 131_072_000


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def isoformat(value: dt.datetime | None) -> str | None:
    """A stored time as ``--json`` shows it: ISO 8601 with its offset, or None."""
    return value.isoformat() if value is not None else None


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """Aware datetimes in UTC, whatever the session's time zone; a naive one is refused."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; attach a timezone")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(orm.DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


class Organization(Base):
    """The organization's settings: a single row, id 1."""

    __tablename__ = "organization"
    __table_args__ = (
        sa.CheckConstraint("id = 1", name="single_row"),
        sa.CheckConstraint(
            f"max_upload_size BETWEEN 1 AND {MAX_UPLOAD_SIZE_LIMIT}", name="max_upload_size"
        ),
    )

    id: orm.Mapped[int] = orm.mapped_column(sa.Integer, primary_key=True)
    require_approval_user: orm.Mapped[bool] = orm.mapped_column(
        sa.Boolean, default=False, server_default=sa.false()
    )
    require_approval_queue: orm.Mapped[bool] = orm.mapped_column(
        sa.Boolean, default=False, server_default=sa.false()
    )
    max_upload_size: orm.Mapped[int] = orm.mapped_column(
        sa.Integer, default=DEFAULT_MAX_UPLOAD_SIZE, server_default=str(DEFAULT_MAX_UPLOAD_SIZE)
    )
    modified_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )


_APPROVAL_CHECK = "approval_status IN (0, 1, 2, 3)"


class SystemUser(Base):
    """A person who sends mail and may hold privileges; also a sender mailbox."""

    __tablename__ = "system_users"
    __table_args__ = (sa.CheckConstraint(_APPROVAL_CHECK, name="approval_status"),)

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    email: orm.Mapped[str] = orm.mapped_column(sa.String(320), unique=True)
    approval_status: orm.Mapped[int] = orm.mapped_column(
        sa.SmallInteger, default=int(status.ApprovalStatus.EMPTY), server_default="0"
    )
    privileges: orm.Mapped[list[str]] = orm.mapped_column(Json, default=list)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A token of the HTTP API: it acts as its system user. Only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: orm.Mapped[int] = orm.mapped_column(BigId, sa.Identity(), primary_key=True)
    user_id: orm.Mapped[int] = orm.mapped_column(
        BigId, sa.ForeignKey("system_users.id", ondelete="CASCADE"), index=True
    )
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    token_hash: orm.Mapped[str] = orm.mapped_column(sa.String(64), unique=True)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)
    expires_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    revoked_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)


class DkimKey(Base):
    """The DKIM key that signs mail from one sender domain (migration 0016).

    Only the key file's path is stored: the private key never enters the database, and each
    poller host reads it from its own copy.
    """

    __tablename__ = "dkim_keys"

    id: orm.Mapped[int] = orm.mapped_column(BigId, sa.Identity(), primary_key=True)
    domain: orm.Mapped[str] = orm.mapped_column(sa.String(253), unique=True)
    selector: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    key_file: orm.Mapped[str] = orm.mapped_column(sa.Text)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)


class ApiIdempotencyKey(Base):
    """The first answer to a creating API call that carried an ``Idempotency-Key``: a retry
    with the same key (and the same request) gets it again instead of a second record."""

    __tablename__ = "api_idempotency_keys"

    user_id: orm.Mapped[int] = orm.mapped_column(
        BigId, sa.ForeignKey("system_users.id", ondelete="CASCADE"), primary_key=True
    )
    key: orm.Mapped[str] = orm.mapped_column(sa.String(200), primary_key=True)
    fingerprint: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    status: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger)
    body: orm.Mapped[Any] = orm.mapped_column(Json)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)


class Queue(Base):
    """A shared mailbox (support@, news@) that mail can be sent from."""

    __tablename__ = "queues"
    __table_args__ = (sa.CheckConstraint(_APPROVAL_CHECK, name="approval_status"),)

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200), unique=True)
    email: orm.Mapped[str] = orm.mapped_column(sa.String(320), unique=True)
    approval_status: orm.Mapped[int] = orm.mapped_column(
        sa.SmallInteger, default=int(status.ApprovalStatus.EMPTY), server_default="0"
    )
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)


class Contact(Base):
    """A recipient. ``email`` may be empty: bulk operations count such contacts as skipped."""

    __tablename__ = "contacts"

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    email: orm.Mapped[str | None] = orm.mapped_column(sa.String(320), unique=True)
    first_name: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    last_name: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    company: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    country: orm.Mapped[str | None] = orm.mapped_column(sa.String(100))
    language: orm.Mapped[str | None] = orm.mapped_column(sa.String(35))
    tags: orm.Mapped[list[str]] = orm.mapped_column(Json, default=list)
    attributes: orm.Mapped[dict[str, Any]] = orm.mapped_column(Json, default=dict)
    do_not_bulk_email: orm.Mapped[bool] = orm.mapped_column(
        sa.Boolean, default=False, server_default=sa.false()
    )
    # Why bulk email stopped when bulkmail stopped it (a hard bounce, a complaint: migration 0014).
    do_not_bulk_email_reason: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    # The first one-click unsubscribe: when, and from which email of which operation (0016).
    # Plain ids, no foreign keys: deleting emails must not search the contacts.
    unsubscribed_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    unsubscribed_email_id: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
    unsubscribed_operation_id: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)
    modified_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )


PENDING = int(status.Status.PENDING_SEND)
SENDING = int(status.Status.SENDING)
# Pending Send, as ix_emails_pending_provider and the lookups it serves say it (0017).
PENDING_BY_PROVIDER = f"statuscode >= {PENDING} AND statuscode < {PENDING + 1}"


class Email(Base):
    """An email activity: every message is a stored record before anything is sent."""

    __tablename__ = "emails"
    __table_args__ = (
        sa.CheckConstraint(status.check_constraint_sql(), name="status_in_state"),
        sa.CheckConstraint("priority IN (0, 1, 2)", name="priority"),
        sa.CheckConstraint("direction IN (0, 1)", name="direction"),
        sa.CheckConstraint("delivery_attempts >= 0", name="delivery_attempts"),
        sa.CheckConstraint(
            "sender_user_id IS NULL OR sender_queue_id IS NULL", name="one_sender_mailbox"
        ),
        # The claim path: pending emails, highest priority first, then oldest.
        sa.Index(
            "ix_emails_pending_claim",
            sa.column("priority").desc(),
            sa.column("id"),
            postgresql_where=sa.text(f"statuscode = {PENDING}"),
        ),
        # The claim when providers are capped: each provider's pending emails (0017). Its
        # predicate says "pending" in other words than ix_emails_pending_claim's, so that the
        # claim's per-provider lookups, which use these words, can only be planned on it.
        sa.Index(
            "ix_emails_pending_provider",
            "provider",
            sa.column("priority").desc(),
            sa.column("id"),
            postgresql_where=sa.text(PENDING_BY_PROVIDER),
        ),
        # The poller's check before it hands a part of a batch to SMTP: only the few emails
        # whose cancel was asked while a poller held them.
        sa.Index(
            "ix_emails_cancel_requested",
            "id",
            postgresql_where=sa.text("cancel_requested_at IS NOT NULL"),
        ),
        # The reaper: leases that may have expired.
        sa.Index(
            "ix_emails_sending_lease",
            "lease_expires_at",
            postgresql_where=sa.text(f"statuscode = {SENDING}"),
        ),
        # The overview: emails of no bulk operation by status (migration 0013).
        sa.Index(
            "ix_emails_single_statuscode",
            "statuscode",
            postgresql_where=sa.text("bulk_operation_id IS NULL"),
        ),
        # The retry backlog: Pending Send emails waiting for a later attempt (0013).
        sa.Index(
            "ix_emails_retry_next_attempt_at",
            "next_attempt_at",
            postgresql_where=sa.text(f"statuscode = {PENDING} AND next_attempt_at IS NOT NULL"),
        ),
        # One email per recipient of a bulk operation, however often its expansion runs.
        sa.Index(
            "uq_emails_bulk_operation_id_regarding_contact_id",
            "bulk_operation_id",
            "regarding_contact_id",
            unique=True,
        ),
    )

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    statecode: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger)
    statuscode: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger)
    direction: orm.Mapped[int] = orm.mapped_column(
        sa.SmallInteger, default=int(status.Direction.OUTGOING)
    )
    # No index on the mailbox and template keys: every status change of an email writes an
    # entry into each index, and their parent rows are rarely deleted (migration 0005).
    sender_user_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("system_users.id", ondelete="RESTRICT")
    )
    sender_queue_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("queues.id", ondelete="RESTRICT")
    )
    from_address: orm.Mapped[str] = orm.mapped_column(sa.String(320))
    from_name: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    to_addresses: orm.Mapped[list[str]] = orm.mapped_column(Json, default=list)
    # Also empty by the database's default: the expansion's COPY leaves them out (0009).
    cc_addresses: orm.Mapped[list[str]] = orm.mapped_column(
        Json, default=list, server_default=sa.text("'[]'")
    )
    bcc_addresses: orm.Mapped[list[str]] = orm.mapped_column(
        Json, default=list, server_default=sa.text("'[]'")
    )
    # The mailbox provider of the first recipient (bulkmail.providers), set when the email is
    # created or its recipients change: what the per-provider throttling goes by (0017).
    provider: orm.Mapped[str] = orm.mapped_column(sa.String(32), server_default=providers.DEFAULT)
    # A bulk operation's emails leave it empty: theirs is the operation's (migration 0011).
    reply_to: orm.Mapped[str | None] = orm.mapped_column(sa.String(320))
    subject: orm.Mapped[str] = orm.mapped_column(sa.Text, default="")
    body_html: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    body_text: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    regarding_contact_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    template_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("templates.id", ondelete="SET NULL")
    )
    bulk_operation_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("bulk_operations.id", ondelete="SET NULL")
    )
    priority: orm.Mapped[int] = orm.mapped_column(
        sa.SmallInteger, default=int(status.Priority.NORMAL)
    )
    send_after: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    delivery_attempts: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=0)
    next_attempt_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    claim_token: orm.Mapped[uuid.UUID | None] = orm.mapped_column(sa.Uuid)
    lease_expires_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    claimed_by: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    # Asked while a poller held the email (Sending): it withdraws the claim unless the message
    # is with the SMTP server already (migration 0010).
    cancel_requested_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    last_smtp_reply: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    failure_reason: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    failure_kind: orm.Mapped[int | None] = orm.mapped_column(sa.SmallInteger)
    message_id: orm.Mapped[str] = orm.mapped_column(sa.String(998), unique=True)
    # Random, so unique by construction; not indexed, as nothing looks it up (migration 0006).
    tracking_token: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.Uuid)
    sent_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)
    modified_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )

    @property
    def current_status(self) -> status.Status:
        return status.Status(self.statuscode)

    def move_to(self, target: status.Status) -> None:
        """Apply one move of the status machine, or raise naming both statuses; a failure's
        reason goes with the Failed status."""
        status.check_transition(self.current_status, target)
        self.statuscode = int(target)
        self.statecode = int(target.state)
        if target is not status.Status.FAILED:
            self.failure_reason = self.failure_kind = None


class Template(Base):
    """A Jinja2 template for the subject, the HTML body and (optionally) the text body."""

    __tablename__ = "templates"

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200), unique=True)
    subject: orm.Mapped[str] = orm.mapped_column(sa.Text)
    body_html: orm.Mapped[str] = orm.mapped_column(sa.Text)
    body_text: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)
    modified_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )


class AttachmentBlob(Base):
    """The bytes of attached files, stored once per content: its id is the ``attachment_id``."""

    __tablename__ = "attachment_blobs"

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    sha256: orm.Mapped[str] = orm.mapped_column(sa.String(64), unique=True)
    size: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    data: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary, deferred=True)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)


class Attachment(Base):
    """An attachment record (the reference model's ActivityMimeAttachment).

    It belongs to exactly one email, template or bulk operation and points at a blob; many
    records may point at the same blob. A bulk operation's records are its template's, copied
    once when its expansion starts: every email of the operation carries them, which is how a
    file attached to a template reaches a million emails with one record.
    """

    __tablename__ = "attachments"
    __table_args__ = (
        sa.CheckConstraint(
            "CASE WHEN email_id IS NULL THEN 0 ELSE 1 END"
            " + CASE WHEN template_id IS NULL THEN 0 ELSE 1 END"
            " + CASE WHEN bulk_operation_id IS NULL THEN 0 ELSE 1 END = 1",
            name="one_owner",
        ),
    )

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    email_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("emails.id", ondelete="CASCADE"), index=True
    )
    template_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("templates.id", ondelete="CASCADE"), index=True
    )
    bulk_operation_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("bulk_operations.id", ondelete="CASCADE"), index=True
    )
    attachment_id: orm.Mapped[int] = orm.mapped_column(
        sa.ForeignKey("attachment_blobs.id", ondelete="RESTRICT"), index=True
    )
    file_name: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    mime_type: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    subject: orm.Mapped[str | None] = orm.mapped_column(sa.String(500))
    order_number: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=0)
    content_id: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)

    @property
    def object_type(self) -> str:
        return self._owner[0]

    @property
    def object_id(self) -> int:
        return self._owner[1]

    @property
    def _owner(self) -> tuple[str, int]:
        owners = (
            ("email", self.email_id),
            ("template", self.template_id),
            ("bulk operation", self.bulk_operation_id),
        )
        for kind, owner_id in owners:
            if owner_id is not None:
                return kind, owner_id
        raise AssertionError("the one_owner check gives every attachment record an owner")


class WorkerHeartbeat(Base):
    """A running (or stopped) poller: what the monitoring dashboard lists."""

    __tablename__ = "worker_heartbeats"

    id: orm.Mapped[str] = orm.mapped_column(sa.String(200), primary_key=True)
    kind: orm.Mapped[str] = orm.mapped_column(sa.String(50))
    host: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    pid: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    started_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime)
    last_seen_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, index=True)
    stopped_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    sent: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    retried: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    failed: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)


class DeliveryAttempt(Base):
    """One SMTP outcome of one email: when, by which poller, what the server said.

    Narrow and written in the completion's batch. No foreign key (a check per row on the send
    path): deleting an email deletes its attempts (``emails.delete``).
    """

    __tablename__ = "delivery_attempts"
    __table_args__ = (
        sa.Index("ix_delivery_attempts_attempted_at", "attempted_at", postgresql_using="brin"),
    )

    email_id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    # One outcome per email per completion, and each completion has its own time.
    attempted_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, primary_key=True)
    worker: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    outcome: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger)  # history.Outcome
    code: orm.Mapped[int | None] = orm.mapped_column(sa.SmallInteger)
    enhanced_code: orm.Mapped[str | None] = orm.mapped_column(sa.String(16))
    reply: orm.Mapped[str] = orm.mapped_column(sa.Text)


class SendRollup(Base):
    """Emails moved to Sent, back to Pending Send (retried) or to Failed in one minute, per bulk
    operation (0: none) and sender address. The minute 1970-01-01 holds what was pruned."""

    __tablename__ = "send_rollups"
    __table_args__ = (
        sa.Index("ix_send_rollups_bulk_operation_id_minute", "bulk_operation_id", "minute"),
    )

    minute: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, primary_key=True)
    bulk_operation_id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    sender: orm.Mapped[str] = orm.mapped_column(sa.String(320), primary_key=True)
    sent: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    retried: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    failed: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)


class ReplyRollup(Base):
    """Delivery attempts in one minute per outcome and reply code (0: no reply, a broken
    connection). The minute 1970-01-01 holds what was pruned."""

    __tablename__ = "reply_rollups"

    minute: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, primary_key=True)
    outcome: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger, primary_key=True)
    code: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger, primary_key=True)
    attempts: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)


class OperationStatus(enum.StrEnum):
    """Where a bulk operation is; the values are stored."""

    QUEUED = "queued"  # stored; its expansion job waits for a Celery worker
    EXPANDING = "expanding"  # a worker is writing one email per recipient
    SENDING = "sending"  # every email is written; pollers are delivering them
    COMPLETED = "completed"  # expanded, and none of its emails is Pending Send or Sending
    CANCELED = "canceled"  # stopped by a user: no new emails, pending ones canceled
    FAILED = "failed"  # expansion could not go on; last_error says why

    @property
    def terminal(self) -> bool:
        return self in (OperationStatus.COMPLETED, OperationStatus.CANCELED, OperationStatus.FAILED)


_OPERATION_STATUS_CHECK = "status IN ({})".format(
    ", ".join(f"'{s.value}'" for s in OperationStatus)
)


class BulkOperation(Base):
    """SendBulkMail: a template sent from a mailbox to every contact a query matches.

    The per-status email counters change in the same transactions that move its emails, so a
    status read is one row, whatever the number of emails.
    """

    __tablename__ = "bulk_operations"
    __table_args__ = (
        sa.CheckConstraint(_OPERATION_STATUS_CHECK, name="status"),
        sa.CheckConstraint(
            "(sender_user_id IS NULL) <> (sender_queue_id IS NULL)", name="one_sender_mailbox"
        ),
        # The reconciler: operations waiting or expanding, by their last progress.
        sa.Index("ix_bulk_operations_status_progressed_at", "status", "progressed_at"),
        # A retried submission finds its first operation (``bulk send --idempotency-key``).
        sa.Index("uq_bulk_operations_idempotency_key", "idempotency_key", unique=True),
    )

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    name: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    status: orm.Mapped[str] = orm.mapped_column(sa.String(20), default=OperationStatus.QUEUED.value)
    template_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("templates.id", ondelete="SET NULL"), index=True
    )
    sender_user_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("system_users.id", ondelete="RESTRICT"), index=True
    )
    sender_queue_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("queues.id", ondelete="RESTRICT"), index=True
    )
    sender_address: orm.Mapped[str] = orm.mapped_column(sa.String(320))
    query: orm.Mapped[str] = orm.mapped_column(sa.Text)
    # Every email of the operation carries it; the message builder reads it from here.
    reply_to: orm.Mapped[str | None] = orm.mapped_column(sa.String(320))
    idempotency_key: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    # Contacts are expanded in id order; every contact up to this id has been handled.
    checkpoint: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    matched: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    created: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    skipped_opted_out: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    skipped_no_address: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    render_failures: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    pending: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    sending: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    sent: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    failed: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    canceled: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    # What came back (migration 0014): replies (auto-replies not counted), bounces (hard, soft and
    # policy), complaints. Moved when the incoming email is stored.
    replies: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0, server_default="0")
    bounces: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0, server_default="0")
    complaints: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0, server_default="0")
    last_error: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)
    started_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    expanded_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    completed_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    # The last time its expansion moved on (or was queued again): what the reconciler watches.
    progressed_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)

    @property
    def current_status(self) -> OperationStatus:
        return OperationStatus(self.status)


class IncomingProfile(Base):
    """Where a user's or queue's incoming mail is fetched from, and how its sync is going.

    The password is Fernet-encrypted (``password_encrypted``) or read from ``password_file`` at
    each sync; never stored in clear. The lease columns make one process sync the mailbox at a
    time; the rest is the sync state that monitoring shows.
    """

    __tablename__ = "incoming_profiles"
    __table_args__ = (
        sa.CheckConstraint("(user_id IS NULL) <> (queue_id IS NULL)", name="one_mailbox"),
        sa.CheckConstraint("protocol IN ('imap', 'pop3')", name="protocol"),
        sa.CheckConstraint("security IN ('tls', 'starttls', 'plain')", name="security"),
        sa.CheckConstraint("after_import IN ('leave', 'seen', 'move', 'delete')", name="after"),
        sa.CheckConstraint(
            "(password_encrypted IS NULL) <> (password_file IS NULL)", name="one_password"
        ),
        # The inbound workers' look for mailboxes due a sync.
        sa.Index("ix_incoming_profiles_next_sync_at", "next_sync_at"),
    )

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    user_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("system_users.id", ondelete="CASCADE"), unique=True
    )
    queue_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("queues.id", ondelete="CASCADE"), unique=True
    )
    mailbox: orm.Mapped[str] = orm.mapped_column(sa.String(320))
    protocol: orm.Mapped[str] = orm.mapped_column(sa.String(4))
    security: orm.Mapped[str] = orm.mapped_column(sa.String(8))
    host: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    port: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    username: orm.Mapped[str] = orm.mapped_column(sa.String(320))
    folder: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    ca_file: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    after_import: orm.Mapped[str] = orm.mapped_column(sa.String(10))
    move_to: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
    password_encrypted: orm.Mapped[bytes | None] = orm.mapped_column(sa.LargeBinary)
    password_file: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    lease_owner: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    lease_expires_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    next_sync_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)
    uidvalidity: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
    last_uid: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    failures: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=0)
    last_attempt_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    last_success_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    last_error: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    blocked_reason: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    # Counters by kind of what this mailbox imported (IncomingKind), for monitoring.
    imported: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
    counts: orm.Mapped[dict[str, int]] = orm.mapped_column(Json, default=dict)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)


class IncomingEmail(Base):
    """What an imported email (direction incoming, status Received) adds to its email row.

    One row per message of a mailbox: its IMAP key (UIDVALIDITY, UID) or POP3 UIDL is unique,
    so a crash and a restart, or two workers, never import a message twice.
    """

    __tablename__ = "incoming_emails"
    __table_args__ = (
        sa.Index(
            "uq_incoming_emails_mailbox_uidvalidity_uid",
            "mailbox",
            "uidvalidity",
            "uid",
            unique=True,
        ),
        sa.Index("uq_incoming_emails_mailbox_uidl", "mailbox", "uidl", unique=True),
        # A new UIDVALIDITY: what is stored already is found by its Message-ID.
        sa.Index("ix_incoming_emails_mailbox_message_id", "mailbox", "message_id"),
        # ``email list --direction incoming --mailbox``, newest first.
        sa.Index("ix_incoming_emails_mailbox_email_id", "mailbox", "email_id"),
    )

    email_id: orm.Mapped[int] = orm.mapped_column(
        sa.ForeignKey("emails.id", ondelete="CASCADE"), primary_key=True
    )
    mailbox: orm.Mapped[str] = orm.mapped_column(sa.String(320))
    uidvalidity: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
    uid: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
    uidl: orm.Mapped[str | None] = orm.mapped_column(sa.String(70))
    message_id: orm.Mapped[str | None] = orm.mapped_column(sa.String(998))
    in_reply_to: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    references: orm.Mapped[list[str]] = orm.mapped_column(Json, default=list)
    date: orm.Mapped[dt.datetime | None] = orm.mapped_column(UTCDateTime)
    size: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    kind: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger)
    # The email of ours it replies to or reports on (a bounce, a complaint).
    replied_email_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("emails.id", ondelete="SET NULL"), index=True
    )
    # Parts over the organization's size limit: name, type and size, without their bytes.
    omitted_attachments: orm.Mapped[list[dict[str, Any]]] = orm.mapped_column(Json, default=list)
    # What could not be read (bad charsets, parts beyond the limit): stored with the rest.
    problems: orm.Mapped[list[str]] = orm.mapped_column(Json, default=list)


class EmailBounce(Base):
    """A bounce or complaint about one of our emails, from a DSN or a feedback report."""

    __tablename__ = "email_bounces"
    __table_args__ = (
        sa.CheckConstraint("kind IN (1, 2, 3, 4)", name="kind"),
        # Soft bounces of a contact within the window.
        sa.Index("ix_email_bounces_contact_id_bounced_at", "contact_id", "bounced_at"),
    )

    id: orm.Mapped[int] = orm.mapped_column(BigId, primary_key=True)
    email_id: orm.Mapped[int] = orm.mapped_column(
        sa.ForeignKey("emails.id", ondelete="CASCADE"), index=True
    )
    report_email_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("emails.id", ondelete="SET NULL")
    )
    contact_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("contacts.id", ondelete="SET NULL")
    )
    kind: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger)
    recipient: orm.Mapped[str | None] = orm.mapped_column(sa.String(320))
    status: orm.Mapped[str | None] = orm.mapped_column(sa.String(20))
    diagnostic: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    bounced_at: orm.Mapped[dt.datetime] = orm.mapped_column(UTCDateTime, default=utcnow)
