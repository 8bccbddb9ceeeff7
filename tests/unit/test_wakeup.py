"""The LISTEN connection of the pollers reaches the database their engine reaches."""

from __future__ import annotations

from pathlib import Path

import psycopg

from bulkmail import embedded, wakeup


def test_it_reaches_an_embedded_server_whose_folder_holds_a_space() -> None:
    folder = Path("/home/ann/My Projects+Mail/.bulkmail/postgres")
    server = embedded.Server(data=folder, pid=1, port=5432, socket_dir=folder, host=None)
    info = wakeup.conninfo(server.url())
    assert info is not None
    assert psycopg.conninfo.conninfo_to_dict(info) == {
        "host": str(folder),
        "user": "postgres",
        "dbname": "bulkmail",
    }


def test_it_keeps_the_password_port_and_options_of_the_url() -> None:
    info = wakeup.conninfo(
        "postgresql+psycopg://bulk:p%40ss%3Aw%20rd@db.internal:6432/mail?sslmode=require"
    )
    assert info is not None
    assert psycopg.conninfo.conninfo_to_dict(info) == {
        "host": "db.internal",
        "port": "6432",
        "user": "bulk",
        "password": "p@ss:w rd",
        "dbname": "mail",
        "sslmode": "require",
    }
