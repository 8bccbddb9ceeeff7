"""RFC 9457 problem details: every refusal of the HTTP API is one, with a ``detail`` that says
what was wrong and what to do."""

from __future__ import annotations

import http

from starlette.responses import JSONResponse

from bulkmail import errors

MEDIA_TYPE = "application/problem+json"

# The package's errors as HTTP means them.
_STATUS: list[tuple[type[errors.BulkmailError], int]] = [
    (errors.Unauthenticated, 401),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.InvalidInput, 422),
    (errors.Conflict, 409),
    (errors.BrokerUnavailable, 503),
    (errors.SchemaMissing, 503),
]


class Problem(Exception):
    """A refusal raised inside the API's handlers, answered as a problem document."""

    def __init__(self, status: int, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


def status_of(error: errors.BulkmailError) -> int:
    return next((code for kind, code in _STATUS if isinstance(error, kind)), 409)


def response(status: int, detail: str, **extra: object) -> JSONResponse:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": http.HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    headers = {"WWW-Authenticate": 'Bearer realm="bulkmail"'} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def from_error(error: errors.BulkmailError) -> JSONResponse:
    return response(status_of(error), str(error))
