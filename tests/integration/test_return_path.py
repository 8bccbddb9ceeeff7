"""BackgroundSendEmail hands external senders the same envelope sender a poller uses: the
email's own return path when a bounce domain is set, the From address otherwise."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from bulkmail import handout, outbox, settings, tagged
from tests import mailserver


def _claim(engine: sa.Engine, return_path: tagged.Tagged | None) -> list[handout.Handout]:
    return handout.claim(
        engine,
        worker="external",
        limit=10,
        lease=dt.timedelta(minutes=5),
        policy=outbox.RetryPolicy(),
        return_path=return_path,
    )


def test_handed_out_emails_carry_their_return_path(engine: sa.Engine) -> None:
    sender = mailserver.add_sender(engine)
    ids = mailserver.insert_pending(engine, sender, 2)
    paths = tagged.return_paths(
        settings.Settings(secret_key="k" * 44, bounce_domain="bounces.example.org")
    )
    assert paths is not None
    handed = _claim(engine, paths)
    assert {h.id: h.mail_from for h in handed} == {i: paths.address(i) for i in ids}
    assert all(h.mail_from.startswith(f"bounces+{h.id}-") for h in handed)
    later = mailserver.insert_pending(engine, sender, 1)
    assert [(h.id, h.mail_from) for h in _claim(engine, None)] == [(later[0], mailserver.SENDER)]
