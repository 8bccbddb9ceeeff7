"""BackgroundSendEmail for other senders: claimed emails handed out as the exact bytes our
pollers would send, and the outcomes those senders report written back.

The claim is ``outbox.claim`` (the pollers' lease, claim token, approval check and priorities)
and the write-back is ``outbox.complete`` (the same compare-and-set and retry policy), so an
external sender and our pollers share the queue, and two callers never get the same email.
"""

from __future__ import annotations

import datetime as dt
import enum
import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from bulkmail import compose, db, delivery, mime, outbox, signing, smtp, tagged, unsubscribe


@dataclass(frozen=True, kw_only=True, slots=True)
class Handout:
    """One claimed email as an SMTP client needs it."""

    id: int
    claim_token: uuid.UUID
    message_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    smtputf8: bool  # the envelope or headers need the SMTPUTF8 extension
    data: bytes  # CRLF line ends, not dot-stuffed


class Reaper:
    """When a claim should reap expired leases first: every ``interval`` seconds, as each
    poller does (``BULKMAIL_REAP_INTERVAL``). Where only external senders run, no poller would
    reap at all."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


def claim(
    engine: sa.Engine,
    *,
    worker: str,
    limit: int,
    lease: dt.timedelta,
    policy: outbox.RetryPolicy,
    reap: bool = True,
    cache: mime.PartCache = mime.DEFAULT_CACHE,
    links: unsubscribe.Links | None = None,
    keyring: signing.Keyring | None = None,
    return_path: tagged.Tagged | None = None,
) -> list[Handout]:
    """Claim up to ``limit`` due emails for ``worker`` and build them, in one transaction
    (after reaping expired leases, when ``reap``).

    An email whose message cannot be built fails here, as a poller fails it: it is not handed
    out.
    """
    if reap:
        with db.session_scope(engine) as session:
            outbox.reap(session, policy=policy)
    with db.session_scope(engine) as session:
        claimed = outbox.claim(session, worker=worker, limit=limit, lease=lease)
        if not claimed:
            return []
        messages = compose.messages(session, [c.email for c in claimed], links=links)
        signers = (keyring or signing.Keyring()).signers(
            session, [c.email.from_address for c in claimed]
        )
        handed: list[Handout] = []
        unbuildable: list[outbox.Outcome] = []
        for entry in claimed:
            email, message = entry.email, messages[entry.email.id]
            data = delivery.built(entry, message, signers, cache)  # as a poller builds it
            if isinstance(data, outbox.Outcome):
                unbuildable.append(data)
                continue
            handed.append(
                Handout(
                    id=email.id,
                    claim_token=entry.claim_token,
                    message_id=email.message_id,
                    mail_from=delivery.mail_from(email.id, email.from_address, return_path),
                    rcpt_to=(*email.to_addresses, *email.cc_addresses, *email.bcc_addresses),
                    smtputf8=mime.needs_smtputf8(message),
                    data=data,
                )
            )
        if unbuildable:
            outbox.complete(session, unbuildable, policy=policy, worker=worker)
        return handed


class Applied(enum.StrEnum):
    """What became of one reported outcome."""

    APPLIED = "applied"  # the email moved as the outcome says (Sent, retried, Failed, Canceled)
    RELEASED = "released"  # not sent: Pending Send again (or Canceled), uncounted
    STALE = "stale"  # the claim had ended (lease expired, taken over): nothing changed


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    """One email's outcome as an external sender saw it. ``kind`` None: it was never handed
    to an SMTP server (released uncounted, as a poller releases what it could not send)."""

    id: int
    claim_token: uuid.UUID
    kind: smtp.OutcomeKind | None
    reply: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Written:
    items: list[tuple[int, Applied]]
    completed: outbox.Completed
    released: outbox.Released


def report(
    engine: sa.Engine, reports: list[Report], *, worker: str, policy: outbox.RetryPolicy
) -> Written:
    """Write the reported outcomes back in one transaction; per email, whether it applied."""
    with db.session_scope(engine) as session:
        pairs = [(r.id, r.claim_token) for r in reports]
        live = {c.email.id: c for c in outbox.held(session, pairs)}
        outcomes: list[outbox.Outcome] = []
        unsent: list[tuple[int, uuid.UUID]] = []
        items: list[tuple[int, Applied]] = []
        for entry in reports:
            claimed = live.pop(entry.id, None)
            if claimed is None:
                items.append((entry.id, Applied.STALE))
            elif entry.kind is None:
                unsent.append((entry.id, entry.claim_token))
                items.append((entry.id, Applied.RELEASED))
            else:
                outcomes.append(outbox.Outcome(claimed=claimed, kind=entry.kind, reply=entry.reply))
                items.append((entry.id, Applied.APPLIED))
        completed = outbox.complete(session, outcomes, policy=policy, worker=worker)
        released = outbox.release(session, unsent)
    return Written(items=items, completed=completed, released=released)
