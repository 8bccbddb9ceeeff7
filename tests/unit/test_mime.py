"""bulkmail.mime: the bytes it builds are well-formed and parse back to what it was given."""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail import errors, headers, mime

PARSER = email.parser.BytesParser(policy=email.policy.default)
BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
DATE = datetime(2024, 5, 17, 9, 30, 5, tzinfo=UTC)


def attachment(
    data: bytes = b"data",
    *,
    filename: str = "file.bin",
    mime_type: str = "application/octet-stream",
    content_id: str | None = None,
) -> mime.Attachment:
    return mime.Attachment(
        sha256=hashlib.sha256(data).hexdigest(),
        filename=filename,
        mime_type=mime_type,
        data=data,
        content_id=content_id,
    )


def message(**changes: Any) -> mime.Message:
    fields: dict[str, Any] = {
        "message_id": "0123@example.org",
        "date": DATE,
        "from_address": "sender@example.org",
        "to": ("alice@example.com",),
        "subject": "Hello",
        "text": "Hi Alice\n",
    }
    return mime.Message(**(fields | changes))


def wire_lines(data: bytes) -> list[bytes]:
    """Check what every message must satisfy on the wire and return its lines."""
    assert BARE_CR_OR_LF.search(data) is None
    assert data.endswith(b"\r\n")
    lines = data[:-2].split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    return lines


def header_lines(data: bytes) -> list[bytes]:
    lines = wire_lines(data)
    return lines[: lines.index(b"")]


def raw_header(data: bytes, name: str) -> str:
    """A header's value as written, unfolded."""
    unfolded = data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").decode("utf-8")
    [value] = [line.split(": ", 1)[1] for line in unfolded.split("\r\n") if line.startswith(name)]
    return value


def display_name(data: bytes) -> str:
    """The From display name as a reader sees it.

    Encoded-words are decoded by the RFC 2047 rules (legacy ``decode_header``): Python 3.11's
    address parser puts a space between adjacent encoded-words in a phrase (CPython gh-128110).
    """
    phrase = raw_header(data, "From: ").rpartition(" <")[0]
    if phrase.startswith("=?"):
        return str(email.header.make_header(email.header.decode_header(phrase)))
    name = PARSER.parsebytes(data)["From"].addresses[0].display_name
    assert isinstance(name, str)
    return name


def parse(data: bytes) -> EmailMessage:
    wire_lines(data)
    parsed = PARSER.parsebytes(data)
    assert isinstance(parsed, EmailMessage)
    assert not [part.defects for part in parsed.walk() if part.defects]
    return parsed


def as_text(text: str | None) -> str | None:
    """What a text body reads as after the trip: line breaks as CRLF, ending with one."""
    if text is None:
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text.replace("\n", "\r\n")


def body(parsed: EmailMessage, subtype: str) -> str | None:
    part = parsed.get_body((subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def leaves(parsed: EmailMessage) -> list[EmailMessage]:
    return [part for part in parsed.walk() if not part.is_multipart()]


def tree(part: EmailMessage) -> Any:
    if not part.is_multipart():
        return part.get_content_type()
    return (part.get_content_type(), [tree(child) for child in part.iter_parts()])


# Every character that may stand in a header value: any text but CR, LF and NUL.
header_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=200)
ascii_addresses = st.builds(
    "{}@{}".format,
    st.from_regex(r"[A-Za-z0-9_+-]{1,12}(\.[A-Za-z0-9_+-]{1,12}){0,2}", fullmatch=True),
    st.sampled_from(["example.org", "Example.COM", "mail.example.net", "xn--bcher-kva.example"]),
)
attachments = st.builds(
    attachment,
    st.binary(max_size=300),
    filename=st.text(max_size=80),
    mime_type=st.sampled_from(["application/pdf", "image/png", "text/plain", "message/rfc822"]),
    content_id=st.none() | st.from_regex(r"[a-z0-9.]{1,20}@example\.org", fullmatch=True),
)
messages = st.builds(
    mime.Message,
    message_id=st.from_regex(r"[a-z0-9]{1,40}@example\.org", fullmatch=True),
    date=st.datetimes(
        min_value=datetime(1970, 1, 2),
        timezones=st.sampled_from([UTC, timezone(-timedelta(hours=8))]),
    ),
    from_address=ascii_addresses,
    from_name=st.none() | header_text,
    to=st.lists(ascii_addresses, max_size=5).map(tuple),
    cc=st.lists(ascii_addresses, max_size=5).map(tuple),
    subject=header_text,
    text=st.none() | st.text(),
    html=st.none() | st.text(),
    attachments=st.lists(attachments, max_size=4).map(tuple),
    headers=st.lists(
        st.tuples(st.from_regex(r"X-[A-Za-z0-9-]{1,30}", fullmatch=True), header_text),
        max_size=3,
        unique_by=lambda header: header[0].lower(),
    ).map(tuple),
)


def header_form(address: str) -> str:
    """The address as the builder writes it: validated, with an ASCII domain where it can."""
    local, _, domain = headers.normalize_address(address).rpartition("@")
    return f"{local}@{idna.encode(domain).decode('ascii')}"


@settings(deadline=None, max_examples=300)
@given(messages)
def test_every_message_parses_back_to_its_input(msg: mime.Message) -> None:
    data = mime.build(msg)
    parsed = parse(data)

    assert parsed["Message-ID"] == f"<{msg.message_id}>"
    assert parsed["Date"].datetime == msg.date.replace(microsecond=0)
    assert parsed["From"].addresses[0].addr_spec == header_form(msg.from_address)
    assert display_name(data) == (msg.from_name or "")
    to = [a.addr_spec for a in parsed["To"].addresses] if msg.to else []
    assert to == [header_form(a) for a in msg.to]
    cc = [a.addr_spec for a in parsed["Cc"].addresses] if msg.cc else []
    assert cc == [header_form(a) for a in msg.cc]
    assert "Bcc" not in parsed
    assert parsed["Subject"] == msg.subject
    for name, value in msg.headers:
        assert parsed[name] == value

    text = msg.text if msg.text is not None or msg.html is not None else ""
    assert body(parsed, "plain") == as_text(text)
    assert body(parsed, "html") == as_text(msg.html)
    inline = [a for a in msg.attachments if msg.html is not None and a.content_id]
    attached = [a for a in msg.attachments if a not in inline]
    parts = leaves(parsed)[(text is not None) + (msg.html is not None) :]
    assert len(parts) == len(msg.attachments)
    for part, sent in zip(parts, inline + attached, strict=True):
        assert part.get_payload(decode=True) == sent.data
        assert part.get_filename() == mime.safe_filename(sent.filename)
        assert part["Content-ID"] == (f"<{sent.content_id}>" if sent.content_id else None)
        assert part.get_content_disposition() == ("inline" if sent.content_id else "attachment")
        expected_type = (
            "application/octet-stream" if sent.mime_type.startswith("message/") else sent.mime_type
        )
        assert part.get_content_type() == expected_type


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "text/plain"),
        ({"text": None, "html": "<p>Hi</p>"}, "text/html"),
        ({"text": None, "html": None}, "text/plain"),
        ({"html": "<p>Hi</p>"}, ("multipart/alternative", ["text/plain", "text/html"])),
        (
            {"attachments": (attachment(),)},
            ("multipart/mixed", ["text/plain", "application/octet-stream"]),
        ),
        (
            {
                "html": "<img src='cid:logo@example.org'>",
                "attachments": (
                    attachment(b"png", mime_type="image/png", content_id="logo@example.org"),
                    attachment(),
                ),
            },
            (
                "multipart/mixed",
                [
                    (
                        "multipart/related",
                        [
                            ("multipart/alternative", ["text/plain", "text/html"]),
                            "image/png",
                        ],
                    ),
                    "application/octet-stream",
                ],
            ),
        ),
        (
            {
                "text": None,
                "html": "<img src='cid:a@example.org'>",
                "attachments": (
                    attachment(b"png", mime_type="image/png", content_id="a@example.org"),
                ),
            },
            ("multipart/related", ["text/html", "image/png"]),
        ),
        (
            {
                "attachments": (
                    attachment(b"png", mime_type="image/png", content_id="a@example.org"),
                )
            },
            ("multipart/mixed", ["text/plain", "image/png"]),
        ),
    ],
)
def test_each_level_of_nesting_appears_only_when_needed(
    changes: dict[str, Any], expected: Any
) -> None:
    assert tree(parse(mime.build(message(**changes)))) == expected


@pytest.mark.parametrize(
    "changes",
    [
        {"from_name": "Mallory\r\nBcc: x@evil.example"},
        {"from_name": "Mallory\x00"},
        {"subject": "Hello\nBcc: x@evil.example"},
        {"subject": "Hello\rBcc: x@evil.example"},
        {"to": ("a@example.org\r\nRCPT TO:<x@evil.example>",)},
        {"to": ("alice@x(<bob@y>",)},
        {"to": ("alice@example.org", "Bob <bob@example.org>")},
        {"cc": ("carol@example.org\n",)},
        {"from_address": "sender@example.org\r\nBcc: x@evil.example"},
        {"from_address": "not an address"},
        {"message_id": "0123@example.org>\r\nBcc: x@evil.example"},
        {"message_id": "<0123@example.org>"},
        {"message_id": "no-at-sign"},
        {"headers": (("X-Tracking", "abc\r\nBcc: x@evil.example"),)},
        {"headers": (("X-Tracking", "abc\x00"),)},
        {"headers": (("X-Tracking\r\nBcc", "x@evil.example"),)},
        {"headers": (("X Tracking", "abc"),)},
        {"headers": (("X-Tracking:", "abc"),)},
        {"headers": (("", "abc"),)},
        {"headers": (("X-Trâcking", "abc"),)},
        {"headers": (("X-" + "a" * 100, "abc"),)},
        {"headers": (("Bcc", "x@evil.example"),)},
        {"headers": (("from", "x@evil.example"),)},
        {"headers": (("Content-Type", "text/html"),)},
        {"headers": (("MIME-Version", "2.0"),)},
        {"attachments": (attachment(content_id="logo\r\nBcc: x@evil.example"),)},
        {"attachments": (attachment(content_id="logo image"),)},
        {"attachments": (attachment(mime_type="text/plain\r\nBcc: x@evil.example"),)},
        {"attachments": (attachment(mime_type="not a type"),)},
        {
            "attachments": (
                mime.Attachment(sha256="0" * 64, filename="a", mime_type="a/b", data=b"x"),
            )
        },
        {"date": datetime(2024, 5, 17, 9, 30)},
        {"subject": "lone \udc80 surrogate"},
        {"text": "lone \ud800 surrogate"},
    ],
)
def test_unsafe_values_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidInput):
        mime.build(message(**changes))


@pytest.mark.parametrize(
    "value",
    [
        " ".join(f"word{i}" for i in range(300)),  # ~2,000 characters
        "x" * 2_000,
        "Grüße aus Köln, " * 125,
        "  leading, trailing and  double  spaces  ",
        "looks like an =?utf-8?q?encoded_word?= but is not",
    ],
)
def test_long_and_awkward_header_values_fold_and_round_trip(value: str) -> None:
    data = mime.build(message(subject=value, from_name=value, headers=(("X-Campaign", value),)))
    parsed = parse(data)
    assert parsed["Subject"] == value
    assert parsed["X-Campaign"] == value
    assert display_name(data) == value
    assert max(len(line) for line in header_lines(data)) <= 78


def test_an_unbreakable_token_stays_raw_within_998() -> None:
    url = "<https://example.org/unsubscribe?token=" + "a" * 600 + ">"
    data = mime.build(message(headers=(("List-Unsubscribe", url),)))
    assert f"List-Unsubscribe: {url}".encode() in header_lines(data)
    assert parse(data)["List-Unsubscribe"] == url


def test_the_header_block_is_exact() -> None:
    data = mime.build(
        message(
            from_name="Example Corp",
            to=("alice@example.com", "Bob@Example.COM"),
            cc=("carol@example.net",),
            headers=(("X-Bulkmail-Tracking", "t-42"),),
        )
    )
    assert header_lines(data) == [
        b"Message-ID: <0123@example.org>",
        b"Date: Fri, 17 May 2024 09:30:05 +0000",
        b"From: Example Corp <sender@example.org>",
        b"To: alice@example.com, Bob@example.com",
        b"Cc: carol@example.net",
        b"Subject: Hello",
        b"MIME-Version: 1.0",
        b"X-Bulkmail-Tracking: t-42",
        b'Content-Type: text/plain; charset="utf-8"',
        b"Content-Transfer-Encoding: 7bit",
    ]


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ('Smith, John "JJ"', b'From: "Smith, John \\"JJ\\"" <sender@example.org>'),
        ("Zoë", b"From: =?utf-8?b?Wm/Dqw==?= <sender@example.org>"),
    ],
)
def test_display_names_are_quoted_or_encoded(name: str, written: bytes) -> None:
    data = mime.build(message(from_name=name))
    assert written in header_lines(data)
    assert display_name(data) == name


def test_a_message_without_to_names_undisclosed_recipients() -> None:
    data = mime.build(message(to=()))
    assert b"To: undisclosed-recipients:;" in header_lines(data)


@pytest.mark.parametrize(
    ("date", "written"),
    [
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))), "+0530"),
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=8))), "-0800"),
    ],
)
def test_dates_keep_their_offset(date: datetime, written: str) -> None:
    data = mime.build(message(date=date))
    assert any(
        line.startswith(b"Date: ") and line.endswith(written.encode())
        for line in header_lines(data)
    )
    assert parse(data)["Date"].datetime == date


BODY = "\n".join(
    [
        "x" * 5_000,
        ".",
        ".starts with a dot",
        "..two dots",
        "trailing space   ",
        "tab\tand = sign",
        "From the start of a line",
        "Grüße, 你好, 👋",
        "",
        "",
    ]
)


@pytest.mark.parametrize("text", [BODY, BODY.replace("\n", "\r\n"), BODY.rstrip("\n")])
def test_long_lines_and_leading_dots_round_trip(text: str) -> None:
    data = mime.build(message(text=text, html=f"<pre>{text}</pre>"))
    assert max(len(line) for line in wire_lines(data)) <= 78
    parsed = parse(data)
    assert body(parsed, "plain") == as_text(text)
    assert body(parsed, "html") == as_text(f"<pre>{text}</pre>")


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Plain ASCII text.\n" * 20, "7bit"),
        # HTML is often written in lines of hundreds of characters: they fit 7bit's 998 octets.
        ("<p>Plain ASCII, one line of 220 characters.</p> " * 5, "7bit"),
        ("Plain ASCII text in one line longer than 998 characters. " * 20, "quoted-printable"),
        ("ASCII with a NUL\0 in it.\n", "quoted-printable"),
        ("Sehr geehrte Frau Müller,\n" * 20, "quoted-printable"),
        ("Здравствуйте, уважаемый клиент!\n" * 20, "base64"),
        ("こんにちは、お客様。\n" * 20, "base64"),
    ],
)
def test_bodies_take_the_shorter_transfer_encoding(text: str, encoding: str) -> None:
    parsed = parse(mime.build(message(text=text)))
    assert parsed["Content-Transfer-Encoding"] == encoding
    assert body(parsed, "plain") == as_text(text)


def test_a_text_line_like_a_boundary_cannot_end_its_part() -> None:
    text = "line one\n--=_bulkmail_alternative\nline three\n"
    parsed = parse(mime.build(message(text=text, html="<p>html</p>")))
    assert [part.get_content_subtype() for part in leaves(parsed)] == ["plain", "html"]
    assert body(parsed, "plain") == as_text(text)
    assert body(parsed, "html") == as_text("<p>html</p>")


def test_an_empty_attachment_round_trips() -> None:
    parsed = parse(mime.build(message(attachments=(attachment(b"", filename="empty.txt"),))))
    [part] = leaves(parsed)[1:]
    assert part.get_payload(decode=True) == b""
    assert part.get_filename() == "empty.txt"


def test_attachments_are_base64_in_76_character_lines() -> None:
    data = bytes(range(256)) * 40
    built = mime.build(message(attachments=(attachment(data),)))
    part = mime.PartCache().part(attachment(data))
    assert part in built
    encoded = part.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert {len(line) for line in encoded[:-2]} == {76}
    assert leaves(parse(built))[1].get_payload(decode=True) == data


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\system32\\cmd.exe", "cmd.exe"),
        ("C:\\Users\\alice\\report.pdf", "report.pdf"),
        ("evil\r\nContent-Type: text/html.txt", "html.txt"),
        ("evil\r\nBcc: x.txt", "evil Bcc: x.txt"),
        ("nul\x00byte.txt", "nul byte.txt"),
        ("invoice\u202egpj.exe", "invoice gpj.exe"),
        ("  .hidden  ", "hidden"),
        ("", "attachment"),
        ("..", "attachment"),
        ("dir/", "attachment"),
        ('say "hi".txt', 'say "hi".txt'),
        ("Prüfbericht 2024.pdf", "Prüfbericht 2024.pdf"),
        ("e\u0301te\u0301.txt", "été.txt"),
    ],
)
def test_file_names_are_sanitised(name: str, safe: str) -> None:
    assert mime.safe_filename(name) == safe


def test_a_long_file_name_keeps_its_extension() -> None:
    safe = mime.safe_filename("a" * 500 + ".pdf")
    assert len(safe) <= 200
    assert safe.endswith("a.pdf")


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("report.pdf", b'filename="report.pdf"'),
        ('say "hi".txt', b"filename*=utf-8''say%20%22hi%22.txt"),
        ("Prüfbericht 2024.pdf", b"filename*=utf-8''Pr%C3%BCfbericht%202024.pdf"),
        ("年度报告" * 20 + ".pdf", b"filename*0*=utf-8''%E5%B9%B4"),
        ("x" * 100 + ".pdf", b"filename*0*=utf-8''xxxx"),
    ],
)
def test_file_names_are_quoted_or_rfc2231_encoded(name: str, written: bytes) -> None:
    data = mime.build(message(attachments=(attachment(filename=name),)))
    assert written in data
    part = leaves(parse(data))[1]
    assert part.get_filename() == name
    assert max(len(line) for line in wire_lines(data)) <= 78


@pytest.mark.parametrize(
    ("given_type", "written_type"),
    [("IMAGE/PNG", "image/png"), ("message/rfc822", "application/octet-stream")],
)
def test_mime_types_are_normalised(given_type: str, written_type: str) -> None:
    parsed = parse(mime.build(message(attachments=(attachment(mime_type=given_type),))))
    assert leaves(parsed)[1].get_content_type() == written_type


def test_the_cache_encodes_a_blob_once_and_reuses_the_part() -> None:
    cache = mime.PartCache()
    pdf = attachment(b"%PDF" * 25_000, filename="statement.pdf", mime_type="application/pdf")
    first = cache.part(pdf)
    built = [
        mime.build(message(to=(f"c{i}@example.com",), attachments=(pdf,)), cache=cache)
        for i in range(3)
    ]
    assert cache.part(pdf) is first
    assert (cache.misses, cache.hits) == (1, 4)
    assert all(first in data for data in built)


def test_the_cache_key_covers_what_the_part_depends_on() -> None:
    cache = mime.PartCache()
    data = b"same bytes"
    variants = [
        attachment(data),
        attachment(data, filename="other.bin"),
        attachment(data, mime_type="image/png"),
        attachment(data, content_id="x@example.org"),
    ]
    parts = {cache.part(variant) for variant in variants}
    assert len(parts) == len(variants)
    assert cache.misses == len(variants)


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    one, two, three = (attachment(bytes([i]) * 3_000) for i in range(3))
    cache = mime.PartCache(max_bytes=len(mime.PartCache().part(one)) * 2 + 100)
    cache.part(one)
    cache.part(two)
    cache.part(one)  # now two is the least recently used
    cache.part(three)
    cache.part(one)
    assert cache.misses == 3
    cache.part(two)
    assert cache.misses == 4


def test_a_part_larger_than_the_cache_is_built_but_not_kept() -> None:
    cache = mime.PartCache(max_bytes=100)
    big = attachment(b"x" * 1_000)
    assert cache.part(big) == cache.part(big)
    assert cache.misses == 2


def test_ascii_local_parts_at_idn_domains_stay_ascii() -> None:
    msg = message(to=("user@bücher.example",), cc=("user@xn--bcher-kva.example",))
    data = mime.build(msg)
    assert b"To: user@xn--bcher-kva.example" in header_lines(data)
    assert b"Cc: user@xn--bcher-kva.example" in header_lines(data)
    assert not mime.needs_smtputf8(msg)


def test_a_utf8_local_part_needs_smtputf8() -> None:
    msg = message(to=("jürgen@example.org",), from_name="Zoë")
    data = mime.build(msg)
    assert mime.needs_smtputf8(msg)
    assert "To: jürgen@example.org".encode() in header_lines(data)
    parsed = email.parser.Parser(policy=email.policy.SMTPUTF8).parsestr(data.decode("utf-8"))
    assert parsed["To"].addresses[0].addr_spec == "jürgen@example.org"
    assert not mime.needs_smtputf8(message())


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("WWW@example.org", "www@example.org"),
        ("PostMaster@Example.org", "postmaster@example.org"),
        ("Www2@example.org", "Www2@example.org"),
    ],
)
def test_role_names_go_out_as_they_are_stored(address: str, stored: str) -> None:
    # email-validator writes RFC 2142's case-insensitive role names in lower case.
    assert header_form(address) == stored
    assert parse(mime.build(message(to=(address,))))["To"].addresses[0].addr_spec == stored


@settings(deadline=None, max_examples=300)
@given(
    st.builds(
        "{}@{}".format,
        st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,70}", fullmatch=True),
        st.sampled_from(
            [
                "example.org",
                "EXAMPLE.org",
                "localhost",
                "example.test",
                "example.invalid",
                "-bad.example.org",
                "a..example.org",
                "example.org.",
                "123.456",
                "xn--bcher-kva.example",
                "xn--zz.example",
                "ex_ample.org",
                "a" * 64 + ".example.org",
                "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 50 + ".org",
            ]
        ),
    )
)
def test_address_checks_agree_with_email_validator(address: str) -> None:
    try:
        expected = header_form(address)
    except errors.InvalidInput:
        with pytest.raises(errors.InvalidInput):
            mime.build(message(to=(address,)))
    else:
        assert parse(mime.build(message(to=(address,))))["To"].addresses[0].addr_spec == expected


def test_make_message_id() -> None:
    first, second = (
        mime.make_message_id("Mail.Example.org"),
        mime.make_message_id("mail.example.org"),
    )
    assert first != second
    assert re.fullmatch(r"[0-9a-f]{32}@mail\.example\.org", first)
    assert parse(mime.build(message(message_id=first)))["Message-ID"] == f"<{first}>"


@pytest.mark.parametrize("domain", ["", "bad domain", "example.org\r\nBcc: x", "-x.example.org"])
def test_make_message_id_refuses_a_bad_domain(domain: str) -> None:
    with pytest.raises(errors.InvalidInput):
        mime.make_message_id(domain)
