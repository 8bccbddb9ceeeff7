"""The SMTP client: the outgoing path's last step, from a batch of messages to their outcomes.

The poller's whole use of it::

    settings = smtp.parse_url("smtp://user:secret@mail.example.org:587?starttls=true")
    async with smtp.Sender(settings) as sender:
        outcomes = await sender.send_batch(items)  # one smtp.Outcome per smtp.Item, in order

The names above are the package's interface; its modules, from the outside in:

- ``config``: where and how to deliver (``SmtpSettings``), read from a URL.
- ``outcomes``: an ``Item`` per message, its ``Outcome``, and the rule between the replies of
  a mail transaction and that outcome.
- ``pool``: the ``Sender``, which spreads a batch over its sessions and keeps them open.
- ``transfer``: mail transactions on one session, pipelined (RFC 2920) or in lock-step.
- ``session``: one connection: connect, TLS, EHLO, AUTH, commands and replies with timeouts.
- ``wire``: the protocol without I/O: replies parsed, commands and message data encoded.
- ``exceptions``: the client's errors.
"""

from bulkmail.smtp.config import SmtpSettings, Timeouts, TlsMode, parse_url
from bulkmail.smtp.exceptions import (
    InvalidSmtpSettings,
    SMTPAuthenticationError,
    SMTPConnectionError,
    SMTPError,
    SMTPProtocolError,
    SMTPReplyError,
    SMTPTimeoutError,
)
from bulkmail.smtp.outcomes import Item, Outcome, OutcomeKind
from bulkmail.smtp.pool import Sender
from bulkmail.smtp.wire import Reply

__all__ = [
    "InvalidSmtpSettings",
    "Item",
    "Outcome",
    "OutcomeKind",
    "Reply",
    "SMTPAuthenticationError",
    "SMTPConnectionError",
    "SMTPError",
    "SMTPProtocolError",
    "SMTPReplyError",
    "SMTPTimeoutError",
    "Sender",
    "SmtpSettings",
    "Timeouts",
    "TlsMode",
    "parse_url",
]
