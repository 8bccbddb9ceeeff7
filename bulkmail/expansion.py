"""Expansion: a bulk operation becomes one stored, rendered Pending Send email per recipient.

The contacts that match the operation's query are read in id order, a batch at a time from the
operation's checkpoint (keyset pagination), so memory stays flat whatever their number. The
template is compiled once and rendered for every recipient. Each batch is written in one short
transaction: its rows go in with one COPY, and the checkpoint and counters move on. The
template's attachments are copied once, by reference, to the operation when its expansion
starts; every email of the operation carries them. A helper thread reads and renders the next
batch while one is written, so Python renders on one core while PostgreSQL stores on the other.

Exactly once. A batch's emails, the checkpoint and the counters commit together, and the
operation row is changed with a compare-and-set on its status and checkpoint: a batch that finds
the operation moved on (canceled, or expanded by another copy of the job) rolls back, and the
next batch starts from what is stored. A session advisory lock lets one copy expand an operation
at a time (it goes with the connection if the worker dies); a second copy returns at
once. Under all of that, a unique key on (operation, contact) makes a second email for a
recipient impossible. So the job is safe to redeliver, to run twice at once, and to restart.

Ids at render time. A template may show its email's id and Message-ID, so both exist before it
renders: Message-IDs are generated here, and ids are taken from the emails' sequence. The rows
go in with those ids.

Renders that fail become Failed emails of failure kind RENDER, with the reason; retrying the
operation's failures renders those again (``rerender_failed``).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg.types.json
import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import (
    attachments,
    contacts,
    db,
    emails,
    errors,
    headers,
    mailboxes,
    mime,
    models,
    providers,
    query,
    rendering,
    tally,
    templates,
    unsubscribe,
    wakeup,
)
from bulkmail.models import OperationStatus
from bulkmail.status import FailureKind, State, Status

RENDER_FAILED = "render failed: "

Op = models.BulkOperation
C = models.Contact
E = models.Email

# "bulk": the first key of the advisory locks that expansions take, the operation id the second.
_LOCK_SPACE = 0x62756C6B
_CONTACT_COLUMNS = tuple(C.__table__.c[name] for name in contacts.FIELDS)
# The columns every expanded email is written with, in row order (the rest take their defaults:
# cc and bcc the empty list), with their PostgreSQL types for a binary COPY.
_COPY_COLUMNS = {
    "id": "int8",
    "statecode": "int2",
    "statuscode": "int2",
    "direction": "int2",
    "sender_user_id": "int8",
    "sender_queue_id": "int8",
    "from_address": "varchar",
    "from_name": "varchar",
    "to_addresses": "jsonb",
    "provider": "varchar",
    "subject": "text",
    "body_html": "text",
    "body_text": "text",
    "regarding_contact_id": "int8",
    "template_id": "int8",
    "bulk_operation_id": "int8",
    "priority": "int2",
    "delivery_attempts": "int4",
    "failure_reason": "text",
    "failure_kind": "int2",
    "message_id": "varchar",
    "tracking_token": "uuid",
    "created_at": "timestamptz",
    "modified_at": "timestamptz",
}
_COLUMNS = tuple(_COPY_COLUMNS)
_CONTACT_AT = _COLUMNS.index("regarding_contact_id")
_STATUS_AT = _COLUMNS.index("statuscode")
_OPTED_OUT = sa.text(
    "SELECT id FROM contacts WHERE id = ANY(CAST(:ids AS bigint[])) AND do_not_bulk_email"
)
_TUNE = sa.text("SELECT set_config('synchronous_commit', 'off', true)")
_RERENDER_BATCH = 1_000
_OPEN = (OperationStatus.QUEUED.value, OperationStatus.EXPANDING.value)
_EXPANDING = OperationStatus.EXPANDING.value
_RENDER = int(FailureKind.RENDER)


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    """What every email of one operation is made from; fixed for the whole expansion."""

    operation_id: int
    template_id: int
    compiled: rendering.CompiledTemplate
    where: sa.ColumnElement[bool]
    sender_user_id: int | None
    sender_queue_id: int | None
    from_address: str
    from_name: str
    sender: Mapping[str, object]
    domain: str
    unsubscribe: unsubscribe.Links | None = None
    rules: providers.Rules = field(default_factory=providers.Rules)

    def render(
        self, contact: sa.Row[Any], *, email_id: int, message_id: str, now: dt.datetime
    ) -> rendering.Rendered | str:
        """The recipient's message, or why it cannot be rendered for them."""
        try:
            rendered = rendering.render(
                self.compiled,
                contact=_contact_context(contact),
                sender=self.sender,
                email={
                    "id": email_id,
                    "message_id": message_id,
                    # For a visible footer link; empty when the links are off.
                    "unsubscribe_url": (
                        "" if self.unsubscribe is None else self.unsubscribe.url(email_id)
                    ),
                },
                now=now,
            )
        except rendering.RenderError as error:
            return f"{RENDER_FAILED}{error}"
        if len(rendered.subject) > emails.MAX_SUBJECT_LENGTH:
            return (
                f"{RENDER_FAILED}the subject is {len(rendered.subject):,} characters long; "
                f"the limit is {emails.MAX_SUBJECT_LENGTH:,}"
            )
        return rendered


def _contact_context(contact: sa.Row[Any]) -> dict[str, object]:
    """What a template sees as ``contact`` (``templates.contact_context``), from a row that ends
    with ``_CONTACT_COLUMNS``.

    Straight from the row: loading ORM objects would cost a fifth of each recipient's time, and
    the tags and attributes need no copies, since the sandbox lets no template change them.
    """
    fields = contacts.FIELDS
    return dict(zip(fields, contact[-len(fields) :], strict=True))


class _Superseded(Exception):
    """The operation row changed under a batch (canceled, or another copy moved on)."""


def expand(
    engine: sa.Engine,
    operation_id: int,
    *,
    batch_size: int,
    message_id_domain: str | None = None,
    links: unsubscribe.Links | None = None,
) -> OperationStatus | None:
    """Write the operation's emails from its checkpoint on, batch by batch.

    Returns the status the operation is left in, or ``None`` when another worker is expanding
    it right now. An operation that cannot be expanded any more (its template was deleted, its
    query no longer parses) ends Failed with the reason in ``last_error``.
    """
    if batch_size < 1:
        raise errors.InvalidInput("the expansion batch size must be at least 1")
    with _exclusive(engine, operation_id) as alone:
        if not alone:
            return None
        recipe = _start(engine, operation_id, message_id_domain, links)
        if isinstance(recipe, OperationStatus):
            return recipe
        while True:
            try:
                return _expand_ahead(engine, recipe, batch_size)
            except _Superseded:
                continue


@contextlib.contextmanager
def _exclusive(engine: sa.Engine, operation_id: int) -> Iterator[bool]:
    """Whether this process may expand the operation: while it holds the lock."""
    with engine.connect() as connection:
        key = {"space": _LOCK_SPACE, "op": operation_id}
        acquired = connection.scalar(sa.text("SELECT pg_try_advisory_lock(:space, :op)"), key)
        connection.commit()
        try:
            yield bool(acquired)
        finally:
            if acquired:
                connection.execute(sa.text("SELECT pg_advisory_unlock(:space, :op)"), key)
                connection.commit()


def _start(
    engine: sa.Engine,
    operation_id: int,
    message_id_domain: str | None,
    links: unsubscribe.Links | None,
) -> Recipe | OperationStatus:
    """Move the operation to Expanding and gather its recipe, or say why there is nothing to do."""
    with db.session_scope(engine) as session:
        operation = session.get(Op, operation_id)
        if operation is None:
            raise errors.NotFound(f"bulk operation {operation_id} not found")
        if operation.status not in _OPEN:
            return operation.current_status
        now = models.utcnow()
        try:
            recipe = _make_recipe(
                session, operation, message_id_domain=message_id_domain, links=links
            )
        except errors.BulkmailError as error:
            session.execute(
                sa.update(Op)
                .where(Op.id == operation_id, Op.status.in_(_OPEN))
                .values(
                    status=OperationStatus.FAILED.value,
                    last_error=str(error),
                    completed_at=now,
                    progressed_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            return OperationStatus.FAILED
        started = session.execute(
            sa.update(Op)
            .where(Op.id == operation_id, Op.status.in_(_OPEN))
            .values(
                status=_EXPANDING,
                started_at=sa.func.coalesce(Op.started_at, sa.literal(now, models.UTCDateTime)),
                progressed_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if db.rowcount(started) != 1:
            session.refresh(operation)
            return operation.current_status
        if operation.status == OperationStatus.QUEUED.value:
            # The first start: the template's attachments as they are now go out with every
            # email of the operation. A restart finds it Expanding and copies nothing again.
            attachments.link_operation_attachments(
                session, recipe.template_id, operation_id, now=now
            )
        return recipe


def _make_recipe(
    session: orm.Session,
    operation: models.BulkOperation,
    *,
    message_id_domain: str | None,
    links: unsubscribe.Links | None = None,
) -> Recipe:
    """The operation's recipe, or the error that keeps it from being expanded."""
    template = (
        session.get(models.Template, operation.template_id)
        if operation.template_id is not None
        else None
    )
    if template is None:
        raise errors.NotFound(
            f"the template of bulk operation {operation.id} was deleted; "
            "send the operation again with an existing template"
        )
    sender = mailboxes.sender_of(
        session, user_id=operation.sender_user_id, queue_id=operation.sender_queue_id
    )
    assert sender is not None  # the foreign key keeps the mailbox while the operation exists
    domain = message_id_domain or sender.email.rpartition("@")[2]
    mime.make_message_id(domain)
    return Recipe(
        operation_id=operation.id,
        template_id=template.id,
        compiled=templates.compile_template(template),
        where=query.parse(operation.query),
        sender_user_id=operation.sender_user_id,
        sender_queue_id=operation.sender_queue_id,
        from_address=sender.email,
        from_name=headers.check_header_value("sender name", sender.name),
        sender={"name": sender.name, "address": sender.email},
        domain=domain.strip().lower(),
        unsubscribe=links,
        rules=providers.current(),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class _Batch:
    """The next contacts after a checkpoint, their emails rendered and ready to be written."""

    after: int  # the checkpoint the batch starts from
    last: int  # the id of its last contact: the checkpoint once it is written
    counts: collections.Counter[str]
    rows: list[tuple[object, ...]]  # in the order of _COLUMNS


def _step(connection: sa.Connection, recipe: Recipe, batch_size: int) -> OperationStatus | None:
    """Read, render and write the next batch in one transaction; the status once none is left."""
    state = _state(connection, recipe)
    if state.status != _EXPANDING:
        return OperationStatus(state.status)
    # The contacts are locked, so that none is deleted before its email is in.
    batch = _prepare(connection, recipe, state.checkpoint, batch_size, lock=True)
    if batch is None:
        return _finish(connection, recipe, state.checkpoint)
    _write(connection, recipe, batch)
    return None


def _expand_ahead(engine: sa.Engine, recipe: Recipe, batch_size: int) -> OperationStatus:
    """Write batch after batch while a helper thread reads and renders the next one.

    Rendering is the Python half of the work and storing the PostgreSQL half; this way they run
    at the same time, on two cores. The writer checks each batch against the stored checkpoint.
    """
    with engine.connect() as connection:
        state = _state(connection, recipe)
    if state.status != _EXPANDING:
        return OperationStatus(state.status)
    with _RenderedAhead(engine, recipe, batch_size, after=state.checkpoint) as batches:
        while True:
            batch = next(batches)
            try:
                with engine.begin() as connection:
                    status = _write_ahead(connection, recipe, batch)
            except (sa.exc.IntegrityError, psycopg.IntegrityError):
                # A recipient was deleted after the helper read it: this batch is read again,
                # locked, and written in one transaction.
                with engine.begin() as connection:
                    _step(connection, recipe, batch_size)
                raise _Superseded from None
            if status is not None:
                return status


def _write_ahead(
    connection: sa.Connection, recipe: Recipe, batch: _Batch | None
) -> OperationStatus | None:
    state = _state(connection, recipe)
    if state.status != _EXPANDING:
        return OperationStatus(state.status)
    if batch is None:
        return _finish(connection, recipe, state.checkpoint)
    if state.checkpoint != batch.after:
        raise _Superseded
    _write(connection, recipe, batch)
    return None


class _RenderedAhead:
    """The batches after a checkpoint, read and rendered by a helper thread one batch ahead.

    Iterating yields each batch, then ``None`` at the end of the contacts. At most three rendered
    batches exist at a time (being rendered, waiting, being written): memory stays bounded. Leaving
    the block stops the thread and waits for it.
    """

    def __init__(self, engine: sa.Engine, recipe: Recipe, batch_size: int, *, after: int) -> None:
        self._engine = engine
        self._recipe = recipe
        self._batch_size = batch_size
        self._after = after
        self._ready: queue.Queue[_Batch | BaseException | None] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bulkmail-render", daemon=True)

    def __enter__(self) -> Iterator[_Batch | None]:
        self._thread.start()
        return self._batches()

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _batches(self) -> Iterator[_Batch | None]:
        while True:
            item = self._ready.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def _run(self) -> None:
        after = self._after
        try:
            while not self._stop.is_set():
                # Rendered after the read's transaction has ended: held open for the few hundred
                # milliseconds of rendering, it would hold back the cleanup of the rows that the
                # pollers are moving meanwhile (their claims would scan past more dead entries).
                with self._engine.connect() as connection:
                    read = _read(connection, self._recipe, after, self._batch_size, lock=False)
                batch = None if read is None else read.render(self._recipe)
                if not self._hand_over(batch) or batch is None:
                    return
                after = batch.last
        except BaseException as error:
            self._hand_over(error)

    def _hand_over(self, item: _Batch | BaseException | None) -> bool:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._ready.put(item, timeout=0.1)
                return True
        return False


def _state(connection: sa.Connection, recipe: Recipe) -> sa.Row[str, int]:
    return connection.execute(
        sa.select(Op.status, Op.checkpoint).where(Op.id == recipe.operation_id)
    ).one()


def _prepare(
    connection: sa.Connection, recipe: Recipe, after: int, batch_size: int, *, lock: bool
) -> _Batch | None:
    """Read the contacts after ``after`` and render their emails; ``None`` when there are none."""
    read = _read(connection, recipe, after, batch_size, lock=lock)
    return None if read is None else read.render(recipe)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Read:
    """A batch's contacts as read, with the ids reserved for their emails: what rendering needs,
    and nothing of the database."""

    after: int
    contacts: list[sa.Row[Any]]  # those to email
    ids: list[int]
    last: int
    counts: collections.Counter[str]

    def render(self, recipe: Recipe) -> _Batch:
        rows = list(_rows(recipe, self.contacts, self.ids, models.utcnow(), self.counts))
        return _Batch(after=self.after, last=self.last, counts=self.counts, rows=rows)


def _read(
    connection: sa.Connection, recipe: Recipe, after: int, batch_size: int, *, lock: bool
) -> _Read | None:
    """The contacts after ``after`` and ids for their emails; ``None`` when there are none."""
    select = (
        sa.select(*_CONTACT_COLUMNS)
        .where(recipe.where, C.id > after)
        .order_by(C.id)
        .limit(batch_size)
    )
    if lock:
        select = select.with_for_update(read=True, key_share=True)
    contacts = connection.execute(select).all()
    if not contacts:
        return None
    counts: collections.Counter[str] = collections.Counter(matched=len(contacts))
    eligible = []
    for contact in contacts:
        if contact.do_not_bulk_email:
            counts["skipped_opted_out"] += 1
        elif not contact.email:
            counts["skipped_no_address"] += 1
        else:
            eligible.append(contact)
    ids = _reserve_ids(connection, len(eligible)) if eligible else []
    return _Read(after=after, contacts=eligible, ids=ids, last=contacts[-1].id, counts=counts)


def _write(connection: sa.Connection, recipe: Recipe, batch: _Batch) -> None:
    """Store a batch's emails and move the checkpoint and counters."""
    _tune(connection)
    rows, counts = _without_opted_out(connection, batch)
    if rows:
        _copy(connection, rows)
    now = models.utcnow()
    moved = connection.execute(
        sa.update(Op)
        .where(
            Op.id == recipe.operation_id,
            Op.status == _EXPANDING,
            Op.checkpoint == batch.after,
        )
        .values(
            checkpoint=batch.last,
            matched=Op.matched + counts["matched"],
            created=Op.created + counts["created"],
            skipped_opted_out=Op.skipped_opted_out + counts["skipped_opted_out"],
            skipped_no_address=Op.skipped_no_address + counts["skipped_no_address"],
            render_failures=Op.render_failures + counts["render_failures"],
            pending=Op.pending + counts["created"],
            failed=Op.failed + counts["render_failures"],
            progressed_at=now,
        )
    )
    if moved.rowcount != 1:
        raise _Superseded
    if counts["created"]:
        # Wakes the pollers once per batch, when it commits.
        connection.execute(sa.text(f"NOTIFY {wakeup.CHANNEL}"))


def _without_opted_out(
    connection: sa.Connection, batch: _Batch
) -> tuple[list[tuple[object, ...]], collections.Counter[str]]:
    """The batch's rows and counts without the contacts who opted out since it was read.

    A contact who unsubscribes while the operation expands must not get its email: one read
    (and rendered) before the unsubscribe committed is dropped here, and one written before
    it is canceled by it. The unsubscribe's gate makes sure that one of the two happens: this
    transaction holds it shared from before this check until its commit, and an unsubscribe
    holds it alone while it opts the contact out and cancels their pending emails.
    """
    if not batch.rows:
        return batch.rows, batch.counts
    unsubscribe.gate_shared(connection)
    ids = "{" + ",".join(str(row[_CONTACT_AT]) for row in batch.rows) + "}"
    opted_out = set(connection.scalars(_OPTED_OUT, {"ids": ids}))
    if not opted_out:
        return batch.rows, batch.counts
    counts = batch.counts.copy()
    rows = []
    for row in batch.rows:
        if row[_CONTACT_AT] not in opted_out:
            rows.append(row)
            continue
        counts["skipped_opted_out"] += 1
        counts["created" if row[_STATUS_AT] == int(Status.PENDING_SEND) else "render_failures"] -= 1
    return rows, counts


def _tune(connection: sa.Connection) -> None:
    # A commit lost in a crash loses the batch's rows and its checkpoint together, so the batch
    # is simply expanded again: no need to wait for the WAL flush. (The bodies' lz4 compression
    # is the columns' own setting since migration 0007.)
    connection.execute(_TUNE)


def _finish(connection: sa.Connection, recipe: Recipe, checkpoint: int) -> OperationStatus:
    """Every recipient has an email: the operation is Sending, or Completed if none is open."""
    now = models.utcnow()
    idle = Op.pending + Op.sending == 0
    status = connection.scalar(
        sa.update(Op)
        .where(Op.id == recipe.operation_id, Op.status == _EXPANDING, Op.checkpoint == checkpoint)
        .values(
            status=sa.case(
                (idle, OperationStatus.COMPLETED.value), else_=OperationStatus.SENDING.value
            ),
            expanded_at=now,
            completed_at=sa.case((idle, sa.literal(now, models.UTCDateTime))),
            progressed_at=now,
        )
        .returning(Op.status)
    )
    if status is None:
        raise _Superseded
    return OperationStatus(status)


def _reserve_ids(connection: sa.Connection, count: int) -> list[int]:
    reserved: list[int] = connection.scalar(
        sa.text(
            "SELECT array_agg(nextval(pg_get_serial_sequence('emails', 'id')))"
            " FROM generate_series(1, :count)"
        ),
        {"count": count},
    )
    return reserved


def _rows(
    recipe: Recipe,
    contacts: Sequence[sa.Row[Any]],
    ids: Sequence[int],
    now: dt.datetime,
    counts: collections.Counter[str],
) -> Iterator[tuple[object, ...]]:
    """One rendered row (``_COLUMNS``) per recipient; ``counts`` keeps score."""
    sent_from = (recipe.sender_user_id, recipe.sender_queue_id, recipe.from_address)
    tokens = _time_ordered(2 * len(contacts))
    for contact, email_id in zip(contacts, ids, strict=True):
        message_id = f"{next(tokens):032x}@{recipe.domain}"
        address = [contact.email]
        outcome = recipe.render(contact, email_id=email_id, message_id=message_id, now=now)
        if isinstance(outcome, str):
            counts["render_failures"] += 1
            status, subject, html, text, reason = Status.FAILED, "", None, None, outcome
            kind: int | None = _RENDER
        else:
            counts["created"] += 1
            status, subject, html, text, reason = (
                Status.PENDING_SEND,
                outcome.subject,
                outcome.html,
                outcome.text,
                None,
            )
            kind = None
        yield (
            email_id,
            int(status.state),
            int(status),
            1,
            *sent_from,
            recipe.from_name,
            address,
            recipe.rules.provider_of(address),
            subject,
            html,
            text,
            contact.id,
            recipe.template_id,
            recipe.operation_id,
            1,
            0,
            reason,
            kind,
            message_id,
            uuid.UUID(int=next(tokens)),
            now,
            now,
        )


def _time_ordered(count: int) -> Iterator[int]:
    """``count`` random UUIDv7 numbers: 74 random bits behind the time in milliseconds.

    Message-IDs and tracking tokens are unique keys; random ones (uuid4) land on random pages of
    their indexes, a batch's time-ordered ones on the last few, which stores them a third faster.
    """
    millis = time.time_ns() // 1_000_000
    noise = os.urandom(10 * count)
    for start in range(0, 10 * count, 10):
        bits = int.from_bytes(noise[start : start + 10], "big")
        rand_a, rand_b = bits >> 68, bits & (1 << 62) - 1
        yield millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b


def _copy(connection: sa.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    raw = connection.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor:
        psycopg.types.json.set_json_dumps(_address_list_json, cursor)
        columns = ", ".join(_COLUMNS)
        with cursor.copy(f"COPY emails ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_COPY_COLUMNS.values()))
            for row in rows:
                copy.write_row(row)


def _address_list_json(value: Any) -> str:
    # Every row carries three address lists; json.dumps costs a tenth of the Python time of a
    # row, and one plain address in brackets needs none of its escaping.
    if isinstance(value, list) and len(value) < 2 and all(map(_plain, value)):
        return f'["{value[0]}"]' if value else "[]"
    return json.dumps(value)


def _plain(text: object) -> bool:
    return (
        isinstance(text, str)
        and text.isascii()
        and text.isprintable()
        and '"' not in text
        and "\\" not in text
    )


def rerender_failed(
    session: orm.Session,
    operation: models.BulkOperation,
    counters: tally.Tally,
    *,
    links: unsubscribe.Links | None = None,
) -> int:
    """Render the operation's emails whose rendering failed again, with the template as it is now.

    Those that render go back to Pending Send carrying the operation's attachments (their moves
    are added to ``counters``); the others stay Failed with the new reason. Returns how many
    went back.
    """
    recipe = _make_recipe(session, operation, message_id_domain=None, links=links)
    # An operation expanded before its attachments were its own (migration 0008), or whose
    # template had none then: its re-rendered emails get the template's as they are now.
    link_each = not attachments.operation_has_attachments(session, operation.id)
    now = models.utcnow()
    recovered = 0
    after = 0
    while True:
        failed = session.execute(
            sa.select(E.id.label("email_id"), E.message_id, *_CONTACT_COLUMNS)
            .join(C, C.id == E.regarding_contact_id)
            .where(
                E.bulk_operation_id == operation.id,
                E.statuscode == int(Status.FAILED),
                E.failure_kind == _RENDER,
                E.id > after,
                C.do_not_bulk_email.is_(False),
            )
            .order_by(E.id)
            .limit(_RERENDER_BATCH)
        ).all()
        if not failed:
            return recovered
        after = failed[-1].email_id
        rendered: list[dict[str, object]] = []
        recovered_ids: list[int] = []
        still: list[dict[str, object]] = []
        for row in failed:
            outcome = recipe.render(row, email_id=row.email_id, message_id=row.message_id, now=now)
            if isinstance(outcome, str):
                still.append({"b_id": row.email_id, "b_reason": outcome})
            else:
                recovered_ids.append(row.email_id)
                rendered.append(
                    {
                        "b_id": row.email_id,
                        "b_subject": outcome.subject,
                        "b_html": outcome.html,
                        "b_text": outcome.text,
                    }
                )
        mine = (E.id == sa.bindparam("b_id"), E.statuscode == int(Status.FAILED))
        if still:
            session.connection().execute(
                sa.update(E)
                .where(*mine)
                .values(failure_reason=sa.bindparam("b_reason"), modified_at=now)
                .execution_options(synchronize_session=False),
                still,
            )
        if rendered:
            result = session.connection().execute(
                sa.update(E)
                .where(*mine)
                .values(
                    statuscode=int(Status.PENDING_SEND),
                    statecode=int(State.COMPLETED),
                    subject=sa.bindparam("b_subject"),
                    body_html=sa.bindparam("b_html"),
                    body_text=sa.bindparam("b_text"),
                    failure_reason=None,
                    failure_kind=None,
                    next_attempt_at=None,
                    delivery_attempts=0,
                    modified_at=now,
                )
                .execution_options(synchronize_session=False),
                rendered,
            )
            count = db.rowcount(result)
            recovered += count
            counters.move(operation.id, Status.FAILED, Status.PENDING_SEND, count)
            if link_each:
                attachments.link_template_attachments(
                    session, recipe.template_id, E.id.in_(recovered_ids)
                )
