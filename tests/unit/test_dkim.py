"""Every signature verifies with dkimpy, an independent verifier, against the published record;
a changed header or body fails it."""

from __future__ import annotations

import datetime as dt
import hashlib

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkmail import dkim, errors, mime

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SIGNER = dkim.Signer(domain="example.org", selector="mail2026", key=KEY)
RECORD = dkim.dns_record("mail2026", "example.org", KEY)


def _txt(name: bytes, timeout: int = 5) -> bytes:
    # The record as a resolver returns it: the quoted strings of `dkim dns`, joined.
    assert name == b"mail2026._domainkey.example.org."
    return "".join(RECORD.split('"')[1::2]).encode()


def _verifies(data: bytes) -> bool:
    return bool(dkimpy.verify(data, dnsfunc=_txt))


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
lines = st.lists(
    st.one_of(text, st.text(" \t.x", max_size=20), st.just("x" * 2000)), max_size=8
).map("\n".join)
header_value = st.text(st.characters(exclude_characters="\r\n\x00", exclude_categories=("Cs",)))
attachment = st.binary(max_size=3000).map(
    lambda data: mime.Attachment(
        sha256=hashlib.sha256(data).hexdigest(),
        filename="report ü.pdf",
        mime_type="application/pdf",
        data=data,
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=header_value,
    name=st.one_of(st.none(), header_value.filter(str.strip)),
    body=lines,
    html=st.one_of(st.none(), lines),
    extra=st.lists(st.tuples(st.sampled_from(["X-Campaign", "List-Id"]), header_value), max_size=2),
    parts=st.lists(attachment, max_size=2),
    unsubscribe=st.booleans(),
)
def test_every_signed_message_verifies_and_a_tampered_one_does_not(
    subject: str,
    name: str | None,
    body: str,
    html: str | None,
    extra: list[tuple[str, str]],
    parts: list[mime.Attachment],
    unsubscribe: bool,
) -> None:
    fields = list(extra)
    if unsubscribe:
        fields += [
            ("List-Unsubscribe", "<https://mail.example.org/u/12-AAAA>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ]
    message = mime.Message(
        message_id="0123@example.org",
        date=dt.datetime(2026, 12, 6, 13, 0, tzinfo=dt.UTC),
        from_address="news@example.org",
        from_name=name,
        to=("anna@example.com", "bo@xn--mnchen-3ya.de"),
        cc=("cc@example.net",),
        subject=subject,
        text=body,
        html=html,
        attachments=tuple(parts),
        headers=tuple(fields),
    )
    data = SIGNER.sign(mime.build(message))
    assert _verifies(data)
    head = data.partition(b"\r\n\r\n")[0]
    signed = head.split(b"h=")[1].split(b";")[0].split(b":")
    expected = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version"]
    assert signed[: len(expected)] == expected
    assert (b"list-unsubscribe-post" in signed) is unsubscribe
    assert not _verifies(data.replace(b"\r\nTo: anna@", b"\r\nTo: eve@", 1))
    assert not _verifies(data.replace(b"0123@example.org", b"0124@example.org", 1))
    assert not _verifies(data + b"one more line\r\n")


def test_keys_and_selectors_are_checked_when_given() -> None:
    # The shortest key RFC 8301 lets verifiers accept.
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    pem = short.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert dkim.load_key(pem, source="k.pem").key_size == 1024
    with pytest.raises(errors.InvalidInput, match="no unencrypted PEM private key"):
        dkim.load_key(b"not a key", source="k.pem")
    with pytest.raises(errors.InvalidInput, match="not a DNS label"):
        dkim.check_selector("bad selector")
