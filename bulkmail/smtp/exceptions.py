"""The SMTP client's errors: one base, and the builtin each transport error also is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bulkmail import errors

if TYPE_CHECKING:
    from bulkmail.smtp import wire


class SMTPError(errors.BulkmailError):
    """Base of the SMTP client's errors; ``reply`` is the server's answer when there was one."""

    def __init__(self, message: str, *, reply: wire.Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class SMTPConnectionError(SMTPError, ConnectionError):
    """The connection could not be opened, broke, or the server closed it (421)."""


class SMTPTimeoutError(SMTPError, TimeoutError):
    """The server did not answer, or did not take our data, within the configured time."""


class SMTPProtocolError(SMTPError):
    """The server sent something that is not SMTP; the session cannot go on."""


class SMTPReplyError(SMTPError):
    """The server refused a step of the session itself (greeting, EHLO, STARTTLS, RSET)."""


class SMTPAuthenticationError(SMTPError):
    """The server offers no usable AUTH mechanism, or refused the credentials."""


class InvalidSmtpSettings(SMTPError, errors.InvalidInput):
    """The SMTP URL or one of its settings cannot be used."""
