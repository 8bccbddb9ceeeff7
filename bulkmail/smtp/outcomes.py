"""What goes into the SMTP client and what comes out: an Item per message, an Outcome for it,
and the rule that turns the replies of one mail transaction into that outcome.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Generic, TypeVar

from bulkmail.smtp.wire import Reply

K = TypeVar("K")


class OutcomeKind(enum.Enum):
    """What became of one message."""

    DELIVERED = "delivered"  # 2xx after the data: the server took responsibility
    TEMPORARY = "temporary"  # 4xx, 421, lost connection or timeout: try again later
    PERMANENT = "permanent"  # 5xx, or a message the server cannot take: do not retry


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Item(Generic[K]):
    """One message to send; ``key`` comes back on its :class:`Outcome` (an email's id)."""

    key: K
    sender: str  # "" sends with the null reverse-path, as bounces do
    recipients: tuple[str, ...]
    message: bytes  # the RFC 5322 message; line endings and leading dots are fixed on the way
    crlf: bool = False  # True: every line of ``message`` ends with CRLF already (mime.build)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Outcome(Generic[K]):
    """The result for one :class:`Item`.

    ``detail`` is the line to store: the deciding reply ("550 5.1.1 user unknown") or what went
    wrong without one. ``refused`` lists recipients the server refused when it still took the
    message for others.
    """

    key: K
    kind: OutcomeKind
    detail: str
    reply: Reply | None = None
    refused: tuple[tuple[str, Reply], ...] = ()
    # False when no session could be opened for it: nothing reached a server, so the attempt
    # need not count against the message.
    attempted: bool = True


def failed(key: K, reply: Reply) -> Outcome[K]:
    """The outcome when ``reply`` refused the message: 5xx is final, anything else is not."""
    kind = OutcomeKind.PERMANENT if 500 <= reply.code < 600 else OutcomeKind.TEMPORARY
    return Outcome(key=key, kind=kind, detail=str(reply), reply=reply)


def transaction_outcome(
    key: K,
    *,
    mail: Reply,
    rcpts: Sequence[tuple[str, Reply]],
    data: Reply | None,
    final: Reply | None,
) -> Outcome[K]:
    """Decide one mail transaction from its replies, in the order the server gave them.

    ``data`` is None when DATA was not sent (lock-step, no recipient accepted); ``final`` is
    None when the message was not sent. With some recipients refused and some accepted, the
    message counts as delivered and the refusals are kept on the outcome.
    """
    if not mail.is_positive:
        return failed(key, mail)
    refused = tuple((rcpt, reply) for rcpt, reply in rcpts if not reply.is_positive)
    if len(refused) == len(rcpts):
        # A 4xx refusal may pass next time, so any of them makes the whole message temporary.
        transient = [reply for _, reply in refused if reply.is_transient]
        return failed(key, transient[0] if transient else refused[0][1])
    assert data is not None, "DATA is sent once a recipient is accepted"
    if data.code != 354:
        return failed(key, data)
    assert final is not None, "the data is sent once DATA is answered with 354"
    if not final.is_positive:
        return failed(key, final)
    return Outcome(
        key=key, kind=OutcomeKind.DELIVERED, detail=str(final), reply=final, refused=refused
    )
