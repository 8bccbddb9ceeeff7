"""Mail that comes back to tagged addresses, as a user runs it: a real poller sends a bulk
operation with a return path per email (VERP) and a mailto unsubscribe link; a recipient mails
that link, two servers return DSNs that quote no Message-ID, and forged addresses come too; all
land in a real Dovecot mailbox that `bulkmail worker inbound` syncs. The mailto does what the
one-click POST does, each DSN is recorded on its email by its return path, forgeries do nothing.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import sqlalchemy as sa

from bulkmail import db, expansion, mailboxes, models, settings, tagged, unsubscribe
from bulkmail.status import Status
from tests import bulkops, dovecot, mailsamples, mailserver, pollers
from tests.acceptance.conftest import Cli

SECRET = base64.urlsafe_b64encode(b"r" * 32).decode()
PUBLIC_URL = "https://mail.example.org"
RETURNS = "returns@example.org"  # the queue whose incoming mailbox gets both kinds of mail
ENV = {
    "BULKMAIL_SECRET_KEY": SECRET,
    "BULKMAIL_PUBLIC_URL": PUBLIC_URL,
    "BULKMAIL_UNSUBSCRIBE_DOMAIN": "Lists.Example.ORG",
    "BULKMAIL_BOUNCE_DOMAIN": "bounces.example.org",
}
CONFIG = settings.Settings(
    secret_key=SECRET,
    public_url=PUBLIC_URL,
    unsubscribe_domain="lists.example.org",
    bounce_domain="bounces.example.org",
)


def _forged(address: str) -> str:
    """The address with the last character of its MAC changed."""
    local, _, domain = address.partition("@")
    return f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"


def _contact(engine: sa.Engine, contact_id: int) -> models.Contact:
    with db.session_scope(engine) as session:
        found = session.get(models.Contact, contact_id)
        assert found is not None
        return found


def _bounces(engine: sa.Engine) -> list[tuple[int, int, str | None]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                models.EmailBounce.email_id, models.EmailBounce.kind, models.EmailBounce.status
            ).order_by(models.EmailBounce.email_id)
        )
        return [(row.email_id, row.kind, row.status) for row in rows]


def test_a_mailto_unsubscribe_and_dsns_without_message_id_act_on_their_emails(
    engine: sa.Engine, pg_url: str, tmp_path: Path, dovecot_server: dovecot.Dovecot
) -> None:
    bulkops.seed(engine)
    with db.session_scope(engine) as session:
        mailboxes.add_queue(session, name="Returns", email=RETURNS)
    ids = bulkops.add_contacts(engine, 4)
    links = unsubscribe.Links.from_settings(CONFIG)
    paths = tagged.return_paths(CONFIG)
    assert links is not None
    assert links.mailto is not None
    assert paths is not None
    operation_id = bulkops.submit(engine)
    expansion.expand(engine, operation_id, batch_size=10, links=links)
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port, pollers.started(pg_url, tmp_path) as start_poller:
        poller = start_poller(f"smtp://127.0.0.1:{port}", "--exit-when-idle", **ENV)
        assert poller.wait(60) == 0, poller.log()[-3000:]
    sent = {e.regarding_contact_id: e for e in bulkops.emails_of(engine, operation_id)}
    assert {e.current_status for e in sent.values()} == {Status.SENT}
    deliveries = {d.recipients[0]: d for d in ledger.deliveries()}
    assert len(deliveries) == 4
    for email in sent.values():
        delivery = deliveries[email.to_addresses[0]]
        # MAIL FROM as the SMTP server received it: the email's own return path.
        assert delivery.sender == paths.address(email.id)
        assert delivery.sender.startswith(f"bounces+{email.id}-")
        assert delivery.sender.endswith("@bounces.example.org")
        header = " ".join(str(delivery.parsed()["List-Unsubscribe"]).split())
        assert header == (
            f"<{PUBLIC_URL}/u/{links.token(email.id)}>, <mailto:{links.mailto.address(email.id)}>"
        )
        assert delivery.parsed()["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    first, second, third, fourth = ids
    # The next operation waits, Pending Send, for all four.
    next_id = bulkops.submit(engine)
    expansion.expand(engine, next_id, batch_size=10, links=links)

    mailto = links.mailto.address(sent[first].id)
    user = f"u{uuid.uuid4().hex[:10]}"
    dovecot_server.append(
        user,
        [
            # The first recipient's mail client sends to the mailto link, in upper case.
            mailsamples.plain(f"c{first}@example.com", mailto.upper(), "unsubscribe"),
            # A forged mailto and a forged return path, for the fourth recipient.
            mailsamples.plain("x@example.com", _forged(links.mailto.address(sent[fourth].id)), "u"),
            mailsamples.postfix_dsn(_forged(paths.address(sent[fourth].id)), "c@example.com", None),
            # A DSN to the second email's return path that returns nothing of the message.
            mailsamples.postfix_dsn(paths.address(sent[second].id), "c@example.com", None),
            # The third one's: the To rewritten to the mailbox, the return path in Delivered-To
            # (as the receiving server wrote it, in lower case), a soft bounce.
            f"Delivered-To: {paths.address(sent[third].id).lower()}\r\n".encode()
            + mailsamples.postfix_dsn(
                RETURNS, "c@example.com", None, status="4.2.2", action="delayed"
            ),
        ],
    )
    (tmp_path / "password").write_text(dovecot.PASSWORD + "\n")
    cli = Cli(pg_url, tmp_path, ENV)
    url = f"imap://{user}@127.0.0.1:{dovecot_server.imap_port}/INBOX"
    cli.ok("mailbox", "incoming", "set", RETURNS, "--url", url, "--password-file", "password")
    cli.ok("worker", "inbound", "--exit-when-idle")

    # The mailto did what the POST does: opted out, recorded, the waiting email canceled.
    contact = _contact(engine, first)
    assert contact.do_not_bulk_email is True
    assert (contact.unsubscribed_email_id, contact.unsubscribed_operation_id) == (
        sent[first].id,
        operation_id,
    )
    assert contact.do_not_bulk_email_reason == (
        f"unsubscribed by mail from email {sent[first].id} of bulk operation {operation_id}"
    )
    waiting = {e.regarding_contact_id: e.current_status for e in bulkops.emails_of(engine, next_id)}
    assert waiting == {
        first: Status.CANCELED,
        second: Status.PENDING_SEND,
        third: Status.PENDING_SEND,
        fourth: Status.PENDING_SEND,
    }
    bulkops.assert_counters_match_the_emails(engine, next_id)
    # Each DSN is recorded on the email whose return path it came to; the forgeries on none.
    assert _bounces(engine) == [(sent[second].id, 1, "5.1.1"), (sent[third].id, 2, "4.2.2")]
    assert "hard bounce of email" in (_contact(engine, second).do_not_bulk_email_reason or "")
    assert _contact(engine, third).do_not_bulk_email is False  # one soft bounce: not yet
    assert _contact(engine, fourth).do_not_bulk_email is False
    assert _contact(engine, fourth).unsubscribed_at is None
    assert bulkops.operation(engine, operation_id).bounces == 2
    listed = json.loads(
        cli.ok("email", "list", "--direction", "incoming", "--mailbox", RETURNS, "--json")
    )
    kinds = {}
    for entry in listed:
        shown = json.loads(cli.ok("email", "show", str(entry["id"]), "--json"))
        kinds[shown["subject"], shown.get("replies_to_email")] = shown["kind"]
    assert kinds == {
        ("unsubscribe", sent[first].id): "unsubscribe",
        ("u", None): "message",
        ("Undelivered Mail Returned to Sender", None): "bounce",
        ("Undelivered Mail Returned to Sender", sent[second].id): "bounce",
        ("Undelivered Mail Returned to Sender", sent[third].id): "bounce",
    }
