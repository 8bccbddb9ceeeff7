"""A poller round signs what a domain with a key sends, and sends nothing of it unsigned when the
key file is gone: those emails wait as Pending Send and go out signed once it is back. An external
sender (BackgroundSendEmail) gets the same signed bytes, with the unsubscribe fields."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import dkim as dkimpy
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bulkmail import db, delivery, handout, mime, outbox, settings, signing, smtp, unsubscribe
from bulkmail.status import Status
from tests import bulkops, mailserver

FAST = smtp.Timeouts(
    connect=5, greeting=5, mail=5, rcpt=5, data=5, data_block=5, final_dot=5, command=5, quit=1
)


def _round(engine: sa.Engine, port: int, options: delivery.Options) -> delivery.Round:
    settings = smtp.SmtpSettings(host="127.0.0.1", port=port, timeouts=FAST)

    async def run() -> delivery.Round:
        async with smtp.Sender(settings) as sender:
            return await delivery.run_round(engine, sender, options, mime.PartCache())

    return asyncio.run(run())


def _key(engine: sa.Engine, folder: Path) -> tuple[Path, bytes]:
    """A key for example.org, its file, and the TXT value to publish."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = folder / "example.org.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with db.session_scope(engine) as session:
        signing.add(session, domain="example.org", selector="s1", key_file=str(pem))
        record = signing.dns(session, "example.org")
    return pem, "".join(record.split('"')[1::2]).encode()


def test_signed_when_the_key_is_there_and_never_sent_unsigned_without_it(
    engine: sa.Engine, tmp_path: Path
) -> None:
    pem, txt = _key(engine, tmp_path)
    sender = mailserver.add_sender(engine)  # sender@example.org
    ids = mailserver.insert_pending(engine, sender, 2)
    hidden = pem.rename(tmp_path / "elsewhere.pem")
    options = delivery.Options(worker="test-worker")
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port:
        done = _round(engine, port, options)
        assert (done.sent, done.retried) == (0, 2)
        assert ledger.deliveries() == []
        rows = mailserver.emails(engine, ids)
        assert {row.current_status for row in rows} == {Status.PENDING_SEND}
        assert all(
            row.last_smtp_reply is not None
            and row.last_smtp_reply.startswith(f"not signed: DKIM key file {pem} cannot be read")
            for row in rows
        )
        hidden.rename(pem)
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE emails SET next_attempt_at = NULL"))
        done = _round(engine, port, options)
    assert done.sent == 2
    for delivered in ledger.deliveries():
        assert dkimpy.verify(delivered.data, dnsfunc=lambda name, timeout=5: txt)


def test_an_external_sender_gets_the_signed_message_with_its_unsubscribe_fields(
    engine: sa.Engine, tmp_path: Path
) -> None:
    _, txt = _key(engine, tmp_path)
    bulkops.seed(engine)  # sends from sam@example.org
    bulkops.add_contacts(engine, 2)
    operation_id = bulkops.submit(engine)
    bulkops.expand(engine, operation_id)
    config = settings.Settings(public_url="https://mail.example.org", secret_key="k" * 44)
    links = unsubscribe.Links.from_settings(config)
    assert links is not None
    handed = handout.claim(
        engine,
        worker="external",
        limit=10,
        lease=dt.timedelta(minutes=5),
        policy=outbox.RetryPolicy(),
        links=links,
        keyring=signing.Keyring(),
    )
    assert len(handed) == 2
    for item in handed:
        assert dkimpy.verify(item.data, dnsfunc=lambda name, timeout=5: txt)
        assert f"List-Unsubscribe: <{links.url(item.id)}>".encode() in item.data
        head = item.data.partition(b"\r\n\r\n")[0]
        assert b"list-unsubscribe:list-unsubscribe-post" in head.replace(b"\r\n\t", b"")
