"""``bulkmail web``: the monitoring dashboard, served by uvicorn."""

from __future__ import annotations

import click

from bulkmail import db
from cli.app import App, pass_app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@pass_app
def web(app: App, host: str, port: int) -> None:
    """The monitoring dashboard: pages, their JSON under /api/v1, and /metrics.

    Beyond loopback it needs BULKMAIL_WEB_TOKEN.
    """
    import uvicorn

    from bulkmail.web import api, security
    from bulkmail.web import app as web_app

    security.check_bind(host, security.Access.from_settings(app.settings))
    from workers import tasks

    # Requests run in threads, each using one connection at a time; past the budget a request
    # waits for a connection (up to 30 s) rather than opening one more.
    engine = db.make_engine(
        db.database_url(app.settings),
        pool_size=app.settings.web_db_connections,
        max_overflow=0,
    )
    asgi = web_app.create_app(app.settings, engine=engine, extra_routes=api.routes)
    asgi.state.enqueue_expansion = tasks.enqueue_expansion
    # Room for a long query string in the request line: the app refuses it with a problem
    # document (414) rather than h11 with a bare 400.
    uvicorn.run(
        asgi, host=host, port=port, log_level="info", h11_max_incomplete_event_size=256 * 1024
    )
