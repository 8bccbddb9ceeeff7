"""The ASGI app: settings and engine on its state, the routers of each module, the gate.

``create_app`` takes more routes (``extra_routes``): the HTTP API adds its routers that way.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from bulkmail import db, errors, handout, outbox, settings, signing, tagged, throttle, tokens
from bulkmail import unsubscribe as unsubscribe_links
from bulkmail.web import actions, api, metrics, security, unsubscribe, views
from bulkmail.web.api import calls, problems

HERE = Path(__file__).parent
# Reachable without the dashboard's token: the login page, the static files, /metrics, which
# checks its own, and the unsubscribe links, whose token is their credential.
OPEN_PATHS = ("/login", "/static/", "/metrics", unsubscribe.PATH)
# Longer query strings are refused (414) before any handler parses them.
MAX_QUERY_BYTES = 8192
# Ids are PostgreSQL bigints: a larger number in a path names no record.
MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"\d+")


def version() -> str:
    return importlib.metadata.version("bulkmail")


def templates() -> Jinja2Templates:
    found = Jinja2Templates(directory=HERE / "templates")
    found.env.globals["version"] = version()
    return found


class Gate(BaseHTTPMiddleware):
    """Every request but ``OPEN_PATHS`` is authenticated; browsers get a CSRF cookie.

    Under ``/api/`` a user's API token (``tokens.PREFIX``) authenticates too: the request then
    acts as that user (``calls.CALLER``), and a token that is wrong, revoked or expired is
    refused whatever else would let the request in.
    """

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        access: security.Access = request.app.state.access
        path = request.url.path
        if access.token is None and not security.is_loopback(request.url.hostname or ""):
            # Without a token only a page of this machine may ask: a web page elsewhere that
            # points its own name at 127.0.0.1 (DNS rebinding) is refused.
            return PlainTextResponse(
                "this dashboard has no token and answers only to 127.0.0.1 or localhost\n",
                status_code=403,
            )
        if len(request.scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            return problems.response(
                414, f"the query string is longer than {MAX_QUERY_BYTES:,} bytes; shorten it"
            )
        if "\x00" in path or b"%00" in request.scope.get("query_string", b""):
            # PostgreSQL stores no NUL: no record could match, and no text may hold one.
            return problems.response(400, "the URL holds a NUL character (%00); remove it")
        if any(int(run) > MAX_ID for run in _DIGITS.findall(path)):
            # No record has such an id (PostgreSQL's bigint ends before it).
            return problems.response(404, "no record has an id that large")
        secret = security.bearer(request)
        if path.startswith("/api/") and tokens.is_api_token(secret):
            assert secret is not None
            try:
                request.scope[calls.CALLER] = await run_in_threadpool(
                    calls.authenticate, request.app.state.engine, secret
                )
            except errors.Unauthenticated as error:
                return problems.response(401, str(error))
            return await call_next(request)
        if not path.startswith(OPEN_PATHS) and not security.authenticated(request, access):
            if path.startswith("/api/"):
                return problems.response(
                    401, "authentication required: send Authorization: Bearer TOKEN"
                )
            return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
        response = await call_next(request)
        new = request.scope.get(security.NEW_CSRF)
        if new is not None:
            response.set_cookie(
                security.CSRF_COOKIE, new, httponly=True, samesite="strict", path="/"
            )
        return response


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (no such route, a method it does not take): a problem
    document under ``/api/``, its plain text elsewhere."""
    assert isinstance(error, HTTPException)
    if request.url.path.startswith("/api/"):
        response: Response = problems.response(
            error.status_code, f"{error.detail}: see /api/v1/docs for the API's endpoints"
        )
    else:
        response = PlainTextResponse(str(error.detail), status_code=error.status_code)
    for name, value in (error.headers or {}).items():
        response.headers[name] = value
    if error.status_code == 405:
        # Starlette names the methods of the first route of the path; a path can have several.
        allowed = {
            method
            for route in request.app.router.routes
            if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
            for method in route.methods or ()
        }
        response.headers["allow"] = ", ".join(sorted(allowed))
    return response


def create_app(
    config: settings.Settings,
    *,
    engine: sa.Engine | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    app = Starlette(
        routes=[
            *views.routes,
            *actions.routes,
            *metrics.routes,
            *unsubscribe.routes,
            *extra_routes,
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(Gate)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.engine = engine or db.make_engine(db.database_url(config))
    app.state.access = security.Access.from_settings(config)
    app.state.policy = outbox.RetryPolicy.from_settings(config)
    app.state.reaper = handout.Reaper(config.reap_interval)
    app.state.message_id_domain = config.message_id_domain or None
    app.state.unsubscribe = unsubscribe_links.Links.from_settings(config)
    app.state.return_path = tagged.return_paths(config)
    app.state.providers = throttle.Watch.from_settings(config)
    # BackgroundSendEmail signs as the pollers do; each key file is read once per process.
    app.state.keyring = signing.Keyring()
    # SendBulkMail's doorbell; ``bulkmail web`` gives Celery's. Without one, the reconciler
    # queues new operations.
    app.state.enqueue_expansion = lambda operation_id: None
    app.state.openapi = api.document()
    app.state.templates = templates()
    return app
