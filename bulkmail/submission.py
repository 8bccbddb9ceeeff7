"""A bulk send as a person or a script asks for it: who it reaches, a dry run, and submission.

``submit`` stores an operation as ``bulk.send_bulk_mail`` does, with what a sender needs around
it: a request that would reach nobody is refused (unless allowed), and a request repeated with
the idempotency key of an earlier one returns the operation that one stored instead of storing
a second (a user retrying after an error must not send the campaign twice). ``dry_run`` checks
the same request, counts its recipients and renders one sample, and stores nothing.

Recipients are counted as the expansion decides them: a matching contact that opted out of bulk
email is skipped first, then one without an address; everyone else gets an email.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc, orm

from bulkmail import (
    bulk,
    emails,
    errors,
    expansion,
    headers,
    mailboxes,
    mime,
    models,
    rendering,
    templates,
)
from bulkmail import query as query_language

C = models.Contact
Op = models.BulkOperation

MAX_IDEMPOTENCY_KEY_LENGTH = 200
_OPTED_OUT = C.do_not_bulk_email
_NO_ADDRESS = sa.and_(~C.do_not_bulk_email, sa.or_(C.email.is_(None), C.email == ""))


@dataclass(frozen=True, kw_only=True)
class Audience:
    """The contacts a query matches, and what the expansion would do with them."""

    matched: int
    skipped_opted_out: int
    skipped_no_address: int

    @property
    def recipients(self) -> int:
        """How many would get an email."""
        return self.matched - self.skipped_opted_out - self.skipped_no_address

    def __str__(self) -> str:
        if not self.matched:
            return "the query matches no contact"
        matches = f"the query matches {self.matched:,} contact{'s' if self.matched > 1 else ''}"
        reasons = [
            f"{count:,} {why}"
            for count, why in (
                (self.skipped_opted_out, "opted out of bulk email"),
                (self.skipped_no_address, "without an address"),
            )
            if count
        ]
        skipped = f"{self.matched - self.recipients:,} skipped ({', '.join(reasons)})"
        if not self.recipients:
            return f"{matches}, and nobody would get an email: {skipped}"
        if reasons:
            return f"{matches}: {self.recipients:,} would get an email, {skipped}"
        return f"{matches}: each would get an email"


def audience(session: orm.Session, query: str) -> Audience:
    """Count the contacts ``query`` matches, and those the expansion would skip, in one scan."""
    count = sa.func.count()
    row = session.execute(
        sa.select(count, count.filter(_OPTED_OUT), count.filter(_NO_ADDRESS)).where(
            query_language.parse(query)
        )
    ).one()
    return Audience(matched=row[0], skipped_opted_out=row[1], skipped_no_address=row[2])


@dataclass(frozen=True, kw_only=True)
class Asked:
    """A SendBulkMail request as a user gives it, before any check."""

    template_name: str
    sender_address: str
    query: str
    name: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True, kw_only=True)
class Submission:
    operation: models.BulkOperation
    created: bool  # False: an earlier request with the same idempotency key stored it


def submit(
    session: orm.Session,
    asked: Asked,
    *,
    idempotency_key: str | None = None,
    allow_empty: bool = False,
) -> Submission:
    """Validate and store a SendBulkMail request, once per idempotency key.

    A key already used returns its operation when the request is the same (template, sender,
    query, name, Reply-To), and is refused when it is not. A request whose query reaches nobody
    is refused, naming the counts, unless ``allow_empty``. The caller commits, then enqueues the
    expansion of a created operation (and of a returned one still Queued: its doorbell may be
    what failed the first time).
    """
    key = _key(idempotency_key)
    if key is not None:
        earlier = _by_key(session, key)
        if earlier is not None:
            return _repeated(session, earlier, key, asked)
    request = bulk.validate(session, **dataclasses.asdict(asked))
    if not allow_empty:
        reached = audience(session, asked.query)
        if not reached.recipients:
            raise errors.InvalidInput(
                f"{reached}; nothing was stored (`bulkmail contacts list --query` shows who "
                "matches; --allow-empty stores the operation anyway)"
            )
    try:
        # A savepoint: a concurrent request with the same key may commit first.
        with session.begin_nested():
            operation = bulk.store(session, request, idempotency_key=key)
    except exc.IntegrityError:
        if key is None:
            raise
        earlier = _by_key(session, key)
        if earlier is None:
            raise
        return _repeated(session, earlier, key, asked)
    return Submission(operation=operation, created=True)


def _key(value: str | None) -> str | None:
    if value is None:
        return None
    return headers.check_name("idempotency key", value, limit=MAX_IDEMPOTENCY_KEY_LENGTH)


def _by_key(session: orm.Session, key: str) -> models.BulkOperation | None:
    return session.scalar(sa.select(Op).where(Op.idempotency_key == key))


def _repeated(
    session: orm.Session, operation: models.BulkOperation, key: str, asked: Asked
) -> Submission:
    """The earlier operation of ``key``, if this request is the one that stored it."""
    template_id = session.scalar(
        sa.select(models.Template.id).where(models.Template.name == asked.template_name)
    )
    sender = mailboxes.find_optional(session, asked.sender_address)
    differences = [
        field
        for field, same in (
            ("template", template_id is not None and template_id == operation.template_id),
            ("sender", sender is not None and sender.email == operation.sender_address),
            ("query", asked.query == operation.query),
            ("name", ((asked.name or "").strip() or None) == operation.name),
            ("reply-to", headers.normalize_reply_to(asked.reply_to) == operation.reply_to),
        )
        if not same
    ]
    if differences:
        raise errors.Conflict(
            f"the idempotency key {key!r} was used for bulk operation {operation.id} with a "
            f"different {' and '.join(differences)}; nothing was stored: repeat that request "
            "exactly, or give a new key for a new one"
        )
    return Submission(operation=operation, created=False)


@dataclass(frozen=True, kw_only=True)
class Sample:
    """The email one recipient would get, as it would go out."""

    contact_id: int
    from_address: str
    from_name: str
    to: str
    reply_to: str | None
    subject: str
    text: str | None
    html: str | None
    error: str | None  # why the email would fail instead (it renders for the others)


@dataclass(frozen=True, kw_only=True)
class DryRun:
    audience: Audience
    sample: Sample | None  # None when nobody would get an email


def dry_run(
    session: orm.Session,
    asked: Asked,
    *,
    message_id_domain: str | None = None,
    now: dt.datetime | None = None,
) -> DryRun:
    """What ``submit`` would store, without storing anything: the checks it makes, the counts,
    and the email of the first recipient (by contact id, the expansion's order).

    No email exists yet, so ``email.id`` renders as None; ``email.message_id`` is a fresh one.
    """
    request = bulk.validate(session, **dataclasses.asdict(asked))
    first = session.scalar(
        sa.select(C)
        .where(query_language.parse(asked.query), ~_OPTED_OUT, ~_NO_ADDRESS)
        .order_by(C.id)
        .limit(1)
    )
    sample = None if first is None else _sample(request, first, message_id_domain, now)
    return DryRun(audience=audience(session, asked.query), sample=sample)


def _sample(
    request: bulk.Request,
    contact: models.Contact,
    message_id_domain: str | None,
    now: dt.datetime | None,
) -> Sample:
    sender = request.sender
    assert contact.email is not None  # chosen for having one
    domain = message_id_domain or sender.email.rpartition("@")[2]
    error = None
    subject, text, html = "", None, None
    try:
        rendered = rendering.render(
            templates.compile_template(request.template),
            contact=templates.contact_context(contact),
            sender={"name": sender.name, "address": sender.email},
            email={"id": None, "message_id": mime.make_message_id(domain)},
            now=now or models.utcnow(),
        )
    except rendering.RenderError as failure:
        error = f"{expansion.RENDER_FAILED}{failure}"
    else:
        subject, text, html = rendered.subject, rendered.text, rendered.html
        if len(subject) > emails.MAX_SUBJECT_LENGTH:
            error = (
                f"{expansion.RENDER_FAILED}the subject is {len(subject):,} characters long; "
                f"the limit is {emails.MAX_SUBJECT_LENGTH:,}"
            )
    return Sample(
        contact_id=contact.id,
        from_address=sender.email,
        from_name=sender.name,
        to=contact.email,
        reply_to=request.reply_to,
        subject=subject,
        text=text,
        html=html,
        error=error,
    )


def as_dict(result: DryRun) -> dict[str, object]:
    """The dry run as scripts see it in ``--json``."""
    reached = result.audience
    sample = result.sample
    return {
        "dry_run": True,
        "matched": reached.matched,
        "recipients": reached.recipients,
        "skipped_opted_out": reached.skipped_opted_out,
        "skipped_no_address": reached.skipped_no_address,
        "sample": None
        if sample is None
        else {
            "contact_id": sample.contact_id,
            "from": sample.from_address,
            "from_name": sample.from_name,
            "to": sample.to,
            "reply_to": sample.reply_to,
            "subject": sample.subject,
            "text": sample.text,
            "html": sample.html,
            "error": sample.error,
        },
    }
