"""One round of BackgroundSendEmail: claim a batch, build its messages, send them, record.

Database work runs in a thread so the event loop keeps the SMTP connections busy meanwhile; no
transaction is open while an SMTP command is in flight (claim commits before sending).

Outcomes are written as the replies come in, by one ``Recorder`` per poller, while later
messages are being sent. The recorder also bounds what a crash can cost: at most
``completion_batch`` messages are ever handed to SMTP without their outcome committed, so a
kill -9 sends at most that many twice (after the lease expires, another poller sends them again).

Right before each part of a batch goes to the server, the poller asks the database which of its
emails were canceled meanwhile (``outbox.withdrawn``) and hands over only the others; their
claims end Canceled. So once a cancel has committed and every claim of it has ended, nothing of
it reaches SMTP any more. The same check withholds the emails whose claim the poller lost: a
poller stopped (SIGSTOP, swapped out) past its lease, whose claims the reaper ended and other
pollers took, hands none of the rest of its batch over when it resumes.

A round never loses what the SMTP server said: when the database is unreachable at the moment
the outcomes are written, they are written again until it is back (each write is a
compare-and-set on the claim token, so writing twice changes nothing). A batch is only handed
to SMTP while at least half of its lease is left: a poller that stalled after claiming (stopped,
swapped out, throttled by the rate limit) releases the batch instead of racing the reaper.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import exc, orm

from bulkmail import (
    compose,
    db,
    defaults,
    errors,
    ledger,
    mime,
    models,
    outbox,
    ratelimit,
    signing,
    smtp,
    tagged,
    throttle,
    unsubscribe,
)
from bulkmail.status import FailureKind

Item = smtp.Item[int]

logger = logging.getLogger(__name__)

# The driver's errors for a database that went away (or is restarting): worth waiting out.
DATABASE_DOWN = (exc.OperationalError, exc.InterfaceError)


@dataclass(frozen=True, kw_only=True)
class Options:
    worker: str
    batch: int = defaults.BATCH
    # Messages handed to SMTP whose outcome is not yet committed, at most: the kill -9 bound.
    completion_batch: int = defaults.COMPLETION_BATCH
    lease: dt.timedelta = dt.timedelta(seconds=defaults.LEASE_SECONDS)
    policy: outbox.RetryPolicy = field(default_factory=outbox.RetryPolicy)
    unsubscribe: unsubscribe.Links | None = None  # None: no List-Unsubscribe fields
    return_path: tagged.Tagged | None = None  # None: MAIL FROM is the From address
    keyring: signing.Keyring = field(default_factory=signing.Keyring)  # DKIM keys, read once


@dataclass(frozen=True, kw_only=True)
class Round:
    """What one round did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    canceled: int = 0  # withdrawn before SMTP, or a temporary failure, after a cancel
    stale: int = 0
    # Nothing claimed while a capped provider had no token: seconds until it has one again.
    throttled_wait: float = 0.0

    @property
    def attempted(self) -> bool:
        """Whether any email got an answer (or a final verdict) in this round."""
        return bool(self.sent or self.retried or self.failed or self.canceled or self.stale)

    def __add__(self, other: Round) -> Round:
        return Round(
            claimed=self.claimed + other.claimed,
            sent=self.sent + other.sent,
            retried=self.retried + other.retried,
            failed=self.failed + other.failed,
            released=self.released + other.released,
            canceled=self.canceled + other.canceled,
            stale=self.stale + other.stale,
            throttled_wait=max(self.throttled_wait, other.throttled_wait),
        )


@dataclass(frozen=True, kw_only=True)
class _Prepared:
    claimed: dict[int, outbox.Claimed]
    items: list[Item]
    unbuildable: list[outbox.Outcome]


def summary(error: exc.SQLAlchemyError) -> str:
    """The driver's first line about ``error``, without the SQL and parameters."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def built(
    entry: outbox.Claimed,
    message: mime.Message,
    signers: signing.Signers,
    cache: mime.PartCache,
) -> bytes | outbox.Outcome:
    """The bytes a claimed email goes out as, signed where its domain has a DKIM key; or the
    outcome to record when it cannot go out: temporary when the key file is unusable (never
    sent unsigned: it waits for a usable file), permanent when the message cannot be built.
    """
    try:
        return signers.sign(entry.email.from_address, mime.build(message, cache=cache))
    except signing.KeyUnusable as error:
        reply = f"not signed: {error}"
        return outbox.Outcome(claimed=entry, kind=smtp.OutcomeKind.TEMPORARY, reply=reply)
    except errors.InvalidInput as error:
        return outbox.Outcome(
            claimed=entry,
            kind=smtp.OutcomeKind.PERMANENT,
            reply=f"message cannot be built: {error}",
            failure=FailureKind.UNBUILDABLE,
        )


def mail_from(email_id: int, from_address: str, return_path: tagged.Tagged | None) -> str:
    """The envelope sender: the email's own return path (VERP), so that a bounce names the
    email whatever it quotes, or else its From address."""
    return from_address if return_path is None else return_path.address(email_id)


def _prepare(
    engine: sa.Engine,
    options: Options,
    cache: mime.PartCache,
    caps: dict[str, int] | None = None,
) -> _Prepared:
    shared = ledger.Ledger()
    with db.transaction(engine) as session:
        claimed = outbox.claim(
            session,
            worker=options.worker,
            limit=options.batch,
            lease=options.lease,
            caps=caps,
            shared=shared,
        )
        if not claimed:
            return _Prepared(claimed={}, items=[], unbuildable=[])
        messages = compose.messages(session, [c.email for c in claimed], links=options.unsubscribe)
        signers = options.keyring.signers(session, [c.email.from_address for c in claimed])
        # Last: the operations' counter rows stay locked until the commit (see ``ledger``).
        shared.write(session, now=models.utcnow())
    items: list[Item] = []
    unbuildable: list[outbox.Outcome] = []
    for entry in claimed:
        email = entry.email
        data = built(entry, messages[email.id], signers, cache)
        if isinstance(data, outbox.Outcome):
            unbuildable.append(data)
            continue
        recipients = (*email.to_addresses, *email.cc_addresses, *email.bcc_addresses)
        items.append(
            smtp.Item(
                key=email.id,
                sender=mail_from(email.id, email.from_address, options.return_path),
                recipients=recipients,
                message=data,
                crlf=True,
            )
        )
    return _Prepared(claimed={c.email.id: c for c in claimed}, items=items, unbuildable=unbuildable)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Entry:
    """Outcomes of some claimed emails, waiting to be written; ``admitted`` of them were
    handed to SMTP."""

    claimed: list[outbox.Claimed]
    decided: list[outbox.Outcome]
    results: list[smtp.Outcome[int]]
    admitted: int
    written: asyncio.Future[Round]


def _record(engine: sa.Engine, entries: list[_Entry], options: Options) -> list[Round]:
    """Write the entries in one transaction; what each of them did."""
    shared = ledger.Ledger()
    with db.transaction(engine) as session:
        done = [_record_entry(session, entry, options, shared) for entry in entries]
        shared.write(session, now=models.utcnow())
        return done


def _record_entry(
    session: orm.Session, entry: _Entry, options: Options, shared: ledger.Ledger
) -> Round:
    """Complete what was decided or reached the server; release the rest of the claims."""
    by_id = {claimed.email.id: claimed for claimed in entry.claimed}
    outcomes = list(entry.decided)
    answered = {outcome.claimed.email.id for outcome in outcomes}
    for result in entry.results:
        if not result.attempted:
            continue
        reply = result.detail
        if result.refused:
            refused = "; ".join(f"{rcpt}: {r.code} {r.text}".strip() for rcpt, r in result.refused)
            reply = f"{reply} (refused {refused})"
        outcomes.append(outbox.Outcome(claimed=by_id[result.key], kind=result.kind, reply=reply))
        answered.add(result.key)
    unsent = [(key, claimed.claim_token) for key, claimed in by_id.items() if key not in answered]
    done = outbox.complete(
        session, outcomes, policy=options.policy, worker=options.worker, shared=shared
    )
    released = outbox.release(session, unsent, shared=shared)
    return Round(
        sent=done.sent,
        retried=done.retried,
        failed=done.failed,
        released=released.pending,
        canceled=done.canceled + released.canceled,
        stale=done.stale,
    )


class Recorder:
    """Writes outcomes while later messages are sent, one transaction at a time, each holding
    every outcome that arrived while the one before was written.

    Sending waits (``admit``) while ``completion_batch`` messages are out without a committed
    outcome, which bounds the duplicates a kill -9 can cause. A database outage therefore stops
    sending until the outcomes so far are written. Once closed (the poller is stopping) it
    admits nothing more: rounds release what they have not handed to SMTP yet.
    """

    def __init__(self, engine: sa.Engine, options: Options) -> None:
        self._engine = engine
        self._options = options
        self._free = options.completion_batch
        self._freed = asyncio.Event()
        self._closed = False
        self._queue: list[_Entry] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def part(self) -> int:
        """How many messages to hand to SMTP at a time: a few parts fill the window."""
        return max(1, self._options.completion_batch // 2)

    async def admit(self, count: int) -> bool:
        """Wait until ``count`` more messages may be handed to SMTP; False once closed."""
        while not self._closed and self._free < count:
            self._freed.clear()
            await self._freed.wait()
        if self._closed:
            return False
        self._free -= count
        return True

    def close(self) -> None:
        self._closed = True
        self._freed.set()

    async def record(
        self,
        claimed: list[outbox.Claimed],
        decided: list[outbox.Outcome],
        results: list[smtp.Outcome[int]],
        *,
        admitted: int = 0,
    ) -> Round:
        """Write these outcomes (and release the claims without one); returns once committed."""
        written: asyncio.Future[Round] = asyncio.get_running_loop().create_future()
        self._queue.append(
            _Entry(
                claimed=claimed,
                decided=decided,
                results=results,
                admitted=admitted,
                written=written,
            )
        )
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        # Shielded: a round that is cancelled while waiting still gets its outcomes written.
        return await asyncio.shield(written)

    async def _write_all(self) -> None:
        while self._queue:
            entries, self._queue = self._queue, []
            try:
                done = await self._write(entries)
            except Exception as error:
                # Not an outage (those are waited out): the rounds waiting on these see it.
                for entry in entries:
                    entry.written.set_exception(error)
                continue
            except BaseException:
                for entry in entries:
                    entry.written.cancel()
                raise
            finally:
                self._free += sum(entry.admitted for entry in entries)
                self._freed.set()
            for entry, result in zip(entries, done, strict=True):
                entry.written.set_result(result)

    async def _write(self, entries: list[_Entry]) -> list[Round]:
        delay = 0.5
        while True:
            try:
                return await asyncio.to_thread(_record, self._engine, entries, self._options)
            except DATABASE_DOWN as error:
                # Dropping the outcomes would have the reaper send these messages a second time.
                logger.warning(
                    "cannot record the outcomes of %d emails (%s); retrying in %.1f s",
                    sum(len(entry.claimed) for entry in entries),
                    summary(error),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


async def _sendable(
    items: list[Item],
    claimed_at: float,
    options: Options,
    limiter: ratelimit.RateLimiter | None,
) -> list[Item]:
    """The claimed items to hand to SMTP now: all, or none when that could break a rule."""
    if not items:
        return items
    if limiter is not None:
        try:
            await limiter.acquire(len(items))
        except ratelimit.Unavailable as error:
            logger.warning("%s; releasing %d claimed emails", error, len(items))
            return []
    if time.monotonic() - claimed_at > options.lease.total_seconds() / 2:
        logger.warning(
            "half the lease of %d claimed emails passed before they could be sent; releasing them",
            len(items),
        )
        return []
    return items


async def run_round(
    engine: sa.Engine,
    sender: smtp.Sender,
    options: Options,
    cache: mime.PartCache,
    limiter: ratelimit.RateLimiter | None = None,
    in_flight: dict[uuid.UUID, float] | None = None,
    recorder: Recorder | None = None,
    shaper: throttle.Throttle | None = None,
) -> Round:
    """Claim, build, send and complete one batch; returns what happened to it.

    With ``shaper``, the claim takes of each limited provider only what it may take now, and
    each provider's part goes out over no more connections than it may have.

    While the batch is out, its claim token is in ``in_flight`` with the (monotonic) time of
    the claim, for the caller to renew.

    The batch goes to the server in parts, each part's outcomes to ``recorder`` (the poller's
    one, shared by its rounds) as soon as its replies are in, while the next parts are sent.

    Raises one of ``DATABASE_DOWN`` when the claim cannot be made; once a batch is claimed,
    its outcomes are written whatever it takes.
    """
    claimed_at = time.monotonic()
    budget = await _budget(shaper, options.batch)
    prepared = await asyncio.to_thread(
        _prepare, engine, options, cache, None if budget is None else budget.caps
    )
    if shaper is not None and budget is not None:
        await _refund(shaper, budget, prepared)
    if not prepared.claimed:
        return Round(throttled_wait=0.0 if budget is None else budget.wait)
    tokens = {entry.claim_token for entry in prepared.claimed.values()}
    if in_flight is not None:
        in_flight.update(dict.fromkeys(tokens, claimed_at))
    try:
        return await _send_claimed(
            engine,
            sender,
            options,
            limiter,
            prepared,
            claimed_at,
            recorder or Recorder(engine, options),
            shaper,
        )
    finally:
        if in_flight is not None:
            for token in tokens:
                in_flight.pop(token, None)


async def _send_claimed(
    engine: sa.Engine,
    sender: smtp.Sender,
    options: Options,
    limiter: ratelimit.RateLimiter | None,
    prepared: _Prepared,
    claimed_at: float,
    recorder: Recorder,
    shaper: throttle.Throttle | None = None,
) -> Round:
    items = await _sendable(prepared.items, claimed_at, options, limiter)
    sending = {item.key for item in items}
    rest = [entry for key, entry in prepared.claimed.items() if key not in sending]

    async def deliver(part: list[Item]) -> Round:
        claimed = [prepared.claimed[item.key] for item in part]
        # A claim is lost no sooner than a lease after it was made (renewals only push that
        # back); from half a lease on, leaving room for hosts' clocks to differ, the check
        # also looks up each email's claim, which costs a lookup per email.
        may_be_lost = time.monotonic() - claimed_at > options.lease.total_seconds() / 2
        try:
            withheld = await asyncio.to_thread(_withdrawn, engine, claimed, may_be_lost)
        except DATABASE_DOWN as error:
            # Without the check a cancel, or a lost claim, could be missed: nothing goes out
            # until it is back.
            logger.warning("cannot check for cancels (%s); releasing %d", summary(error), len(part))
            withheld = {item.key for item in part}
        handed = [item for item in part if item.key not in withheld]
        if shaper is None:
            results = await sender.send_batch(handed) if handed else []
        else:
            deadline = claimed_at + options.lease.total_seconds() / 2
            hold = options.lease.total_seconds()
            results = await _send_shaped(sender, shaper, handed, prepared, deadline, hold)
        return await recorder.record(claimed, [], results, admitted=len(part))

    async with asyncio.TaskGroup() as group:
        tasks = []
        if rest:
            # Messages that cannot be built fail, a batch held too long is released: at once.
            tasks.append(group.create_task(recorder.record(rest, prepared.unbuildable, [])))
        size = recorder.part
        for start in range(0, len(items), size):
            part = items[start : start + size]
            if not await recorder.admit(len(part)):
                # Stopping: what SMTP has not got yet goes back to Pending Send at once.
                unsent = [prepared.claimed[item.key] for item in items[start:]]
                tasks.append(group.create_task(recorder.record(unsent, [], [])))
                break
            tasks.append(group.create_task(deliver(part)))
    return sum((task.result() for task in tasks), Round(claimed=len(prepared.claimed)))


def _withdrawn(engine: sa.Engine, claimed: list[outbox.Claimed], may_be_lost: bool) -> set[int]:
    with db.transaction(engine) as session:
        return outbox.withdrawn(session, claimed, claims_may_be_lost=may_be_lost)


async def _budget(shaper: throttle.Throttle | None, wanted: int) -> throttle.Budget | None:
    """What the claim may take of each limited provider; without Redis, none of theirs."""
    if shaper is None:
        return None
    try:
        return await shaper.budget(wanted)
    except throttle.Unavailable as error:
        logger.warning("%s; claiming no email of a limited provider", error)
        return throttle.Budget(caps=dict.fromkeys(shaper.limited, 0), wait=0.0)


async def _refund(shaper: throttle.Throttle, budget: throttle.Budget, prepared: _Prepared) -> None:
    """Give back the tokens of emails the claim did not find."""
    if not budget.caps:
        return
    taken = collections.Counter(c.email.provider for c in prepared.claimed.values())
    try:
        await shaper.refund({name: cap - taken[name] for name, cap in budget.caps.items()})
    except throttle.Unavailable as error:
        logger.warning("%s; unused tokens are not given back", error)


async def _send_shaped(
    sender: smtp.Sender,
    shaper: throttle.Throttle,
    items: list[Item],
    prepared: _Prepared,
    deadline: float,
    hold: float,
) -> list[smtp.Outcome[int]]:
    """Send each provider's items over the connections it may have, reporting its deferrals.

    Items of a provider whose connections stay taken until ``deadline`` (monotonic) get no
    outcome: their claims are released, uncounted. A connection slot is held at most ``hold``
    seconds, so a poller that dies does not keep it.
    """
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(prepared.claimed[item.key].email.provider, []).append(item)

    async def send(provider: str, group: list[Item]) -> list[smtp.Outcome[int]]:
        try:
            slots = await throttle.wait_for_connections(
                shaper, provider, len(group), hold, deadline
            )
        except throttle.Unavailable as error:
            logger.warning("%s; releasing %d emails of %s", error, len(group), provider)
            return []
        if slots is None:
            logger.warning("no connection free for %s; releasing %d emails", provider, len(group))
            return []
        try:
            results = await sender.send_batch(group, connections=len(slots) or None)
        finally:
            await shaper.release(provider, slots)
        deferred = sum(1 for result in results if throttle.is_deferral(result))
        if deferred:
            try:
                seen = await shaper.report(provider, deferred)
            except throttle.Unavailable as error:
                logger.warning("%s; %d deferrals of %s not counted", error, deferred, provider)
            else:
                if seen.mode is throttle.Mode.THROTTLED:
                    logger.info("%s deferred %d: rate now %.1f/s", provider, deferred, seen.rate)
        return results

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(send(name, part)) for name, part in groups.items()]
    return [result for task in tasks for result in task.result()]
