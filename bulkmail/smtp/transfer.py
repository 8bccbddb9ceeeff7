"""Mail transactions on an open session: the messages of a batch, pipelined or in lock-step.

Speed comes from RFC 2920 PIPELINING. A message costs one round trip: its data, the final
".", and the next message's MAIL FROM, RCPT TOs and DATA go out in one write, because message
content may open a group and DATA must close one (RFC 2920 section 3.1); the replies are then
read from whatever the socket has buffered. Without PIPELINING every command waits for its
reply. Each reply is awaited with the timeout of the command it answers; a pipelining server
may hold early replies until it answers a group's last command, so a slow DATA can show up as
no reply to MAIL FROM.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from typing import Generic, TypeVar

from bulkmail import errors
from bulkmail.smtp import outcomes, session, wire
from bulkmail.smtp.exceptions import SMTPError, SMTPReplyError

K = TypeVar("K")

logger = logging.getLogger("bulkmail.smtp")  # one name for the whole client, as before the split


@dataclasses.dataclass(slots=True)
class _Job(Generic[K]):
    """An item with its wire form computed once, whichever session ends up sending it."""

    index: int
    item: outcomes.Item[K]
    sender: str  # the envelope's forms of the item's addresses (wire.check_address)
    recipients: list[str]
    data: bytes
    rcpt_lines: list[bytes]
    smtputf8: bool
    eightbit: bool

    @classmethod
    def prepare(cls, index: int, item: outcomes.Item[K]) -> _Job[K]:
        sender = wire.check_address(item.sender, role="sender")
        if not item.recipients:
            raise errors.InvalidInput("the message has no recipients")
        recipients = [wire.check_address(rcpt, role="recipient") for rcpt in item.recipients]
        data = wire.prepare_data(item.message, crlf=item.crlf)
        return cls(
            index=index,
            item=item,
            sender=sender,
            recipients=recipients,
            data=data,
            rcpt_lines=[wire.rcpt_to(rcpt) for rcpt in recipients],
            smtputf8=wire.needs_smtputf8(sender, recipients, item.message),
            eightbit=not data.isascii(),
        )

    @property
    def size(self) -> int:
        # RFC 1870 counts the message, not the dot-stuffing terminator.
        return len(self.data) - len(wire.END_OF_DATA)


class Batch(Generic[K]):
    """The messages of one ``Sender.send_batch`` call: those left to send (``jobs``, taken from
    the left by every session) and the outcomes settled so far."""

    def __init__(self, items: Sequence[outcomes.Item[K]]) -> None:
        self.outcomes: list[outcomes.Outcome[K] | None] = [None] * len(items)
        self.jobs: collections.deque[_Job[K]] = collections.deque()
        for index, item in enumerate(items):
            try:
                self.jobs.append(_Job.prepare(index, item))
            except errors.InvalidInput as exc:
                self.outcomes[index] = outcomes.Outcome(
                    key=item.key, kind=outcomes.OutcomeKind.PERMANENT, detail=str(exc)
                )

    def settle(self, job: _Job[K], outcome: outcomes.Outcome[K]) -> None:
        self.outcomes[job.index] = outcome

    def settled(self, job: _Job[K]) -> bool:
        return self.outcomes[job.index] is not None

    def result(
        self, items: Sequence[outcomes.Item[K]], failure: SMTPError | None
    ) -> list[outcomes.Outcome[K]]:
        """Every outcome; messages no session could take are temporary failures."""
        results = []
        for item, outcome in zip(items, self.outcomes, strict=True):
            if outcome is None:
                assert failure is not None, "jobs are left only when no session could be opened"
                outcome = outcomes.Outcome(
                    key=item.key,
                    kind=outcomes.OutcomeKind.TEMPORARY,
                    detail=f"not sent: {failure}",
                    reply=failure.reply,
                    attempted=False,
                )
            results.append(outcome)
        return results


@dataclasses.dataclass(slots=True)
class _Transaction(Generic[K]):
    """The replies of one mail transaction as they arrive."""

    job: _Job[K]
    mail: wire.Reply
    rcpts: list[tuple[str, wire.Reply]] = dataclasses.field(default_factory=list)
    data: wire.Reply | None = None

    @property
    def accepted(self) -> bool:
        return self.mail.is_positive and any(reply.is_positive for _, reply in self.rcpts)

    @property
    def payload(self) -> bytes:
        # RFC 2920 section 3.1: after a 354 with no recipient accepted, send a lone ".".
        return self.job.data if self.accepted else wire.END_OF_DATA

    def outcome(self, final: wire.Reply | None) -> outcomes.Outcome[K]:
        return outcomes.transaction_outcome(
            self.job.item.key, mail=self.mail, rcpts=self.rcpts, data=self.data, final=final
        )


async def deliver(link: session.Session, batch: Batch[K]) -> None:
    """Send jobs from the left of ``batch.jobs`` until none is left or ``link`` is used up.

    Never raises an ``SMTPError``: when the session breaks, the messages in flight become
    temporary failures and the session is marked broken. On a pooled session that broke
    before the server answered anything, nothing can have been delivered, so those messages
    go back to ``batch.jobs`` for another session instead.
    """
    transfer = _Transfer(link, batch)
    answered = link.answered
    try:
        if link.extensions.pipelining:
            await transfer.pipelined()
        else:
            await transfer.lockstep()
    except SMTPError as exc:
        link.broken = True
        stale = link.reused and link.answered == answered
        logger.warning("SMTP session with %s ended: %s", link.host, exc)
        for job in reversed(transfer.in_flight):
            if batch.settled(job):
                continue
            if stale:
                batch.jobs.appendleft(job)
            else:
                batch.settle(job, _temporary(job, exc))


class _Transfer(Generic[K]):
    """One ``deliver`` call: the session, the batch, and the jobs this session took."""

    def __init__(self, link: session.Session, batch: Batch[K]) -> None:
        self.link = link
        self.batch = batch
        self.in_flight: list[_Job[K]] = []

    def _take(self) -> _Job[K] | None:
        jobs, link = self.batch.jobs, self.link
        while jobs and not link.used_up:
            job = jobs.popleft()
            problem = self._unsendable(job)
            if problem:
                self.batch.settle(
                    job,
                    outcomes.Outcome(
                        key=job.item.key, kind=outcomes.OutcomeKind.PERMANENT, detail=problem
                    ),
                )
                continue
            link.messages += 1
            self.in_flight.append(job)
            return job
        return None

    def _unsendable(self, job: _Job[K]) -> str | None:
        """Why this server cannot take the message as it is, if it cannot."""
        host, offered = self.link.host, self.link.extensions
        if job.smtputf8 and not offered.smtputf8:
            return (
                f"{wire.non_ascii_reason(job.sender, job.recipients)}, which needs SMTPUTF8, "
                f"and {host} does not offer SMTPUTF8; use ASCII addresses (RFC 2047 encoded "
                "words in headers) for this server"
            )
        if job.eightbit and not offered.eightbitmime:
            return (
                f"the message has 8-bit data and {host} does not offer 8BITMIME; "
                "encode its parts as quoted-printable or base64"
            )
        if offered.size is not None and job.size > offered.size:
            return f"the message is {job.size} bytes and {host} takes at most {offered.size} (SIZE)"
        return None

    def _mail_command(self, job: _Job[K]) -> bytes:
        return wire.mail_from(
            job.sender,
            size=None if self.link.extensions.size is None else job.size,
            eightbit=job.eightbit,
            smtputf8=job.smtputf8,
        )

    async def pipelined(self) -> None:
        link, batch = self.link, self.batch
        timeouts = link.timeouts
        sending: _Transaction[K] | None = None  # DATA answered 354, payload not yet sent
        while True:
            job = self._take()
            if sending is None and job is None:
                return
            group = []
            if sending is not None:
                group.append(sending.payload)
            if job is not None:
                if link.needs_reset:
                    group.append(wire.RSET)
                group.append(self._mail_command(job))
                group.extend(job.rcpt_lines)
                group.append(wire.DATA)
            elif link.used_up:
                group.append(wire.QUIT)
                link.quit_sent = True
            await link.write(b"".join(group))

            if sending is not None:
                final = await link.reply(timeouts.final_dot, "the end of data")
                batch.settle(sending.job, sending.outcome(final))
                sending = None
            if job is None:
                if link.quit_sent:
                    with contextlib.suppress(SMTPError):
                        await link.reply(timeouts.quit, "QUIT")
                return
            if link.needs_reset:
                self._expect_reset(await link.reply(timeouts.command, "RSET"))
            txn = _Transaction(job, await link.reply(timeouts.mail, "MAIL FROM"))
            for rcpt in job.item.recipients:
                txn.rcpts.append((rcpt, await link.reply(timeouts.rcpt, "RCPT TO")))
            txn.data = await link.reply(timeouts.data, "DATA")
            if txn.data.code == 354:
                sending = txn
                link.needs_reset = False
            else:
                batch.settle(job, txn.outcome(None))
                link.needs_reset = txn.mail.is_positive

    async def lockstep(self) -> None:
        link = self.link
        timeouts = link.timeouts
        while (job := self._take()) is not None:
            if link.needs_reset:
                self._expect_reset(await link.command(wire.RSET, timeouts.command, "RSET"))
            mail = self._mail_command(job)
            txn = _Transaction(job, await link.command(mail, timeouts.mail, "MAIL FROM"))
            final = None
            if txn.mail.is_positive:
                for rcpt, line in zip(job.item.recipients, job.rcpt_lines, strict=True):
                    txn.rcpts.append((rcpt, await link.command(line, timeouts.rcpt, "RCPT TO")))
                if txn.accepted:
                    txn.data = await link.command(wire.DATA, timeouts.data, "DATA")
                    if txn.data.code == 354:
                        final = await link.command(job.data, timeouts.final_dot, "the end of data")
            link.needs_reset = txn.mail.is_positive and final is None
            self.batch.settle(job, txn.outcome(final))

    def _expect_reset(self, reply: wire.Reply) -> None:
        if not reply.is_positive:
            raise SMTPReplyError(f"{self.link.host} refused RSET: {reply}", reply=reply)
        self.link.needs_reset = False


def _temporary(job: _Job[K], exc: SMTPError) -> outcomes.Outcome[K]:
    return outcomes.Outcome(
        key=job.item.key, kind=outcomes.OutcomeKind.TEMPORARY, detail=str(exc), reply=exc.reply
    )
