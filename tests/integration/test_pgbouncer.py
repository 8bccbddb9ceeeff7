"""Pollers through PgBouncer: Debian's, one of the test's own in front of the test's PostgreSQL.

Session mode: each client connection has a server connection of its own, so LISTEN works and
the NOTIFY of each expansion batch wakes the pollers (their polling is a minute apart here).
Transaction mode: two server connections carry both pollers' ten client connections, which
works because bulkmail uses no server-side prepared statements and no session settings; a LISTEN
hears nothing there, so the pollers find the emails by polling. Either way every email is Sent,
and received, exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bulkmail import db
from bulkmail.status import Status
from tests import bulkops, mailserver, pgbouncer, pollers, servers

EMAILS = 600
FAST = ["--batch", "50", "--completion-batch", "20", "--reap-interval", "0.3"]


def _listening_backends(engine: sa.Engine) -> int:
    """Server sessions of this database whose last statement was the pollers' LISTEN."""
    with engine.connect() as connection:
        count = connection.scalar(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
            )
        )
    return int(count or 0)


def _pollers_up(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        count = connection.scalar(sa.text("SELECT count(*) FROM worker_heartbeats"))
    return int(count or 0)


@pytest.mark.parametrize(
    ("mode", "server_connections", "poll_interval"),
    [("session", 20, "60"), ("transaction", 2, "0.3")],
)
def test_pollers_through_pgbouncer_send_every_email_once(
    mode: str,
    server_connections: int,
    poll_interval: str,
    postgres: servers.Postgres,
    pg_url: str,
    tmp_path: Path,
) -> None:
    engine = db.make_engine(pg_url)  # the test's own connections go to PostgreSQL directly
    database = sa.engine.make_url(pg_url).database
    assert database is not None
    ledger = mailserver.Ledger()
    try:
        bulkops.seed(engine)
        bulkops.add_contacts(engine, EMAILS)
        with (
            pgbouncer.own_pgbouncer(
                postgres.admin_url, mode=mode, server_connections=server_connections
            ) as bouncer,
            mailserver.serving(ledger) as port,
            pollers.started(bouncer.url(database), tmp_path) as start,
        ):
            smtp_url = f"smtp://127.0.0.1:{port}"
            running = [start(smtp_url, *FAST, "--poll-interval", poll_interval) for _ in range(2)]
            pollers.wait_until(lambda: _pollers_up(engine) == 2, 30, "pollers up", *running)
            if mode == "session":
                # Both listen: from now on only a NOTIFY wakes them within the minute.
                pollers.wait_until(
                    lambda: _listening_backends(engine) == 2, 30, "pollers listening", *running
                )
            operation = bulkops.submit(engine)
            bulkops.expand(engine, operation, batch_size=100)  # a NOTIFY per batch
            pollers.wait_until(
                lambda: mailserver.statuses(engine) == {Status.SENT: EMAILS},
                30,
                f"every email Sent through PgBouncer in {mode} mode",
                *running,
            )
            assert [poller.stop(10) for poller in running] == [0, 0]
        logs = "\n".join(poller.log() for poller in running)
        assert "database unavailable" not in logs, logs
        bulkops.assert_counters_match_the_emails(engine, operation)
        received = ledger.received()
        sent = {row.message_id for row in mailserver.emails(engine)}
        assert set(received) == sent
        assert set(received.values()) == {1}
    finally:
        engine.dispose()
