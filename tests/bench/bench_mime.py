"""Messages per second of bulkmail.mime.build against the stdlib EmailMessage generator.

Each message is a ~2 KB two-part (text + HTML) body personalised per recipient, with a distinct
recipient and Message-ID, plus the same 100 KB attachment, which bulkmail encodes once and then
serves from its part cache. Run: .venv/bin/python tests/bench/bench_mime.py [--n N] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP

from bulkmail import mime

_TEXT = (
    "Hello {name},\n\n"
    + "Your monthly statement is ready. Thank you for being a customer of Example Corp.\n" * 11
    + "\nKind regards,\nThe Example team\n"
)
_HTML = (
    "<html><body><p>Hello {name},</p>\n"
    + '<p style="margin:0">Your monthly statement is ready. Thank you, Example Corp.</p>\n' * 11
    + "<p>Kind regards,<br>The Example team</p></body></html>\n"
)


def make_messages(n: int) -> list[mime.Message]:
    data = random.Random(0).randbytes(100 * 1024)
    attachment = mime.Attachment(
        sha256=hashlib.sha256(data).hexdigest(),
        filename="statement.pdf",
        mime_type="application/pdf",
        data=data,
    )
    now = datetime.now(UTC)
    return [
        mime.Message(
            message_id=f"{i:032x}@example.org",
            date=now,
            from_address="news@example.org",
            from_name="Example Corp",
            to=(f"contact{i}@example.com",),
            subject=f"Your statement, contact {i}",
            text=_TEXT.format(name=f"contact {i}"),
            html=_HTML.format(name=f"contact {i}"),
            attachments=(attachment,),
            headers=(("X-Bulkmail-Tracking", f"t{i:016x}"),),
        )
        for i in range(n)
    ]


def stdlib_build(message: mime.Message) -> bytes:
    email = EmailMessage()
    email["Message-ID"] = f"<{message.message_id}>"
    email["Date"] = message.date
    email["From"] = Address(message.from_name or "", addr_spec=message.from_address)
    email["To"] = ", ".join(message.to)
    email["Subject"] = message.subject
    for name, value in message.headers:
        email[name] = value
    email.set_content(message.text or "")
    email.add_alternative(message.html or "", subtype="html")
    for attachment in message.attachments:
        maintype, subtype = attachment.mime_type.split("/")
        email.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    return email.as_bytes(policy=SMTP)


def rate(build: Callable[[mime.Message], bytes], messages: Sequence[mime.Message]) -> float:
    build(messages[0])  # warm-up: fills bulkmail's part cache, as a running poller has it
    start = time.perf_counter()
    for message in messages:
        build(message)
    return len(messages) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages to build")
    parser.add_argument(
        "--reference-n", type=int, default=1_000, help="messages for the (slow) stdlib reference"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    messages = make_messages(args.n)
    ours = rate(mime.build, messages)
    reference = rate(stdlib_build, messages[: max(1, min(args.n, args.reference_n))])
    result = {
        "phase": "message builder",
        "n": args.n,
        "rate": round(ours, 1),
        "reference": round(reference, 1),
        "ratio": round(ours / reference, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bulkmail.mime.build   {ours:12,.0f} messages/s  ({args.n} messages)")
        print(f"stdlib EmailMessage   {reference:12,.0f} messages/s  ({args.reference_n} messages)")
        print(f"ratio                 {ours / reference:12,.1f}x")


if __name__ == "__main__":
    main()
