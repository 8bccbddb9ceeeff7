"""Received messages as servers deliver them: plain mail, replies, auto-replies, Postfix's
bounces (its DSN format), feedback reports, and broken input."""

from __future__ import annotations

import uuid


def plain(
    sender: str,
    to: str,
    subject: str,
    *,
    message_id: str | None = None,
    headers: str = "",
    body: str = "Hello",
) -> bytes:
    mid = f"Message-ID: <{message_id or uuid.uuid4().hex + '@mail.example.com'}>\r\n"
    return (
        f"From: Someone <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n{mid}"
        f"Date: Sun, 6 Dec 2026 12:00:00 +0000\r\n{headers}"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def reply(sender: str, to: str, original_message_id: str, *, auto: bool = False) -> bytes:
    headers = f"In-Reply-To: <{original_message_id}>\r\nReferences: <{original_message_id}>\r\n"
    if auto:
        headers += "Auto-Submitted: auto-replied\r\n"
    subject = "Automatic reply: News" if auto else "Re: News"
    return plain(sender, to, subject, headers=headers, body="Thanks!")


def with_attachment(sender: str, to: str, name: str, data: bytes) -> bytes:
    import base64

    encoded = base64.encodebytes(data).decode()
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: file {name}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@mail.example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
        "--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        "--XX\r\nContent-Type: application/pdf\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--XX--\r\n"
    ).encode()


def postfix_dsn(
    to: str,
    recipient: str,
    original_message_id: str | None,
    *,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str = "smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown",
) -> bytes:
    """A bounce as Postfix's bounce daemon writes it (RFC 3464, the returned headers); without
    ``original_message_id``, as a server writes it that returns nothing of the message."""
    queue_id = uuid.uuid4().hex[:10].upper()
    text = diagnostic.format(recipient=recipient)
    returned = (
        ""
        if original_message_id is None
        else f"--{queue_id}.1765022400/mx.example.net\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"From: News <{to}>\r\n"
        f"To: {recipient}\r\n"
        "Subject: News\r\n"
        f"Message-ID: <{original_message_id}>\r\n\r\n"
    )
    return (
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"To: {to}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f'\tboundary="{queue_id}.1765022400/mx.example.net"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n"
        f"Message-Id: <20261206120000.{queue_id}@mx.example.net>\r\n"
        "Date: Sun,  6 Dec 2026 12:00:00 +0000 (UTC)\r\n"
        "\r\n"
        "This is a MIME-encapsulated message.\r\n\r\n"
        f"--{queue_id}.1765022400/mx.example.net\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host mx.example.net.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n\r\n"
        f"<{recipient}>: host mx.example.com[192.0.2.1] said: {text}\r\n\r\n"
        f"--{queue_id}.1765022400/mx.example.net\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        f"X-Postfix-Queue-ID: {queue_id}\r\n"
        "X-Postfix-Sender: rfc822; news@example.org\r\n"
        "Arrival-Date: Sun,  6 Dec 2026 11:59:58 +0000 (UTC)\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        "Remote-MTA: dns; mx.example.com\r\n"
        f"Diagnostic-Code: {text}\r\n\r\n"
        f"{returned}"
        f"--{queue_id}.1765022400/mx.example.net--\r\n"
    ).encode()


def complaint(to: str, recipient: str, original_message_id: str) -> bytes:
    """An RFC 5965 feedback report (abuse), the original message attached."""
    return (
        "From: feedback@isp.example.net\r\n"
        f"To: {to}\r\n"
        "Subject: FW: News\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@isp.example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"\r\n\r\n'
        "--ARF\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        "--ARF\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: ISP-FBL/1.0\r\nVersion: 1\r\n"
        f"Original-Rcpt-To: {recipient}\r\n\r\n"
        "--ARF\r\nContent-Type: message/rfc822\r\n\r\n"
        f"From: {to}\r\nTo: {recipient}\r\nSubject: News\r\n"
        f"Message-ID: <{original_message_id}>\r\n\r\nHi\r\n"
        "--ARF--\r\n"
    ).encode()


def broken() -> dict[str, bytes]:
    """Bad input a sync must survive, by what is wrong with it."""
    many = "".join(
        f"--B\r\nContent-Type: text/plain; name=p{i}.txt\r\n"
        f'Content-Disposition: attachment; filename="p{i}.txt"\r\n\r\n{i}\r\n'
        for i in range(10_000)
    )
    return {
        "malformed MIME": (
            b"From: x@example.com\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="never"\r\n\r\nno boundary at all\r\n'
        ),
        "10,000 parts": (
            "From: x@example.com\r\nSubject: many\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + many + "--B--\r\n"
        ).encode(),
        "1 MB header": b"From: x@example.com\r\nSubject: " + b"s" * 1_048_576 + b"\r\n\r\nbody\r\n",
        "unknown charset": (
            b"From: x@example.com\r\nSubject: =?x-klingon?Q?qapla=E9?=\r\n"
            b"Content-Type: text/plain; charset=x-klingon\r\n\r\nqapla\xe9\r\n"
        ),
        "wrong charset": (
            b"From: x@example.com\r\nSubject: utf8?\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xff\xfe\xe9 \x00 junk\r\n"
        ),
        "8bit junk in headers": (
            b"From: \xff\xfe <x@exa\xe9mple.com>\r\nTo: \x80\x81\r\nSubject: \xc3\x28\r\n"
            b"\r\n\x80\r\n"
        ),
        "no Message-ID": b"From: x@example.com\r\nSubject: anonymous\r\n\r\nhi\r\n",
        "bad base64": (
            b"From: x@example.com\r\nSubject: b64\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"!!!not base64!!!=\r\n"
        ),
        "bad date and addresses": (
            b"From: <<<@>>>\r\nTo: ,,,;;;\r\nDate: yesterday-ish\r\nSubject: x\r\n\r\nx\r\n"
        ),
    }
