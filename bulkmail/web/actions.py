"""The dashboard's actions: POSTs carried out as the user ``BULKMAIL_WEB_ACTOR`` names.

Each one is refused, saying why, in read-only mode, without a valid CSRF token (browsers), and
without an actor; approving and rejecting also need the actor's ``approve_email_address``. A
browser is sent back to the page with what was done; the API gets JSON.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import orm
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from bulkmail import bulk, db, errors, mailboxes, models
from bulkmail.status import ApprovalStatus
from bulkmail.web import security, views
from bulkmail.web.api import calls

logger = logging.getLogger("bulkmail.web")

# How long a cancel waits for the pollers holding emails of the operation to withdraw them.
CANCEL_WAIT_SECONDS = 5.0

# An action gets the app's state (its engine, its unsubscribe links), the actor and the params.
Action = Callable[[State, str, dict[str, Any]], str]
# What an API call to an action may send (approving and rejecting name the mailbox).
API_FIELDS = {"address"}


def _acting_user(session: orm.Session, actor: str) -> models.SystemUser:
    found = mailboxes.find_optional(session, actor)
    if not isinstance(found, models.SystemUser):
        raise errors.PermissionDenied(
            f"BULKMAIL_WEB_ACTOR names {actor}, which is no system user; name a user's address"
        )
    return found


def cancel(state: State, actor: str, params: dict[str, Any]) -> str:
    operation_id = params["operation_id"]
    with db.session_scope(state.engine) as session:
        _acting_user(session, actor)
        bulk.cancel(session, operation_id)
    operation = bulk.settle_cancel(state.engine, operation_id, timeout=CANCEL_WAIT_SECONDS)
    return (
        f"bulk operation {operation_id} canceled: {operation.canceled} emails canceled, "
        f"{operation.sent} accepted by the SMTP server before the cancel"
    )


def retry_failed(state: State, actor: str, params: dict[str, Any]) -> str:
    operation_id = params["operation_id"]
    with db.session_scope(state.engine) as session:
        _acting_user(session, actor)
        resent = bulk.retry_failed(session, operation_id, links=state.unsubscribe)
    return f"bulk operation {operation_id}: {resent} failed emails sent again"


def _approval(decision: ApprovalStatus) -> Action:
    def act(state: State, actor: str, params: dict[str, Any]) -> str:
        address = str(params.get("address") or "").strip()
        if not address:
            raise errors.InvalidInput("name the mailbox: the form field address is empty")
        with db.session_scope(state.engine) as session:
            mailbox = mailboxes.set_approval(session, address, decision, actor=actor)
            return f"{mailbox.email} is {decision.label}"

    return act


# An action's form or JSON holds a CSRF token and at most an address.
MAX_FORM_BYTES = 16_384


async def _params(request: Request) -> dict[str, Any]:
    data = b"".join([chunk async for chunk in calls.within(request, MAX_FORM_BYTES)])
    body = data.decode("utf-8", errors="replace")
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            loaded = json.loads(body or "{}")
        except json.JSONDecodeError:
            loaded = None
        if not isinstance(loaded, dict):
            raise errors.InvalidInput("the request body is not a JSON object")
        return loaded
    return {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}


def _post(action: Action, back: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        access: security.Access = request.app.state.access
        try:
            given = await _params(request)
        except errors.InvalidInput as error:
            return views.refused(request, str(error), 400)
        except calls.TooLarge:
            return views.refused(
                request, f"the request body is larger than {MAX_FORM_BYTES:,} bytes", 413
            )
        params = {**given, **request.path_params}
        caller = request.scope.get(calls.CALLER)
        if isinstance(caller, calls.Caller):
            # An API token: the call acts as its user, with no ambient credential to forge.
            unknown = sorted(set(given) - API_FIELDS)
            if unknown:
                return views.refused(
                    request, f"unknown field {', '.join(unknown)}; known: address", 422
                )
            return await _carry_out(request, action, caller.email, params, back)
        if access.read_only:
            return views.refused(
                request, "the dashboard is read-only (BULKMAIL_WEB_READ_ONLY): no action", 403
            )
        if not security.csrf_valid(request, access, params.get(security.CSRF_FIELD)):
            return views.refused(
                request,
                "the form's CSRF token is missing or wrong: reload the page, try again",
                403,
            )
        if access.actor is None:
            return views.refused(
                request, "no user to act as: set BULKMAIL_WEB_ACTOR to a system user's address", 403
            )
        return await _carry_out(request, action, access.actor, params, back)

    return endpoint


async def _carry_out(
    request: Request, action: Action, actor: str, params: dict[str, Any], back: str
) -> Response:
    try:
        done = await run_in_threadpool(action, request.app.state, actor, params)
    except errors.BulkmailError as error:
        logger.info("refused for %s: %s", actor, error)
        return views.refused(request, str(error), views.status_of(error))
    logger.info("done for %s: %s", actor, done)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"done": done})
    target = back.format(**request.path_params)
    return RedirectResponse(f"{target}?done={urllib.parse.quote(done)}", status_code=303)


def login_page(request: Request) -> Response:
    return views.render(request, "login", {"next": request.query_params.get("next", "/")})


async def login(request: Request) -> Response:
    access: security.Access = request.app.state.access
    params = await _params(request)
    target = str(params.get("next") or "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    if access.token is None:
        return RedirectResponse(target, status_code=303)
    if not security.matches(str(params.get("token", "")), access.token):
        return views.render(request, "login", {"next": target, "wrong": True}, 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        security.SESSION_COOKIE,
        security.session_value(access.token),
        httponly=True,
        samesite="strict",
        path="/",
    )
    return response


_ACTIONS: list[tuple[str, Action, str]] = [
    ("/operations/{operation_id:int}/cancel", cancel, "/operations/{operation_id}"),
    ("/operations/{operation_id:int}/retry-failed", retry_failed, "/operations/{operation_id}"),
    ("/mailboxes/approve", _approval(ApprovalStatus.APPROVED), "/mailboxes"),
    ("/mailboxes/reject", _approval(ApprovalStatus.REJECTED), "/mailboxes"),
]

routes: list[BaseRoute] = [
    *(Route(path, _post(action, back), methods=["POST"]) for path, action, back in _ACTIONS),
    *(
        Route(f"/api/v1{path}", _post(action, back), methods=["POST"])
        for path, action, back in _ACTIONS
    ),
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
]
