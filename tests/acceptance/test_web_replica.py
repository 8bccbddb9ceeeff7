"""A read-only ``bulkmail web`` on a database that takes no writes, as a PostgreSQL replica
(hot standby) is: the dashboard, its JSON and /metrics only read, so they all answer (README,
Scaling). Every transaction is read-only there (``default_transaction_read_only``), which
refuses a write as a standby does. It also holds only the connections
``BULKMAIL_WEB_DB_CONNECTIONS`` gives it."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from bulkmail import db
from tests import bulkops, servers, webserver


def test_a_read_only_dashboard_serves_every_page_from_a_read_only_database(
    postgres: servers.Postgres, pg_url: str, tmp_path: Path
) -> None:
    engine = db.make_engine(pg_url)
    try:
        bulkops.seed(engine)
        bulkops.add_contacts(engine, 30)
        operation = bulkops.submit(engine)
        bulkops.expand(engine, operation)
        email = bulkops.emails_of(engine, operation)[0]
    finally:
        engine.dispose()
    database = sa.engine.make_url(pg_url).database
    postgres.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
    with webserver.started(pg_url, tmp_path) as start:
        web = start(BULKMAIL_WEB_READ_ONLY="true", BULKMAIL_WEB_DB_CONNECTIONS="2")
        pages = [
            "/",
            "/operations",
            f"/operations/{operation}",
            "/emails",
            f"/emails?operation={operation}",
            f"/emails?address={email.to_addresses[0]}",
            f"/emails/{email.id}",
            f"/emails/{email.id}.eml",
            "/workers",
            "/mailboxes",
            "/metrics",
        ]
        for page in pages:
            status, _, body = web.request(page)
            assert status == 200, (page, body[-500:])
        assert web.json("/api/v1/overview")["emails"]["Pending Send"] == 30
        detail = web.json(f"/api/v1/operations/{operation}")
        assert (detail["created"], detail["pending"]) == (30, 30)
        status, _, body = web.request(f"/emails/{email.id}.eml")
        assert email.message_id.encode() in body
