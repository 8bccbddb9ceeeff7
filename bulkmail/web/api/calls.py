"""What every API call shares: who calls (the user of the API token the gate checked), the
JSON body read within a size limit into a strict model, and refusals as problem documents."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import pydantic
import sqlalchemy as sa
from sqlalchemy import orm
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bulkmail import db, errors, mailboxes, tokens
from bulkmail.web.api import problems

# Where the gate leaves the caller of a request made with an API token.
CALLER = "bulkmail.api_caller"
# JSON request bodies larger than this are refused (413) while they are read.
MAX_JSON_BYTES = 4 * 1024 * 1024

# A text field: one line, no NUL (nothing a header or a log line could be split by).
Line = Annotated[str, pydantic.StringConstraints(pattern=r"^[^\r\n\x00]*$", max_length=2000)]


def _integral(value: object) -> object:
    # JSON Schema counts 178.0 as an integer; a string or 178.5 stays refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer field: JSON numbers without a fraction, nothing else.
Int = Annotated[int, pydantic.BeforeValidator(_integral)]

M = TypeVar("M", bound=pydantic.BaseModel)
T = TypeVar("T")


class Strict(pydantic.BaseModel):
    """A request body: unknown fields are refused, types are not coerced, and no text holds a
    NUL (PostgreSQL stores none, in text or in JSON)."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if _holds_nul(data):
            raise ValueError("a text holds a NUL character (\\u0000); remove it")
        return data


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


@dataclass(frozen=True, kw_only=True)
class Caller:
    token_id: int
    user_id: int
    email: str
    privileges: frozenset[str]

    @property
    def worker(self) -> str:
        """How claims and delivery attempts name this caller."""
        return f"api:{self.email}#{self.token_id}"

    def require(self, privilege: str, needed_for: str) -> None:
        mailboxes.require(self.email, self.privileges, privilege, needed_for)


def authenticate(engine: sa.Engine, secret: str) -> Caller:
    with db.session_scope(engine) as session:
        token, user = tokens.authenticate(session, secret)
        return Caller(
            token_id=token.id,
            user_id=user.id,
            email=user.email,
            privileges=frozenset(user.privileges),
        )


def caller(request: Request) -> Caller:
    found = request.scope.get(CALLER)
    if not isinstance(found, Caller):
        raise problems.Problem(
            401,
            "this endpoint acts as a user: send Authorization: Bearer with an API token "
            "(`bulkmail users token create --user ADDRESS`)",
        )
    return found


class TooLarge(Exception):
    """A request body declared or read past its limit."""


async def within(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body's chunks, raising ``TooLarge`` as soon as it is declared or read past
    ``limit`` bytes: nothing past the limit is read."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        yield chunk


async def limited_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is declared or read past ``limit`` bytes."""
    try:
        return b"".join([chunk async for chunk in within(request, limit)])
    except TooLarge:
        return None


async def body(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``: 413 past ``MAX_JSON_BYTES``, 400 when it is no
    JSON, 422 naming the first wrong field."""
    if not request.headers.get("content-type", "").split(";")[0].strip().endswith("json"):
        raise problems.Problem(415, "send the body as JSON with Content-Type: application/json")
    data = await limited_body(request, MAX_JSON_BYTES)
    if data is None:
        raise _too_large()
    try:
        return model.model_validate_json(data)
    except pydantic.ValidationError as error:
        first = error.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise problems.Problem(
                400, f"the body is not valid JSON ({first['msg']}); send a JSON object"
            ) from None
        raise problems.Problem(
            422, f"the body does not fit: {_first(error)}", errors=_listed(error)
        ) from None


def _too_large() -> problems.Problem:
    return problems.Problem(
        413, f"the body is larger than {MAX_JSON_BYTES:,} bytes; send fewer items per request"
    )


def _where(location: tuple[int | str, ...]) -> str:
    return ".".join(map(str, location)) or "the body"


def _first(error: pydantic.ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    return f"{_where(first['loc'])}: {first['msg']}"


def _listed(error: pydantic.ValidationError) -> list[dict[str, str]]:
    return [
        {"field": _where(e["loc"]), "problem": e["msg"]}
        for e in error.errors(include_url=False, include_input=False)
    ][:20]


Handler = Callable[[Request], Awaitable[Response]]


def api(handler: Handler) -> Handler:
    """Refusals of ``handler`` (``Problem``, bulkmail's errors) as problem documents."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except problems.Problem as problem:
            return problems.response(problem.status, problem.detail, **problem.extra)
        except errors.BulkmailError as error:
            return problems.from_error(error)

    return endpoint


async def in_session(request: Request, work: Callable[[orm.Session], T]) -> T:
    """``work`` in one transaction, in a thread: committed when it returns."""

    def run() -> T:
        with db.session_scope(request.app.state.engine) as session:
            return work(session)

    return await run_in_threadpool(run)


def reply(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    given = request.query_params.get(name)
    if given is None:
        return default
    if not (given.isascii() and given.isdigit()) or not low <= int(given) <= high:
        raise problems.Problem(422, f"query parameter {name} must be a number from {low} to {high}")
    return int(given)


def query_text(request: Request, name: str, *, limit: int = 2000) -> str | None:
    given = request.query_params.get(name)
    if given is not None and (len(given) > limit or "\x00" in given):
        raise problems.Problem(
            422, f"query parameter {name} is longer than {limit} characters or holds a NUL"
        )
    return given


def idempotency_key(request: Request) -> str | None:
    return request.headers.get("idempotency-key")
