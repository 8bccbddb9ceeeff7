"""The parser of received messages never raises and keeps what can be read; bounces and
complaints are recognised by their report, whatever the bytes around them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.inbound import parse
from bulkmail.inbound.reports import BounceKind
from tests import mailsamples

LIMIT = 1_000


@pytest.mark.parametrize(("what", "raw"), list(mailsamples.broken().items()))
def test_bad_input_is_parsed_into_what_can_be_stored(what: str, raw: bytes) -> None:
    parsed = parse.parse(raw, max_attachment=LIMIT)
    texts = [parsed.subject, parsed.from_address, parsed.text or "", parsed.html or ""]
    texts += parsed.to + parsed.cc + [p.file_name for p in parsed.attachments]
    for text in texts:
        text.encode("utf-8")  # no surrogates: PostgreSQL takes it
        assert "\x00" not in text
    assert len(parsed.subject) <= parse.MAX_SUBJECT
    assert len(parsed.attachments) <= parse.MAX_ATTACHMENTS
    assert parsed.size == len(raw)
    assert parsed.problems, what  # each of them is worth a note


def test_what_was_cut_or_missing_is_said() -> None:
    broken = mailsamples.broken()
    many = parse.parse(broken["10,000 parts"], max_attachment=LIMIT)
    assert "9,900 parts beyond the first 100 not stored" in many.problems
    assert [p.file_name for p in many.attachments[:2]] == ["p0.txt", "p1.txt"]
    header = parse.parse(broken["1 MB header"], max_attachment=LIMIT)
    assert "subject cut from 1,048,576 characters" in header.problems
    assert header.text == "body\r\n" or header.text == "body\n"
    charset = parse.parse(broken["unknown charset"], max_attachment=LIMIT)
    assert "unknown charset 'x-klingon', read as UTF-8" in charset.problems
    assert charset.text is not None
    assert charset.text.startswith("qapla\ufffd")
    assert parse.parse(broken["no Message-ID"], max_attachment=LIMIT).message_id is None


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3_000))
def test_any_bytes_parse_without_raising(raw: bytes) -> None:
    parsed = parse.parse(raw, max_attachment=LIMIT)
    parsed.subject.encode("utf-8")
    parsed.from_address.encode("utf-8")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2_000), st.sampled_from(list(mailsamples.broken().values())))
def test_junk_spliced_into_a_message_parses_without_raising(junk: bytes, base: bytes) -> None:
    cut = len(junk) % max(1, len(base))
    parse.parse(base[:cut] + junk + base[cut:], max_attachment=LIMIT)


def test_a_postfix_bounce_names_the_original_and_the_failure() -> None:
    raw = mailsamples.postfix_dsn("news@example.org", "gone@example.com", "abc@example.org")
    report = parse.parse(raw, max_attachment=LIMIT).report
    assert report is not None
    assert (report.kind, report.original_message_id, report.recipient, report.status) == (
        BounceKind.HARD,
        "abc@example.org",
        "gone@example.com",
        "5.1.1",
    )
    assert report.diagnostic is not None
    assert "User unknown" in report.diagnostic


@pytest.mark.parametrize(
    ("status", "action", "kind"),
    [
        ("5.1.1", "failed", BounceKind.HARD),
        ("5.7.1", "failed", BounceKind.POLICY),
        ("4.2.2", "delayed", BounceKind.SOFT),
        ("4.4.1", "failed", BounceKind.SOFT),
    ],
)
def test_bounce_kinds_follow_the_status(status: str, action: str, kind: BounceKind) -> None:
    raw = mailsamples.postfix_dsn(
        "news@example.org", "x@example.com", "m@example.org", status=status, action=action
    )
    report = parse.parse(raw, max_attachment=LIMIT).report
    assert report is not None
    assert report.kind is kind
    assert report.status == status


def test_a_feedback_report_is_a_complaint() -> None:
    raw = mailsamples.complaint("news@example.org", "angry@example.com", "m1@example.org")
    report = parse.parse(raw, max_attachment=LIMIT).report
    assert report is not None
    assert (report.kind, report.original_message_id, report.recipient) == (
        BounceKind.COMPLAINT,
        "m1@example.org",
        "angry@example.com",
    )


def test_replies_and_auto_replies() -> None:
    reply = parse.parse(
        mailsamples.reply("Ann@Example.com", "news@example.org", "m1@example.org"),
        max_attachment=LIMIT,
    )
    assert (reply.from_address, reply.referenced, reply.auto_reply) == (
        "ann@example.com",
        ["m1@example.org"],
        False,
    )
    auto = parse.parse(
        mailsamples.reply("bob@example.com", "news@example.org", "m1@example.org", auto=True),
        max_attachment=LIMIT,
    )
    assert auto.auto_reply
    office = parse.parse(
        mailsamples.plain("c@example.com", "news@example.org", "Out of Office: back Monday"),
        max_attachment=LIMIT,
    )
    assert office.auto_reply


def test_an_attachment_over_the_limit_keeps_its_name_and_size_only() -> None:
    raw = mailsamples.with_attachment("a@example.com", "b@example.org", "big.pdf", b"x" * 5_000)
    parts = parse.parse(raw, max_attachment=LIMIT).attachments
    assert [(p.file_name, p.mime_type, p.size, p.data) for p in parts] == [
        ("big.pdf", "application/pdf", 5_000, None)
    ]
