"""Incoming mail through a real Dovecot: IMAP and POP3 syncs into Received emails, exactly once;
replies linked to our sent bulk emails; Postfix bounces and complaints acted on; approval; a
server that refuses the login backing off while the other mailboxes go on."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from bulkmail import dashboard, db, emails, mailboxes, models, organization
from bulkmail.inbound import bounces, monitor, profiles, store, sync
from bulkmail.status import ApprovalStatus, Direction, Status
from bulkmail.web import metrics
from tests import bulkops, dovecot, mailsamples
from tests.dovecot import Dovecot

KEY = Fernet.generate_key().decode()
OPTIONS = sync.Options(
    secret_key=KEY,
    idle=False,
    lease=dt.timedelta(seconds=60),
    interval=dt.timedelta(0),
    backoff_max=dt.timedelta(seconds=60),
    soft_limit=bounces.SoftLimit(count=2, window=dt.timedelta(days=7)),
)
QUEUE = "news@example.org"


def sync_due(engine: sa.Engine, worker: str = "w1") -> list[sync.Result]:
    """One round of an inbound worker: every due mailbox synced once."""
    return [
        sync.run(engine, profile_id, worker, OPTIONS, lambda: False)
        for profile_id in sync.claim(engine, worker, 100, OPTIONS.lease)
    ]


@pytest.fixture
def mailbox_user() -> str:
    """A login of this test's own on the suite's Dovecot."""
    return f"u{uuid.uuid4().hex[:10]}"


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "password"
    path.write_text(f"{dovecot.PASSWORD}\n")
    return str(path)


@pytest.fixture
def configure(
    engine: sa.Engine, dovecot_server: Dovecot, password_file: str
) -> Callable[..., None]:
    def configure(address: str, user: str, *, protocol: str = "imap", after: str = "leave") -> None:
        port = dovecot_server.imap_port if protocol == "imap" else dovecot_server.pop3_port
        with db.session_scope(engine) as session:
            profiles.set_profile(
                session,
                address,
                url=f"{protocol}://{user}@127.0.0.1:{port}",
                password_file=password_file,
                after_import=profiles.AfterImport(after),
                secret_key=KEY,
            )

    return configure


def incoming(engine: sa.Engine, address: str = QUEUE) -> list[dict[str, object]]:
    with db.session_scope(engine) as session:
        found = emails.list_emails(session, direction=Direction.INCOMING, mailbox=address)
        return [
            {**emails.as_dict(e), **monitor.email_links(session, e.id)} for e in reversed(found)
        ]


def test_imap_sync_links_replies_and_acts_on_bounces(
    engine: sa.Engine,
    dovecot_server: Dovecot,
    mailbox_user: str,
    configure: Callable[..., None],
) -> None:
    # A bulk operation of ours went out to four contacts.
    bulkops.seed(engine)
    with db.session_scope(engine) as session:
        mailboxes.add_queue(session, name="News", email=QUEUE)
        organization.update(session, max_upload_size=2_000)
    people = ["ann@example.com", "gone@example.com", "angry@example.com", "policy@example.com"]
    contact_ids = [bulkops.add_contacts(engine, 1, email=address)[0] for address in people]
    operation_id = bulkops.submit(engine)
    bulkops.expand(engine, operation_id)
    bulkops.complete(engine, bulkops.claim(engine), bulkops.SENT)
    sent = {e.regarding_contact_id: e for e in bulkops.emails_of(engine, operation_id)}
    ann, gone, angry, policy = (sent[c].message_id for c in contact_ids)
    pdf = b"%PDF-1.4 " + bytes(range(256)) * 4
    dovecot_server.append(
        mailbox_user,
        [
            mailsamples.reply("Ann@Example.com", QUEUE, ann),
            mailsamples.reply("ann@example.com", QUEUE, ann, auto=True),
            mailsamples.postfix_dsn(QUEUE, "gone@example.com", gone),
            mailsamples.complaint(QUEUE, "angry@example.com", angry),
            mailsamples.postfix_dsn(
                QUEUE,
                "policy@example.com",
                policy,
                status="5.7.1",
                diagnostic="smtp; 550 5.7.1 Service unavailable; client host blocked",
            ),
            mailsamples.with_attachment("x@example.com", QUEUE, "terms.pdf", pdf),
            mailsamples.with_attachment("y@example.com", QUEUE, "terms.pdf", pdf),
            mailsamples.with_attachment("z@example.com", QUEUE, "huge.pdf", pdf * 2),
            *mailsamples.broken().values(),
        ],
    )
    configure(QUEUE, mailbox_user)

    [result] = sync_due(engine)

    total = 8 + len(mailsamples.broken())
    assert (result.imported, result.error) == (total, None)
    rows = incoming(engine)
    assert len(rows) == total
    assert {r["status"] for r in rows} == {Status.RECEIVED.label}
    assert {r["mailbox"] for r in rows} == {QUEUE}
    reply, auto, hard, complaint, rejected, file1, file2, huge = rows[:8]
    assert (reply["kind"], reply["replies_to_email"], reply["replies_to_operation"]) == (
        "reply",
        sent[contact_ids[0]].id,
        operation_id,
    )
    assert reply["from"] == "ann@example.com"
    assert reply["regarding_contact_id"] == contact_ids[0]
    assert (auto["kind"], auto["replies_to_email"]) == ("auto-reply", sent[contact_ids[0]].id)
    assert [r["kind"] for r in (hard, complaint, rejected)] == ["bounce", "complaint", "bounce"]
    # Our emails show what came back.
    with db.session_scope(engine) as session:
        bounced = monitor.email_links(session, sent[contact_ids[1]].id)
        answered = monitor.email_links(session, sent[contact_ids[0]].id)
        suppressed = {
            c.email: (c.do_not_bulk_email, c.do_not_bulk_email_reason)
            for c in session.scalars(sa.select(models.Contact))
        }
    [bounce] = bounced["bounces"]  # type: ignore[misc]
    assert (bounce["kind"], bounce["status"], bounce["recipient"]) == (
        "hard",
        "5.1.1",
        "gone@example.com",
    )
    assert "User unknown" in bounce["diagnostic"]
    assert answered["replies"] == [reply["id"], auto["id"]]
    assert suppressed["gone@example.com"][0] is True
    assert suppressed["gone@example.com"][1].startswith(
        f"hard bounce of email {sent[contact_ids[1]].id}"
    )
    assert suppressed["angry@example.com"][0] is True
    assert suppressed["angry@example.com"][1].startswith("complaint about email")
    assert suppressed["policy@example.com"] == (False, None)  # 5.7.x: the sender's problem
    assert suppressed["ann@example.com"] == (False, None)
    operation = bulkops.operation(engine, operation_id)
    assert (operation.replies, operation.bounces, operation.complaints) == (1, 2, 1)
    # The same file twice is one blob; the one over the limit is named, without bytes.
    with db.session_scope(engine) as session:
        stored = session.execute(
            sa.select(models.Attachment.email_id, models.Attachment.attachment_id).where(
                models.Attachment.email_id.in_([file1["id"], file2["id"], huge["id"]]),
                models.Attachment.file_name == "terms.pdf",
            )
        ).all()
    assert len(stored) == 2
    assert len({blob for _, blob in stored}) == 1
    assert huge["omitted_attachments"] == [
        {"file_name": "huge.pdf", "mime_type": "application/pdf", "size": len(pdf) * 2}
    ]
    # Bad input was stored with what could be read, and the reason.
    broken = rows[8:]
    assert [r["subject"] for r in broken][:3] == ["broken", "many", "s" * 4_000]
    assert all(r["problems"] for r in broken)
    # Exactly once: a second sync imports nothing; the counters say what was imported.
    assert [r.imported for r in sync_due(engine)] == [0]
    assert len(incoming(engine)) == total
    with db.session_scope(engine) as session:
        [state] = monitor.mailboxes(session)
        counts = monitor.incoming_counts(session)
    assert (state["imported"], state["last_error"], state["failures"]) == (total, None, 0)
    assert state["last_success_at"] is not None
    assert counts["reply"] == 1
    assert counts["auto-reply"] == 1
    assert counts["bounce"] == 2
    assert counts["complaint"] == 1
    assert sum(counts.values()) == total
    # The dashboard and /metrics read the same state.
    with db.session_scope(engine) as session:
        listed = {m["email"]: m["incoming"] for m in dashboard.mailbox_list(session)}
        shown = dashboard.operation(session, operation_id, models.utcnow())
    assert listed[QUEUE]["imported"] == total
    assert listed[QUEUE]["last_success_at"] == state["last_success_at"]
    assert (shown["replies"], shown["bounces"], shown["complaints"]) == (1, 2, 1)
    assert shown["bounce_rate"] == 0.5
    assert shown["complaint_rate"] == 0.25
    scraped = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.Database(engine).collect()
        for sample in family.samples
    }
    assert scraped[("bulkmail_incoming_emails_total", (("kind", "bounce"),))] == 2
    assert scraped[("bulkmail_incoming_emails_total", (("kind", "reply"),))] == 1
    last = dt.datetime.fromisoformat(str(state["last_success_at"])).timestamp()
    assert scraped[
        ("bulkmail_incoming_last_success_timestamp_seconds", (("mailbox", QUEUE),))
    ] == pytest.approx(last)
    # The next bulk send skips the bounced and the complaining contact.
    second = bulkops.submit(engine)
    bulkops.expand(engine, second)
    again = bulkops.operation(engine, second)
    assert (again.created, again.skipped_opted_out) == (2, 2)
    assert {e.to_addresses[0] for e in bulkops.emails_of(engine, second)} == {
        "ann@example.com",
        "policy@example.com",
    }


def test_pop3_sync_deletes_after_import_and_never_twice(
    engine: sa.Engine,
    dovecot_server: Dovecot,
    mailbox_user: str,
    configure: Callable[..., None],
) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_user(session, name="Pat", email="pat@example.org")
    dovecot_server.append(
        mailbox_user,
        [mailsamples.plain("a@example.com", "pat@example.org", f"n{i}") for i in range(3)],
    )
    configure("pat@example.org", mailbox_user, protocol="pop3", after="delete")

    assert [r.imported for r in sync_due(engine)] == [3]
    assert dovecot_server.uids(mailbox_user) == {}
    dovecot_server.append(
        mailbox_user, [mailsamples.plain("b@example.com", "pat@example.org", "n3")]
    )
    assert [r.imported for r in sync_due(engine)] == [1]
    subjects = [r["subject"] for r in incoming(engine, "pat@example.org")]
    assert subjects == ["n0", "n1", "n2", "n3"]


def test_a_new_uidvalidity_resyncs_without_duplicates(
    engine: sa.Engine,
    dovecot_server: Dovecot,
    mailbox_user: str,
    configure: Callable[..., None],
) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_queue(session, name="News", email=QUEUE)
    dovecot_server.append(
        mailbox_user, [mailsamples.plain("a@example.com", QUEUE, f"m{i}") for i in range(3)]
    )
    configure(QUEUE, mailbox_user)
    assert [r.imported for r in sync_due(engine)] == [3]
    with db.session_scope(engine) as session:
        before = profiles.get(session, QUEUE).uidvalidity

    dovecot_server.reset_uidvalidity(mailbox_user)
    dovecot_server.append(mailbox_user, [mailsamples.plain("a@example.com", QUEUE, "m3")])

    assert [r.imported for r in sync_due(engine)] == [1]
    with db.session_scope(engine) as session:
        after = profiles.get(session, QUEUE).uidvalidity
        keys = session.execute(
            sa.select(models.IncomingEmail.uidvalidity, models.IncomingEmail.uid)
        ).all()
    assert after != before
    assert sorted(keys) == [(after, 1), (after, 2), (after, 3), (after, 4)]
    assert [r["subject"] for r in incoming(engine)] == ["m0", "m1", "m2", "m3"]


def test_approval_blocks_import_until_approved(
    engine: sa.Engine,
    dovecot_server: Dovecot,
    mailbox_user: str,
    configure: Callable[..., None],
) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_user(
            session, name="Ada", email="ada@example.org", privileges=["approve_email_address"]
        )
        mailboxes.add_queue(session, name="News", email=QUEUE)
        organization.update(session, require_approval_queue=True)
    dovecot_server.append(mailbox_user, [mailsamples.plain("a@example.com", QUEUE, "hello")])
    configure(QUEUE, mailbox_user)

    [blocked] = sync_due(engine)
    assert blocked.imported == 0
    assert incoming(engine) == []
    with db.session_scope(engine) as session:
        state = profiles.as_dict(profiles.get(session, QUEUE))
    assert str(state["not_synced_because"]).startswith(
        f"not synced: {QUEUE} is Empty and the organization requires approval for queue email"
    )

    with db.session_scope(engine) as session:
        mailboxes.set_approval(session, QUEUE, ApprovalStatus.APPROVED, actor="ada@example.org")
    assert [r.imported for r in sync_due(engine)] == [1]
    with db.session_scope(engine) as session:
        assert profiles.as_dict(profiles.get(session, QUEUE))["not_synced_because"] is None


def test_a_refused_login_backs_off_and_the_other_mailboxes_go_on(
    engine: sa.Engine,
    dovecot_server: Dovecot,
    mailbox_user: str,
    configure: Callable[..., None],
    tmp_path: Path,
) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_queue(session, name="News", email=QUEUE)
        mailboxes.add_user(session, name="Pat", email="pat@example.org")
    dovecot_server.append(mailbox_user, [mailsamples.plain("a@example.com", QUEUE, "hello")])
    configure(QUEUE, mailbox_user)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    with db.session_scope(engine) as session:
        profiles.set_profile(
            session,
            "pat@example.org",
            url=f"imap://{mailbox_user}@127.0.0.1:{dovecot_server.imap_port}",
            password_file=str(wrong),
            secret_key=KEY,
        )

    results = {r.mailbox: r for r in sync_due(engine)}

    assert results[QUEUE].imported == 1
    refused = results["pat@example.org"].error
    assert refused is not None
    assert refused.startswith(f"the imap server 127.0.0.1:{dovecot_server.imap_port} refused")
    assert "not-the-password" not in refused
    with db.session_scope(engine) as session:
        state = profiles.as_dict(profiles.get(session, "pat@example.org"))
        row = profiles.get(session, "pat@example.org")
    assert (state["failures"], state["last_error"]) == (1, refused)
    assert row.next_sync_at > models.utcnow()  # backed off: not due again at once
    assert "not-the-password" not in str(state)


def test_imap_idle_imports_new_mail_at_once(
    engine: sa.Engine,
    dovecot_server: Dovecot,
    mailbox_user: str,
    configure: Callable[..., None],
) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_queue(session, name="News", email=QUEUE)
    dovecot_server.append(mailbox_user, [mailsamples.plain("a@example.com", QUEUE, "first")])
    configure(QUEUE, mailbox_user)
    # Polling alone would look again in a minute; IDLE hears of the next message at once.
    idling = dataclasses.replace(OPTIONS, idle=True, interval=dt.timedelta(minutes=1))
    stop = threading.Event()
    [profile_id] = sync.claim(engine, "w1", 1, idling.lease)
    with futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(sync.run, engine, profile_id, "w1", idling, stop.is_set)
        _wait_for(lambda: len(incoming(engine)) == 1)
        time.sleep(0.3)  # in IDLE by now
        dovecot_server.append(mailbox_user, [mailsamples.plain("b@example.com", QUEUE, "second")])
        _wait_for(lambda: len(incoming(engine)) == 2)
        assert not running.done()  # still watching the mailbox
        stop.set()
        result = running.result(timeout=5)
    assert (result.imported, result.error) == (2, None)
    assert [r["subject"] for r in incoming(engine)] == ["first", "second"]
    with db.session_scope(engine) as session:
        row = profiles.get(session, QUEUE)
    assert row.lease_owner is None  # released
    assert row.next_sync_at <= models.utcnow()  # due again at once


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_tls_and_starttls_with_a_ca_file_and_an_untrusted_certificate_refused(
    engine: sa.Engine,
    dovecot_server: Dovecot,
    mailbox_user: str,
    password_file: str,
) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_queue(session, name="News", email=QUEUE)
        mailboxes.add_user(session, name="Pat", email="pat@example.org")
        mailboxes.add_user(session, name="Sam", email="sam@example.org")
    dovecot_server.append(mailbox_user, [mailsamples.plain("a@example.com", QUEUE, "secure")])
    ca = f"ca_file={dovecot_server.certificate}"
    urls = {
        QUEUE: f"imaps://{mailbox_user}@127.0.0.1:{dovecot_server.imaps_port}/INBOX?{ca}",
        "pat@example.org": f"pop3://{mailbox_user}@localhost:{dovecot_server.pop3_port}"
        f"?starttls=true&{ca}",
        "sam@example.org": f"imaps://{mailbox_user}@127.0.0.1:{dovecot_server.imaps_port}",
    }
    with db.session_scope(engine) as session:
        for address, url in urls.items():
            profiles.set_profile(
                session, address, url=url, password_file=password_file, secret_key=KEY
            )

    results = {r.mailbox: r for r in sync_due(engine)}

    assert (results[QUEUE].imported, results[QUEUE].error) == (1, None)
    assert (results["pat@example.org"].imported, results["pat@example.org"].error) == (1, None)
    assert results["sam@example.org"].error == (
        f"TLS with the imap server 127.0.0.1:{dovecot_server.imaps_port} failed: "
        "CERTIFICATE_VERIFY_FAILED"
    )


def test_a_50_mb_message_is_imported_with_its_attachment_by_size(
    engine: sa.Engine,
    dovecot_server: Dovecot,
    mailbox_user: str,
    configure: Callable[..., None],
) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_queue(session, name="News", email=QUEUE)
    video = bytes(range(256)) * (36 * 4096)  # 37.7 MB, 50 MB in base64
    big = mailsamples.with_attachment("a@example.com", QUEUE, "talk.mp4", video)
    assert len(big) > 50_000_000
    dovecot_server.append(
        mailbox_user, [big, mailsamples.plain("b@example.com", QUEUE, "after the big one")]
    )
    configure(QUEUE, mailbox_user)

    assert [(r.imported, r.error) for r in sync_due(engine)] == [(2, None)]

    first, second = incoming(engine)
    assert first["subject"] == "file talk.mp4"
    assert first["size"] >= len(big)  # as the server keeps it: its line breaks are CRLF
    assert first["omitted_attachments"] == [
        {"file_name": "talk.mp4", "mime_type": "application/pdf", "size": len(video)}
    ]
    assert second["subject"] == "after the big one"


def test_soft_bounces_stop_bulk_email_once_they_reach_the_limit_in_the_window(
    engine: sa.Engine,
) -> None:
    bulkops.seed(engine)
    [contact_id] = bulkops.add_contacts(engine, 1, email="full@example.com")
    operation_id = bulkops.submit(engine)
    bulkops.expand(engine, operation_id)
    bulkops.complete(engine, bulkops.claim(engine), bulkops.SENT)
    [sent] = bulkops.emails_of(engine, operation_id)
    target = store.Target(mailbox=QUEUE, max_attachment=1_000, soft_limit=OPTIONS.soft_limit)

    def bounce(uid: int, status: str) -> tuple[bool, str | None]:
        raw = mailsamples.postfix_dsn(
            QUEUE, "full@example.com", sent.message_id, status=status, action="delayed"
        )
        with db.session_scope(engine) as session:
            store.store(session, target, [(store.Key(uidvalidity=1, uid=uid), raw)])
        with db.session_scope(engine) as session:
            contact = session.get(models.Contact, contact_id)
            assert contact is not None
            return contact.do_not_bulk_email, contact.do_not_bulk_email_reason

    assert bounce(1, "4.2.2") == (False, None)  # one of the two the window allows
    suppressed, reason = bounce(2, "4.2.2")
    assert suppressed
    assert reason is not None
    assert reason.startswith(f"2 soft bounces within 7 days, the last of email {sent.id}")
    assert bulkops.operation(engine, operation_id).bounces == 2
