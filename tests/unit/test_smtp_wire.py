"""The SMTP client without sockets: replies, commands, message data, outcomes."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkmail import errors, smtp
from bulkmail.smtp import outcomes
from bulkmail.smtp import wire as protocol
from bulkmail.smtp.outcomes import OutcomeKind
from bulkmail.smtp.wire import Reply

BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def parse(*chunks: bytes) -> list[Reply]:
    parser = protocol.ReplyParser()
    for chunk in chunks:
        parser.feed(chunk)
    return list(parser.replies)


# --- replies ----------------------------------------------------------------------------------


def test_single_line_reply_with_enhanced_code() -> None:
    assert parse(b"550 5.1.1 user unknown\r\n") == [
        Reply(code=550, enhanced="5.1.1", text="user unknown")
    ]


def test_enhanced_code_without_text_and_code_alone() -> None:
    assert parse(b"550 5.1.1\r\n250\r\n250 \r\n") == [
        Reply(code=550, enhanced="5.1.1", text=""),
        Reply(code=250, text=""),
        Reply(code=250, text=""),
    ]


def test_enhanced_code_must_match_the_reply_class() -> None:
    assert parse(b"250 5.1.1 odd\r\n") == [Reply(code=250, text="5.1.1 odd")]
    assert parse(b"250 2.1.5x\r\n") == [Reply(code=250, text="2.1.5x")]


def test_multi_line_reply_joins_lines_and_strips_repeated_enhanced_codes() -> None:
    [reply] = parse(b"550-5.7.1 first line\r\n550-5.7.1 second line\r\n550 5.7.1 third\r\n")
    assert reply == Reply(code=550, enhanced="5.7.1", text="first line\nsecond line\nthird")
    assert str(reply) == "550 5.7.1 first line\nsecond line\nthird"


def test_non_ascii_text_is_decoded_and_invalid_bytes_replaced() -> None:
    [utf8, broken] = parse("451 4.3.0 Überlastet, später\r\n".encode(), b"554 bad \xff\xfe\r\n")
    assert utf8.text == "Überlastet, später"
    assert broken.text == "bad \ufffd\ufffd"


def test_nul_in_a_reply_is_replaced_so_the_reply_can_be_stored() -> None:
    [single, multi] = parse(b"250 2.0.0 queued\0as X\r\n", b"550-a\0\r\n550 b\r\n")
    assert single.text == "queued\ufffdas X"
    assert multi.text == "a\ufffd\nb"


def test_bare_lf_line_ends_are_accepted() -> None:
    assert parse(b"250-a\n250 b\n") == [Reply(code=250, text="a\nb")]


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_replies_parse_the_same_however_the_bytes_are_split(cuts: list[int]) -> None:
    wire = b"220 ready\r\n250-smtp-sink\r\n250-PIPELINING\r\n250 \r\n550 5.1.1 user unknown\r\n"
    points = sorted({min(cut, len(wire)) for cut in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    assert parse(*chunks) == parse(wire)


def test_a_repeated_line_ends_a_multi_line_reply_all_the_same() -> None:
    assert parse(b"250 ok\r\n250-first\r\n250 ok\r\n250 ok\r\n") == [
        Reply(code=250, text="ok"),
        Reply(code=250, text="first\nok"),
        Reply(code=250, text="ok"),
    ]


def test_partial_reply_waits_for_its_end() -> None:
    parser = protocol.ReplyParser()
    parser.feed(b"250-first\r\n250 sec")
    assert not parser.replies
    assert not parser.idle
    parser.feed(b"ond\r\n")
    assert list(parser.replies) == [Reply(code=250, text="first\nsecond")]
    assert parser.idle


@pytest.mark.parametrize(
    "wire", [b"hello\r\n", b"25\r\n", b"250x ok\r\n", b"650 nope\r\n", b"+OK pop3\r\n"]
)
def test_non_smtp_lines_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(smtp.SMTPProtocolError):
        parse(wire)


def test_endless_reply_line_is_a_protocol_error() -> None:
    with pytest.raises(smtp.SMTPProtocolError, match="over"):
        parse(b"250 " + b"x" * (protocol.MAX_REPLY_LINE + 1))


# --- EHLO and commands ------------------------------------------------------------------------


def test_parse_ehlo_reads_keywords() -> None:
    [reply] = parse(
        b"250-mail.example.org hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
        b"250-8BITMIME\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n250-AUTH=LOGIN\r\n"
        b"250-auth plain login\r\n250 \r\n"
    )
    assert protocol.parse_ehlo(reply) == protocol.Extensions(
        pipelining=True,
        starttls=True,
        eightbitmime=True,
        smtputf8=True,
        size=10_240_000,
        auth=frozenset({"PLAIN", "LOGIN"}),
    )


def test_parse_ehlo_treats_size_zero_as_no_limit_and_ignores_the_server_name() -> None:
    [reply] = parse(b"250-PIPELINING\r\n250 SIZE 0\r\n")
    assert protocol.parse_ehlo(reply) == protocol.Extensions()


def test_mail_from_carries_the_parameters_the_message_needs() -> None:
    assert protocol.mail_from("a@example.org") == b"MAIL FROM:<a@example.org>\r\n"
    assert protocol.mail_from("") == b"MAIL FROM:<>\r\n"
    assert (
        protocol.mail_from("ü@example.org", size=2048, eightbit=True, smtputf8=True)
        == "MAIL FROM:<ü@example.org> SIZE=2048 BODY=8BITMIME SMTPUTF8\r\n".encode()
    )
    assert protocol.rcpt_to("b@example.org") == b"RCPT TO:<b@example.org>\r\n"


def test_auth_lines() -> None:
    line = protocol.auth_plain("user", "pässword")
    assert line.startswith(b"AUTH PLAIN ")
    assert line.endswith(b"\r\n")
    assert base64.b64decode(line[11:-2]) == "\0user\0pässword".encode()
    assert protocol.auth_login_steps("user", "pw") == [
        b"AUTH LOGIN\r\n",
        b"dXNlcg==\r\n",
        b"cHc=\r\n",
    ]


@pytest.mark.parametrize(
    "address", ["a@b.org\r\nRCPT TO:<x@y.org>", "a@b.org>", "<a@b.org", "a b@c.org", "a@b\x00"]
)
def test_addresses_that_would_change_the_command_are_refused(address: str) -> None:
    with pytest.raises(errors.InvalidInput, match="recipient"):
        protocol.check_address(address, role="recipient")


def test_null_sender_is_allowed_but_no_empty_recipient() -> None:
    assert protocol.check_address("", role="sender") == ""
    with pytest.raises(errors.InvalidInput, match="empty"):
        protocol.check_address("", role="recipient")


def test_helo_name_is_checked() -> None:
    assert protocol.ehlo("[127.0.0.1]") == b"EHLO [127.0.0.1]\r\n"
    assert protocol.helo("bücher.example") == b"HELO xn--bcher-kva.example\r\n"
    with pytest.raises(smtp.InvalidSmtpSettings):
        protocol.ehlo("evil\r\nMAIL FROM:<x>")


# --- message data -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\nb", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
        (b"a\r\r\nb\n\rc", b"a\r\n\r\nb\r\n\r\nc\r\n.\r\n"),
        (b".starts\r\n.\r\nmid\r\n..two\r\n", b"..starts\r\n..\r\nmid\r\n...two\r\n.\r\n"),
        (b"x\n.\n", b"x\r\n..\r\n.\r\n"),
        (b"", b".\r\n"),
    ],
)
def test_prepare_data_normalises_line_ends_and_stuffs_dots(message: bytes, wire: bytes) -> None:
    assert protocol.prepare_data(message) == wire


@given(st.binary(max_size=300) | st.text(alphabet="ab.\r\n", max_size=60).map(str.encode))
def test_prepared_data_has_no_bare_cr_or_lf_and_unstuffs_to_the_message(message: bytes) -> None:
    wire = protocol.prepare_data(message)
    assert not BARE_CR_OR_LF.search(wire)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[: -len(b".\r\n")]
    assert not re.search(rb"(?:^|\r\n)\.(?!\.)", body), "every line starting with . is stuffed"
    # What a server stores: the lines with one leading dot removed.
    stored = re.sub(rb"(^|\r\n)\.", rb"\1", body)
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert stored == expected


@given(st.text(alphabet="ab.\r\n", max_size=60).map(str.encode))
def test_prepared_data_of_a_crlf_message_is_the_same_without_the_checks(message: bytes) -> None:
    normalised = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    assert protocol.prepare_data(normalised, crlf=True) == protocol.prepare_data(message)


def test_needs_smtputf8_for_non_ascii_addresses_or_headers_only() -> None:
    ascii_head = "Subject: hi\r\n\r\nGrüße\r\n".encode()
    utf8_head = "Subject: Grüße\r\n\r\nbody\r\n".encode()
    assert not protocol.needs_smtputf8("a@example.org", ["b@example.org"], ascii_head)
    assert protocol.needs_smtputf8("a@example.org", ["b@example.org"], utf8_head)
    assert protocol.needs_smtputf8("a@example.org", ["jörg@example.org"], b"x\r\n")
    assert protocol.needs_smtputf8("ä@example.org", ["b@example.org"], b"x\r\n")


# --- outcomes ---------------------------------------------------------------------------------

OK = Reply(code=250, enhanced="2.0.0", text="ok")
GO = Reply(code=354, text="go ahead")
UNKNOWN = Reply(code=550, enhanced="5.1.1", text="user unknown")
BUSY = Reply(code=450, enhanced="4.2.1", text="mailbox busy")


def outcome(
    mail: Reply = OK,
    rcpts: tuple[Reply, ...] = (OK,),
    data: Reply | None = GO,
    final: Reply | None = OK,
) -> outcomes.Outcome[int]:
    named = [(f"r{n}@example.org", reply) for n, reply in enumerate(rcpts)]
    return outcomes.transaction_outcome(7, mail=mail, rcpts=named, data=data, final=final)


def test_delivered_keeps_the_final_reply() -> None:
    result = outcome()
    assert (result.key, result.kind, result.reply) == (7, OutcomeKind.DELIVERED, OK)
    assert result.detail == "250 2.0.0 ok"


def test_partly_refused_recipients_still_deliver_and_are_listed() -> None:
    result = outcome(rcpts=(UNKNOWN, OK, BUSY))
    assert result.kind is OutcomeKind.DELIVERED
    assert result.refused == (("r0@example.org", UNKNOWN), ("r2@example.org", BUSY))


def test_all_recipients_refused_permanently_is_permanent() -> None:
    result = outcome(rcpts=(UNKNOWN, UNKNOWN), data=Reply(code=503, text="need RCPT"))
    assert (result.kind, result.reply) == (OutcomeKind.PERMANENT, UNKNOWN)
    assert result.detail == "550 5.1.1 user unknown"


def test_any_temporary_refusal_makes_an_undelivered_message_temporary() -> None:
    result = outcome(rcpts=(UNKNOWN, BUSY), data=None, final=None)
    assert (result.kind, result.reply) == (OutcomeKind.TEMPORARY, BUSY)


@pytest.mark.parametrize(
    ("stage", "reply", "kind"),
    [
        ("mail", Reply(code=451, text="try later"), OutcomeKind.TEMPORARY),
        ("mail", Reply(code=553, text="bad sender"), OutcomeKind.PERMANENT),
        ("data", Reply(code=554, text="no"), OutcomeKind.PERMANENT),
        ("data", Reply(code=451, text="later"), OutcomeKind.TEMPORARY),
        ("final", Reply(code=552, enhanced="5.3.4", text="too big"), OutcomeKind.PERMANENT),
        ("final", Reply(code=452, text="full"), OutcomeKind.TEMPORARY),
    ],
)
def test_the_refusing_reply_decides(stage: str, reply: Reply, kind: OutcomeKind) -> None:
    replies: dict[str, Reply | None] = {"mail": OK, "data": GO, "final": OK, stage: reply}
    if stage == "data":
        replies["final"] = None
    result = outcomes.transaction_outcome(
        1,
        mail=replies["mail"] or OK,
        rcpts=[("a@example.org", OK)],
        data=replies["data"],
        final=replies["final"],
    )
    assert (result.kind, result.reply, result.detail) == (kind, reply, str(reply))
