"""One sync of one incoming mailbox, under a lease on its profile row; IMAP IDLE where offered.

A worker claims due mailboxes (``claim``), syncs each (``run``) and the lease ends with the sync
state written: last attempt, last success, what failed, why the mailbox is not synced, and
when it is due again (backoff after a failure). A lease that expires (a worker killed) lets
another worker take the mailbox; the unique keys of ``store`` make the overlap harmless.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import imapclient
import sqlalchemy as sa
from sqlalchemy import exc, orm

from bulkmail import db, errors, mailboxes, models, organization, tagged
from bulkmail.inbound import bounces, profiles, servers, store
from bulkmail.status import ApprovalStatus

log = logging.getLogger(__name__)
_T = TypeVar("_T")
P = models.IncomingProfile
I = models.IncomingEmail  # noqa: E741
CHUNK = 100  # messages looked up, fetched and acted on together; the lease is renewed each time
MAX_FETCH_BYTES = 16 << 20  # one FETCH asks for at most this much (a 50 MB message alone)


@dataclass(frozen=True, kw_only=True)
class Options:
    secret_key: str | None
    # IMAP servers that offer IDLE: after a sync, wait there for new mail for the poll
    # interval instead of logging out (the worker's --exit-when-idle turns it off).
    idle: bool
    lease: dt.timedelta
    interval: dt.timedelta
    backoff_max: dt.timedelta
    soft_limit: bounces.SoftLimit
    return_paths: tagged.Tagged | None = None  # BULKMAIL_BOUNCE_DOMAIN's bounces+TOKEN@…
    unsubscribes: tagged.Tagged | None = None  # BULKMAIL_UNSUBSCRIBE_DOMAIN's unsubscribe+…


@dataclass(frozen=True, kw_only=True)
class Result:
    mailbox: str
    imported: int = 0
    error: str | None = None
    blocked: str | None = None


class LeaseLost(errors.BulkmailError):
    """Another worker holds the mailbox now (this one stalled past its lease)."""


def claim(engine: sa.Engine, worker: str, limit: int, lease: dt.timedelta) -> list[int]:
    """Lease up to ``limit`` mailboxes that are due and that nobody holds; their profile ids."""
    now = models.utcnow()
    due = (
        sa.select(P.id)
        .where(P.next_sync_at <= now)
        .where(sa.or_(P.lease_expires_at.is_(None), P.lease_expires_at < now))
        .order_by(P.next_sync_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    with db.transaction(engine) as session:
        return list(
            session.scalars(
                sa.update(P)
                .where(P.id.in_(due.scalar_subquery()))
                .values(lease_owner=worker, lease_expires_at=now + lease)
                .returning(P.id)
            )
        )


def seconds_until_due(engine: sa.Engine) -> float | None:
    """How long until the next mailbox is due; None when no mailbox has a profile."""
    with db.transaction(engine) as session:
        nearest = session.scalar(sa.select(sa.func.min(P.next_sync_at)))
    if nearest is None:
        return None
    wait: float = (nearest - models.utcnow()).total_seconds()
    return max(0.0, wait)


def blocked_reason(session: orm.Session, mailbox: mailboxes.Mailbox) -> str | None:
    """Why nothing may be imported for ``mailbox`` now (approval), or None."""
    org = organization.get(session)
    user = isinstance(mailbox, models.SystemUser)
    required = org.require_approval_user if user else org.require_approval_queue
    if not required or mailbox.approval_status == ApprovalStatus.APPROVED:
        return None
    current = ApprovalStatus(mailbox.approval_status).label
    return (
        f"not synced: {mailbox.email} is {current} and the organization requires approval for "
        f"{'user' if user else 'queue'} email; an approver can run `bulkmail mailbox approve "
        f"{mailbox.email} --as APPROVER`"
    )


def run(
    engine: sa.Engine, profile_id: int, worker: str, options: Options, stop: Callable[[], bool]
) -> Result:
    """Sync the mailbox of ``profile_id``, which ``worker`` holds; write its sync state."""
    with db.transaction(engine) as session:
        profile = session.get(P, profile_id)
        if profile is None or profile.lease_owner != worker:
            return Result(mailbox="?", error="the profile was removed or taken over")
        mailbox = mailboxes.sender_of(session, user_id=profile.user_id, queue_id=profile.queue_id)
        assert mailbox is not None  # the profile goes with its user or queue
        blocked = blocked_reason(session, mailbox)
        address = profile.mailbox
        state = _State(
            endpoint=profiles.endpoint(profile),
            after=profiles.AfterImport(profile.after_import),
            move_to=profile.move_to,
            uidvalidity=profile.uidvalidity,
            last_uid=profile.last_uid,
            failures=profile.failures,
        )
        target = store.Target(
            mailbox=address,
            max_attachment=organization.get(session).max_upload_size,
            soft_limit=options.soft_limit,
            return_paths=options.return_paths,
            unsubscribes=options.unsubscribes,
        )
    if blocked is not None:
        _finish(engine, profile_id, worker, options, blocked=blocked)
        return Result(mailbox=address, blocked=blocked)
    sync = _Sync(engine, profile_id, worker, options, target, state, stop)
    try:
        # The profile's loaded columns outlive the transaction (expire_on_commit is off).
        password = profiles.password(profile, options.secret_key)
        if state.endpoint.protocol == "imap":
            sync.imap(password)
        else:
            sync.pop3(password)
    except LeaseLost:
        log.warning("%s: another worker took over the mailbox; stopped", address)
        return Result(mailbox=address, imported=sync.imported, error="lease lost")
    except errors.BulkmailError as error:
        _finish(engine, profile_id, worker, options, error=str(error), failures=state.failures)
        log.warning("%s: %s", address, error)
        return Result(mailbox=address, imported=sync.imported, error=str(error))
    # After IDLE the poll interval has passed already: the mailbox is due again at once.
    _finish(engine, profile_id, worker, options, again_now=stop() or sync.idled)
    return Result(mailbox=address, imported=sync.imported)


@dataclass(kw_only=True)
class _State:
    endpoint: profiles.Endpoint
    after: profiles.AfterImport
    move_to: str | None
    uidvalidity: int | None
    last_uid: int
    failures: int


class _Sync:
    """The steps of one sync; counts what it imported."""

    def __init__(
        self,
        engine: sa.Engine,
        profile_id: int,
        worker: str,
        options: Options,
        target: store.Target,
        state: _State,
        stop: Callable[[], bool],
    ) -> None:
        self.engine, self.profile_id, self.worker = engine, profile_id, worker
        self.options, self.target, self.state, self.stop = options, target, state, stop
        self.imported = 0
        self.idled = False  # watched the mailbox in IMAP IDLE for the poll interval

    def _renew(self, **values: object) -> None:
        """Extend the lease (and save ``values``), or raise ``LeaseLost``."""
        with db.transaction(self.engine) as session:
            done = session.execute(
                sa.update(P)
                .where(P.id == self.profile_id, P.lease_owner == self.worker)
                .values(lease_expires_at=models.utcnow() + self.options.lease, **values)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                raise LeaseLost(f"lost the lease on {self.target.mailbox}")

    def _store(self, messages: list[tuple[store.Key, bytes]], *, rekey: bool) -> None:
        """Store ``messages`` in one transaction; should another worker have stored one of them
        meanwhile (it held the lease before it expired), one by one, skipping those."""
        try:
            with db.transaction(self.engine) as session:
                outcomes = store.store(session, self.target, messages, rekey=rekey)
                store.count(session, self.target.mailbox, outcomes)
        except exc.IntegrityError:
            outcomes = []
            for message in messages:
                with db.transaction(self.engine) as session:
                    outcome = store.store(session, self.target, [message], rekey=rekey)
                    store.count(session, self.target.mailbox, outcome)
                outcomes += outcome
        self.imported += sum(outcome.kind is not None for outcome in outcomes)

    def imap(self, password: str) -> None:
        endpoint, state = self.state.endpoint, self.state
        with servers.imap(endpoint, password) as client, servers.translated(endpoint):
            readonly = state.after is profiles.AfterImport.LEAVE
            info = client.select_folder(endpoint.folder, readonly=readonly)
            uidvalidity = int(info[b"UIDVALIDITY"])
            # A new UIDVALIDITY (or the first sync): UIDs start over; what is stored already is
            # recognised by its Message-ID instead of being imported twice.
            renumbered = uidvalidity != state.uidvalidity
            start = 1 if renumbered else state.last_uid + 1
            rekey = renumbered and self._has_mail()
            if renumbered:
                self._renew(uidvalidity=uidvalidity, last_uid=0)
            idle = self.options.idle and client.has_capability("IDLE")
            while True:
                uids = sorted(u for u in client.search(["UID", f"{start}:*"]) if u >= start)
                for chunk in _chunks(uids, CHUNK):
                    if self.stop():
                        return
                    self._renew()
                    stored = self._stored_uids(uidvalidity, chunk)
                    fetched = _fetch(client, [u for u in chunk if u not in stored])
                    keys = [(store.Key(uidvalidity=uidvalidity, uid=u), raw) for u, raw in fetched]
                    self._store(keys, rekey=rekey)
                    self._after_imap(client, chunk)
                    self._renew(last_uid=chunk[-1])
                    start = chunk[-1] + 1
                if not idle or not self._idle(client):
                    return

    def _idle(self, client: imapclient.IMAPClient) -> bool:
        """Wait in IMAP IDLE, for at most the poll interval, until a message arrives (True)."""
        self.idled = True
        deadline = time.monotonic() + self.options.interval.total_seconds()
        renewed = time.monotonic()
        client.idle()
        try:
            while not self.stop() and (left := deadline - time.monotonic()) > 0:
                if time.monotonic() - renewed > self.options.lease.total_seconds() / 4:
                    self._renew()
                    renewed = time.monotonic()
                for response in client.idle_check(timeout=min(1.0, left)):
                    if len(response) > 1 and response[1] == b"EXISTS":
                        return True
        finally:
            client.idle_done()
        return False

    def _has_mail(self) -> bool:
        with db.transaction(self.engine) as session:
            found = session.scalar(
                sa.select(I.email_id).where(I.mailbox == self.target.mailbox).limit(1)
            )
        return found is not None

    def _stored_uids(self, uidvalidity: int, uids: Sequence[int]) -> set[int]:
        with db.transaction(self.engine) as session:
            return set(
                session.scalars(
                    sa.select(I.uid).where(
                        I.mailbox == self.target.mailbox,
                        I.uidvalidity == uidvalidity,
                        I.uid.in_(uids),
                    )
                )
            )

    def _after_imap(self, client: imapclient.IMAPClient, uids: list[int]) -> None:
        after = self.state.after
        if after is profiles.AfterImport.SEEN:
            client.add_flags(uids, [imapclient.SEEN], silent=True)
        elif after is profiles.AfterImport.MOVE:
            assert self.state.move_to is not None
            if not client.folder_exists(self.state.move_to):
                client.create_folder(self.state.move_to)
            client.move(uids, self.state.move_to)
        elif after is profiles.AfterImport.DELETE:
            client.delete_messages(uids, silent=True)
            client.uid_expunge(uids) if client.has_capability("UIDPLUS") else client.expunge()

    def pop3(self, password: str) -> None:
        endpoint = self.state.endpoint
        with servers.pop3(endpoint, password) as client, servers.translated(endpoint):
            listing = [line.decode("ascii", "replace").split() for line in client.uidl()[1]]
            messages = [(int(number), uidl[:70]) for number, uidl in listing]
            for chunk in _chunks(messages, CHUNK):
                if self.stop():
                    return
                self._renew()
                with db.transaction(self.engine) as session:
                    stored = set(
                        session.scalars(
                            sa.select(I.uidl).where(
                                I.mailbox == self.target.mailbox,
                                I.uidl.in_([uidl for _, uidl in chunk]),
                            )
                        )
                    )
                fetched = [
                    (store.Key(uidl=uidl), b"\r\n".join(client.retr(number)[1]) + b"\r\n")
                    for number, uidl in chunk
                    if uidl not in stored
                ]
                self._store(fetched, rekey=False)
                if self.state.after is profiles.AfterImport.DELETE:
                    for number, _ in chunk:
                        client.dele(number)


def _chunks(items: Sequence[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _fetch(client: imapclient.IMAPClient, uids: list[int]) -> Iterator[tuple[int, bytes]]:
    """Each message's bytes, without setting \\Seen, in FETCHes of at most MAX_FETCH_BYTES."""
    if not uids:
        return
    sizes = {
        uid: int(data[b"RFC822.SIZE"]) for uid, data in client.fetch(uids, ["RFC822.SIZE"]).items()
    }
    group: list[int] = []
    total = 0
    for uid in (u for u in uids if u in sizes):  # one expunged meanwhile is gone
        if group and total + sizes[uid] > MAX_FETCH_BYTES:
            yield from _bodies(client, group)
            group, total = [], 0
        group.append(uid)
        total += sizes[uid]
    yield from _bodies(client, group)


def _bodies(client: imapclient.IMAPClient, uids: list[int]) -> Iterator[tuple[int, bytes]]:
    if not uids:
        return
    fetched = client.fetch(uids, ["BODY.PEEK[]"])
    for uid in uids:
        raw = fetched.get(uid, {}).get(b"BODY[]")
        if isinstance(raw, bytes):
            yield uid, raw


def _finish(
    engine: sa.Engine,
    profile_id: int,
    worker: str,
    options: Options,
    *,
    blocked: str | None = None,
    error: str | None = None,
    failures: int = 0,
    again_now: bool = False,
) -> None:
    """End the lease, writing the sync state and when the mailbox is due again."""
    now = models.utcnow()
    values: dict[str, object] = {
        "lease_owner": None,
        "lease_expires_at": None,
        "last_attempt_at": now,
        "blocked_reason": blocked,
    }
    if error is not None:
        # Backoff: the interval (1 s at least), doubling with each failure in a row, at most
        # backoff_max.
        first = max(options.interval, dt.timedelta(seconds=1))
        wait = min(first * 2 ** min(failures, 20), options.backoff_max)
        values.update(failures=failures + 1, last_error=error[:1000], next_sync_at=now + wait)
    else:
        values["next_sync_at"] = now if again_now else now + options.interval
        if blocked is None:
            values.update(failures=0, last_error=None, last_success_at=now)
    with db.transaction(engine) as session:
        session.execute(
            sa.update(P).where(P.id == profile_id, P.lease_owner == worker).values(**values)
        )
