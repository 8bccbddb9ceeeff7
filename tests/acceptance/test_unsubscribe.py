"""One-click unsubscribe and DKIM as recipients and their mail providers meet them: a real
poller sends a bulk operation signed with the key `bulkmail dkim add` named, every received
message verifies with dkimpy against the record `bulkmail dkim dns` prints; its links POSTed as
Gmail does (urlencoded and multipart), a GET that changes nothing, tampered tokens and a new
secret key, and the next bulk send that leaves the contact out."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim as dkimpy
import pydantic
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bulkmail import db, errors, expansion, models, settings, templates, tokens, unsubscribe
from bulkmail.status import Status
from tests import bulkops, mailserver, pollers, webserver
from tests.acceptance.conftest import Cli

PUBLIC_URL = "https://mail.example.org/bulk"
SECRET = base64.urlsafe_b64encode(b"k" * 32).decode()
FOOTER = '<p>Hi {{ contact.first_name }}</p><a id="u" href="{{ email.unsubscribe_url }}">Stop</a>'


@pytest.fixture
def start_web(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., webserver.Web]]:
    with webserver.started(pg_url, tmp_path) as start:
        yield start


def _links(secret: str = SECRET) -> unsubscribe.Links:
    links = unsubscribe.Links.from_settings(
        settings.Settings(public_url=PUBLIC_URL, secret_key=secret)
    )
    assert links is not None
    return links


def _contact(engine: sa.Engine, contact_id: int) -> models.Contact:
    with db.session_scope(engine) as session:
        found = session.get(models.Contact, contact_id)
        assert found is not None
        return found


def _multipart(field: str, value: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n'
        f"{value}\r\n--{boundary}--\r\n"
    ).encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _signing_key(cli: Cli, folder: Path) -> bytes:
    """A key added with `bulkmail dkim add`; the TXT value `bulkmail dkim dns` prints."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = folder / "dkim.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (folder / "junk.pem").write_text("not a key")
    refused = cli.refused(
        "dkim", "add", "--domain", "example.org", "--selector", "s1", "--key-file", "junk.pem"
    )
    assert "holds no unencrypted PEM private key" in refused
    cli.ok("dkim", "add", "--domain", "Example.ORG", "--selector", "s1", "--key-file", str(pem))
    listed = cli.ok("dkim", "list", "--json")
    assert f'"key_file": "{pem}"' in listed
    assert '"domain": "example.org"' in listed
    record = cli.ok("dkim", "dns", "example.org")
    assert record.startswith("s1._domainkey.example.org. IN TXT (")
    return "".join(record.split('"')[1::2]).encode()


def test_a_recipient_unsubscribes_with_one_click_and_the_next_send_leaves_them_out(
    engine: sa.Engine,
    pg_url: str,
    tmp_path: Path,
    start_web: Callable[..., webserver.Web],
) -> None:
    bulkops.seed(engine)
    with db.session_scope(engine) as session:
        templates.create(session, name="footer", subject="News", html=FOOTER)
    ids = bulkops.add_contacts(engine, 3)
    txt = _signing_key(Cli(database_url=pg_url, cwd=tmp_path), tmp_path)
    operation_id = bulkops.submit(engine, template_name="footer")
    env = {"BULKMAIL_PUBLIC_URL": PUBLIC_URL, "BULKMAIL_SECRET_KEY": SECRET}
    expansion.expand(engine, operation_id, batch_size=10, links=_links())
    ledger = mailserver.Ledger()
    with mailserver.serving(ledger) as port, pollers.started(pg_url, tmp_path) as start_poller:
        poller = start_poller(f"smtp://127.0.0.1:{port}", "--exit-when-idle", **env)
        assert poller.wait(60) == 0, poller.log()[-3000:]
    deliveries = {d.recipients[0]: d for d in ledger.deliveries()}
    assert len(deliveries) == 3
    emails = {e.regarding_contact_id: e for e in bulkops.emails_of(engine, operation_id)}
    paths = {}
    for contact_id, email in emails.items():
        data = deliveries[email.to_addresses[0]].data
        assert data.startswith(
            b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;"
        )
        assert dkimpy.verify(data, dnsfunc=lambda name, timeout=5: txt)
        message = deliveries[email.to_addresses[0]].parsed()
        url = f"{PUBLIC_URL}/u/{_links().token(email.id)}"
        assert message["List-Unsubscribe"] == f"<{url}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        html = message.get_body(("html",))
        assert html is not None
        assert f'href="{url}"' in html.get_content()  # the footer link is the same
        paths[contact_id] = url.removeprefix(PUBLIC_URL)
    first, second, third = ids

    web = start_web(**env)
    # A link scanner's GET: a confirm button, and nothing changed.
    status, headers, body = web.request(paths[first])
    assert status == 200
    assert b'name="List-Unsubscribe" value="One-Click"' in body
    assert headers["cache-control"] == "no-store"
    assert _contact(engine, first).do_not_bulk_email is False
    # A tampered token, a token of a former secret key, a token with no MAC: 404, nothing done.
    token = paths[first].removeprefix("/u/")
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    old = _links(base64.urlsafe_b64encode(b"o" * 32).decode()).token(emails[first].id)
    for bad in (tampered, old, str(emails[first].id), f"{emails[second].id}-{token.split('-')[1]}"):
        status, _, _ = web.request(f"/u/{bad}", form={"List-Unsubscribe": "One-Click"})
        assert status == 404, bad
    # A POST without the one-click field: 400.
    status, _, _ = web.request(paths[first], form={"List-Unsubscribe": "no"})
    assert status == 400
    assert _contact(engine, first).do_not_bulk_email is False

    # Gmail's POST: urlencoded, no cookie, no token; 200 without a redirect; twice the same.
    for _ in range(2):
        status, _, _ = web.request(paths[first], form={"List-Unsubscribe": "One-Click"})
        assert status == 200
    contact = _contact(engine, first)
    assert contact.do_not_bulk_email is True
    assert contact.unsubscribed_email_id == emails[first].id
    assert contact.unsubscribed_operation_id == operation_id
    assert contact.unsubscribed_at is not None
    assert contact.do_not_bulk_email_reason == (
        f"unsubscribed by one-click from email {emails[first].id} of bulk operation {operation_id}"
    )
    # Multipart, as other providers send it.
    body, content_type = _multipart("List-Unsubscribe", "One-Click")
    status, _, _ = web.request(paths[second], headers={"Content-Type": content_type}, data=body)
    assert status == 200
    assert _contact(engine, second).do_not_bulk_email is True
    assert _contact(engine, third).do_not_bulk_email is False

    # The next send: the unsubscribed are left out. A pending email of one who unsubscribes
    # now is canceled, never sent.
    next_id = bulkops.submit(engine, template_name="footer")
    expansion.expand(engine, next_id, batch_size=10, links=_links())
    pending = bulkops.emails_of(engine, next_id)
    assert [e.regarding_contact_id for e in pending] == [third]
    status, _, _ = web.request(paths[third], form={"List-Unsubscribe": "One-Click"})
    assert status == 200
    (canceled,) = bulkops.emails_of(engine, next_id)
    assert canceled.current_status is Status.CANCELED
    assert bulkops.operation(engine, next_id).skipped_opted_out == 2
    bulkops.assert_counters_match_the_emails(engine, next_id)


def test_links_need_the_secret_key_and_an_http_url() -> None:
    for bad in ("ftp://mail.example.org", "https://mail.example.org/?x=1", "mail.example.org"):
        with pytest.raises(pydantic.ValidationError, match="as recipients reach it"):
            settings.Settings(public_url=bad)
    with pytest.raises(errors.InvalidInput, match="BULKMAIL_SECRET_KEY is not"):
        unsubscribe.Links.from_settings(settings.Settings(public_url=PUBLIC_URL))
    assert unsubscribe.Links.from_settings(settings.Settings(secret_key=SECRET)) is None
    assert re.fullmatch(r"[1-9][0-9]*-[A-Za-z0-9_-]{22}", _links().token(2**63 - 1))


def test_emails_rerendered_by_retry_failed_get_their_link_from_the_cli_and_the_api(
    engine: sa.Engine,
    pg_url: str,
    tmp_path: Path,
    start_web: Callable[..., webserver.Web],
) -> None:
    # Every recipient with seats = -1 breaks the template (a division by zero).
    breaking = FOOTER + "{{ 1000 // ((contact.attributes.seats | default(0) | int) + 1) }}"
    bulkops.seed(engine)
    with db.session_scope(engine) as session:
        templates.create(session, name="footer", subject="News", html=breaking)
        _, api_token = tokens.create(session, user=bulkops.SENDER, name="ops")
    bulkops.add_contacts(engine, 1)
    bulkops.add_contacts(engine, 1, attributes={"seats": -1})
    first, second = (bulkops.submit(engine, template_name="footer") for _ in range(2))
    for operation_id in (first, second):
        expansion.expand(engine, operation_id, batch_size=10, links=_links())
        assert bulkops.operation(engine, operation_id).render_failures == 1
    with db.session_scope(engine) as session:
        templates.update(session, "footer", html=FOOTER)
    env = {"BULKMAIL_PUBLIC_URL": PUBLIC_URL, "BULKMAIL_SECRET_KEY": SECRET}

    out = Cli(database_url=pg_url, cwd=tmp_path, env=env).ok("bulk", "retry-failed", str(first))
    assert out.startswith("1 emails")
    web = start_web(**env)
    status, _, body = web.request(
        f"/api/v1/operations/{second}/retry-failed", token=api_token, form={}
    )
    assert status == 200, body
    for operation_id in (first, second):
        for email in bulkops.emails_of(engine, operation_id):
            assert email.current_status is Status.PENDING_SEND
            assert f'href="{_links().url(email.id)}"' in (email.body_html or "")
