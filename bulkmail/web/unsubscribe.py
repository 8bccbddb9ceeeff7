"""``/u/TOKEN``: the one-click unsubscribe link of every bulk email, open to anyone who has it.

POST (a mail provider's one-click, RFC 8058, or the confirm button) unsubscribes; GET only shows
the confirm button, since link scanners fetch every GET. The token is the credential: no cookie,
no login, no CSRF token.
"""

from __future__ import annotations

import email.parser
import email.policy
import urllib.parse

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bulkmail import db, errors, unsubscribe
from bulkmail.web.api import calls

PATH = "/u/"
# The one-click body is 26 bytes; a multipart one, a few hundred.
MAX_BODY_BYTES = 4096
_FIELD, _VALUE = unsubscribe.ONE_CLICK[1].split("=")


def _page(request: Request, status: int, message: str, *, confirm: bool = False) -> Response:
    response: Response = request.app.state.templates.TemplateResponse(
        request,
        "unsubscribe.html",
        {"message": message, "confirm": confirm, "field": _FIELD, "value": _VALUE},
        status_code=status,
    )
    # Nothing of this page may be kept or framed by others: the URL is the credential.
    response.headers["cache-control"] = "no-store"
    response.headers["referrer-policy"] = "no-referrer"
    response.headers["x-frame-options"] = "DENY"
    return response


def _email_id(request: Request) -> int | None:
    links: unsubscribe.Links | None = request.app.state.unsubscribe
    if links is None:
        return None
    return links.email_id(request.path_params["token"])


def _one_click(content_type: str, body: bytes) -> bool:
    """Whether the body says ``List-Unsubscribe=One-Click``, urlencoded or multipart."""
    if content_type.startswith("multipart/form-data"):
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", errors="replace")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            return False
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == _FIELD:
                payload = part.get_payload(decode=True)
                return isinstance(payload, bytes) and payload.strip() == _VALUE.encode()
        return False
    given = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
    return given.get(_FIELD) == [_VALUE]


def _apply(engine: sa.Engine, email_id: int) -> None:
    with db.session_scope(engine) as session:
        unsubscribe.apply(session, email_id)


async def show(request: Request) -> Response:
    if _email_id(request) is None:
        return _page(request, 404, "This unsubscribe link is not valid.")
    return _page(request, 200, "Stop receiving these emails?", confirm=True)


async def confirm(request: Request) -> Response:
    email_id = _email_id(request)
    if email_id is None:
        return _page(request, 404, "This unsubscribe link is not valid.")
    body = await calls.limited_body(request, MAX_BODY_BYTES)
    if body is None or not _one_click(request.headers.get("content-type", ""), body):
        return _page(request, 400, f"Send {_FIELD}={_VALUE} to unsubscribe.")
    try:
        await run_in_threadpool(_apply, request.app.state.engine, email_id)
    except errors.NotFound as error:
        return _page(request, 404, str(error).capitalize() + ".")
    return _page(request, 200, "You are unsubscribed: no more of these emails will reach you.")


routes: list[BaseRoute] = [
    Route(PATH + "{token}", show, methods=["GET"]),
    Route(PATH + "{token}", confirm, methods=["POST"]),
]
