"""The pages and their JSON: each view reads one function of ``bulkmail.dashboard`` and is
served twice, as HTML at its path and as JSON under ``/api/v1`` (the same data)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import orm
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bulkmail import compose, dashboard, db, errors, models
from bulkmail.web import security
from bulkmail.web.api import problems

Data = dict[str, Any]
View = Callable[[orm.Session, Request, dt.datetime], Data]


def _overview(session: orm.Session, request: Request, now: dt.datetime) -> Data:
    return dashboard.overview(session, now)


def _operations(session: orm.Session, request: Request, now: dt.datetime) -> Data:
    return {"operations": dashboard.operations(session, now, limit=100)}


def _operation(session: orm.Session, request: Request, now: dt.datetime) -> Data:
    return dashboard.operation(session, request.path_params["operation_id"], now)


def _emails(session: orm.Session, request: Request, now: dt.datetime) -> Data:
    given = request.query_params
    query = {k: given.get(k, "").strip() for k in ("address", "status", "operation", "message_id")}
    operation = query["operation"]
    if operation and not (operation.isascii() and operation.isdigit()):
        raise errors.InvalidInput(f"operation must be a bulk operation's id, not {operation!r}")
    found = dashboard.search_emails(
        session,
        address=query["address"] or None,
        status=query["status"] or None,
        operation_id=int(operation) if operation else None,
        message_id=query["message_id"] or None,
    )
    return {"query": query, "emails": found, "window": dashboard.SEARCH_WINDOW}


def _email(session: orm.Session, request: Request, now: dt.datetime) -> Data:
    return dashboard.email(session, request.path_params["email_id"])


def _workers(session: orm.Session, request: Request, now: dt.datetime) -> Data:
    return {"workers": dashboard.workers(session, now)}


def _mailboxes(session: orm.Session, request: Request, now: dt.datetime) -> Data:
    return {"mailboxes": dashboard.mailbox_list(session)}


def _providers(session: orm.Session, request: Request, now: dt.datetime) -> Data:
    return dashboard.providers(request.app.state.providers)


# path, template, view, whether the page refreshes itself
PAGES: list[tuple[str, str, View, bool]] = [
    ("/", "overview", _overview, True),
    ("/operations", "operations", _operations, True),
    ("/operations/{operation_id:int}", "operation", _operation, True),
    ("/emails", "emails", _emails, False),
    ("/emails/{email_id:int}", "email", _email, False),
    ("/workers", "workers", _workers, True),
    ("/mailboxes", "mailboxes", _mailboxes, False),
    ("/providers", "providers", _providers, True),
]


def status_of(error: errors.BulkmailError) -> int:
    return problems.status_of(error)


def read(request: Request, view: View) -> Data:
    with db.session_scope(request.app.state.engine) as session:
        return view(session, request, models.utcnow())


def render(request: Request, template: str, context: Data, status_code: int = 200) -> Response:
    access: security.Access = request.app.state.access
    base = {
        "csrf": security.csrf_token(request),
        "actions": not access.read_only,
        "actor": access.actor,
        "done": request.query_params.get("done"),
    }
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, f"{template}.html", {**base, **context}, status_code=status_code
    )


def refused(request: Request, message: str, status_code: int) -> Response:
    if request.url.path.startswith("/api/"):
        return problems.response(status_code, message)
    return render(request, "refused", {"message": message}, status_code)


def _page(template: str, view: View, live: bool) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        try:
            data = read(request, view)
        except errors.BulkmailError as error:
            return refused(request, str(error), status_of(error))
        return render(request, template, {"data": data, "live": live, "page": template})

    return endpoint


def _api(view: View) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(read(request, view))
        except errors.BulkmailError as error:
            return refused(request, str(error), status_of(error))

    return endpoint


def eml(request: Request) -> Response:
    """The exact bytes the SMTP server receives (or received) for the email."""
    email_id = request.path_params["email_id"]
    try:
        with db.session_scope(request.app.state.engine) as session:
            data = compose.message_bytes(session, email_id)
    except errors.BulkmailError as error:
        return refused(request, str(error), status_of(error))
    return Response(
        data,
        media_type="message/rfc822",
        headers={"content-disposition": f'attachment; filename="email-{email_id}.eml"'},
    )


routes: list[BaseRoute] = [
    *(Route(path, _page(t, view, live), name=t) for path, t, view, live in PAGES),
    *(
        Route("/api/v1" + (path if path != "/" else "/overview"), _api(view), name=f"api-{t}")
        for path, t, view, _ in PAGES
    ),
    Route("/emails/{email_id:int}.eml", eml, name="eml"),
    Route("/api/v1/emails/{email_id:int}.eml", eml, name="api-eml"),
]
