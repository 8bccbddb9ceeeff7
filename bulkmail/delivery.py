"""One round of BackgroundSendEmail: claim a batch, build its messages, send them, record.

Database work runs in a thread so the event loop keeps the SMTP connections busy meanwhile; no
transaction is open while an SMTP command is in flight (claim commits before sending).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa

from bulkmail import compose, db, errors, mime, outbox, ratelimit, smtp, smtp_protocol

Item = smtp_protocol.Item[int]


@dataclass(frozen=True, kw_only=True)
class Options:
    worker: str
    batch: int = 500
    lease: dt.timedelta = dt.timedelta(minutes=5)
    policy: outbox.RetryPolicy = field(default_factory=outbox.RetryPolicy)


@dataclass(frozen=True, kw_only=True)
class Round:
    """What one round did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    stale: int = 0


@dataclass(frozen=True, kw_only=True)
class _Prepared:
    claimed: dict[int, outbox.Claimed]
    items: list[Item]
    unbuildable: list[outbox.Outcome]


_KINDS = {
    smtp_protocol.OutcomeKind.DELIVERED: "sent",
    smtp_protocol.OutcomeKind.TEMPORARY: "retry",
    smtp_protocol.OutcomeKind.PERMANENT: "failed",
}


def _prepare(engine: sa.Engine, options: Options, cache: mime.PartCache) -> _Prepared:
    with db.session_scope(engine) as session:
        claimed = outbox.claim(
            session, worker=options.worker, limit=options.batch, lease=options.lease
        )
    if not claimed:
        return _Prepared(claimed={}, items=[], unbuildable=[])
    with db.session_scope(engine) as session:
        messages = compose.messages(session, [c.email for c in claimed])
    items: list[Item] = []
    unbuildable: list[outbox.Outcome] = []
    for entry in claimed:
        email = entry.email
        try:
            data = mime.build(messages[email.id], cache=cache)
        except errors.InvalidInput as error:
            reason = f"message cannot be built: {error}"
            unbuildable.append(outbox.Outcome(claimed=entry, kind="failed", reply=reason))
            continue
        recipients = (*email.to_addresses, *email.cc_addresses, *email.bcc_addresses)
        items.append(
            smtp_protocol.Item(
                key=email.id, sender=email.from_address, recipients=recipients, message=data
            )
        )
    return _Prepared(claimed={c.email.id: c for c in claimed}, items=items, unbuildable=unbuildable)


def _record(
    engine: sa.Engine,
    prepared: _Prepared,
    results: list[smtp_protocol.Outcome[int]],
    options: Options,
) -> Round:
    outcomes = list(prepared.unbuildable)
    unsent: list[outbox.Claimed] = []
    for result in results:
        entry = prepared.claimed[result.key]
        if not result.attempted:
            unsent.append(entry)
            continue
        reply = result.detail
        if result.refused:
            refused = "; ".join(f"{rcpt}: {r.code} {r.text}".strip() for rcpt, r in result.refused)
            reply = f"{reply} (refused {refused})"
        outcomes.append(outbox.Outcome(claimed=entry, kind=_KINDS[result.kind], reply=reply))
    with db.session_scope(engine) as session:
        done = outbox.complete(session, outcomes, policy=options.policy)
        released = outbox.release(session, [(c.email.id, c.claim_token) for c in unsent])
    return Round(
        claimed=len(prepared.claimed),
        sent=done.sent,
        retried=done.retried,
        failed=done.failed,
        released=released,
        stale=done.stale,
    )


async def run_round(
    engine: sa.Engine,
    sender: smtp.Sender,
    options: Options,
    cache: mime.PartCache,
    limiter: ratelimit.RateLimiter | None = None,
) -> Round:
    """Claim, build, send and complete one batch; returns what happened to it."""
    prepared = await asyncio.to_thread(_prepare, engine, options, cache)
    if not prepared.claimed:
        return Round()
    if limiter is not None and prepared.items:
        await limiter.acquire(len(prepared.items))
    results = await sender.send_batch(prepared.items) if prepared.items else []
    return await asyncio.to_thread(_record, engine, prepared, results, options)
