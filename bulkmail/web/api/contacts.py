"""``/api/v1/contacts``: create, get, update, delete, count and list by recipient query (keyset
pagination), and the CSV import as a streamed upload with the CLI's per-line report."""

from __future__ import annotations

import hashlib
import tempfile
from typing import IO, Any

import pydantic
from sqlalchemy import orm
from starlette.requests import Request
from starlette.responses import Response

from bulkmail import contacts, idempotency, importer
from bulkmail.web.api import calls, problems, shapes, spec

# An import is spooled to a temporary file past this many bytes, and refused past the limit.
SPOOL_BYTES = 1 << 20
MAX_IMPORT_BYTES = 2 << 30

Text = calls.Line | None
Attributes = dict[str, str | int | float | bool | None]


class NewContact(calls.Strict):
    email: calls.Line | None
    first_name: Text = None
    last_name: Text = None
    company: Text = None
    country: Text = None
    language: Text = None
    tags: list[calls.Line] = pydantic.Field(default=[], max_length=100)
    attributes: Attributes = pydantic.Field(default={}, max_length=100)
    do_not_bulk_email: bool = False


class ContactChange(calls.Strict):
    email: calls.Line | None = None
    first_name: Text = None
    last_name: Text = None
    company: Text = None
    country: Text = None
    language: Text = None
    tags: list[calls.Line] | None = pydantic.Field(default=None, max_length=100)
    attributes: Attributes | None = pydantic.Field(default=None, max_length=100)
    do_not_bulk_email: bool | None = None


@calls.api
async def create(request: Request) -> Response:
    calls.caller(request)
    asked = await calls.body(request, NewContact)
    return calls.reply(
        await calls.in_session(
            request, lambda s: contacts.as_dict(contacts.add(s, **asked.model_dump()))
        ),
        201,
    )


@calls.api
async def get(request: Request) -> Response:
    calls.caller(request)
    contact_id = request.path_params["contact_id"]
    return calls.reply(
        await calls.in_session(request, lambda s: contacts.as_dict(contacts.get(s, contact_id)))
    )


@calls.api
async def update(request: Request) -> Response:
    calls.caller(request)
    contact_id = request.path_params["contact_id"]
    asked = await calls.body(request, ContactChange)
    given = asked.model_dump(exclude_unset=True)
    texts = {k: given.pop(k) for k in list(given) if k in contacts.TEXT_FIELDS}
    return calls.reply(
        await calls.in_session(
            request,
            lambda s: contacts.as_dict(contacts.update(s, contact_id, texts=texts, **given)),
        )
    )


@calls.api
async def delete(request: Request) -> Response:
    calls.caller(request)
    contact_id = request.path_params["contact_id"]
    await calls.in_session(request, lambda s: contacts.delete(s, contact_id))
    return Response(status_code=204)


@calls.api
async def listed(request: Request) -> Response:
    calls.caller(request)
    query = calls.query_text(request, "query")
    limit = calls.query_int(request, "limit", 100, low=1, high=1000)
    after = calls.query_int(request, "after", 0, low=0, high=2**63 - 1)

    def page(session: orm.Session) -> dict[str, Any]:
        found = contacts.list_contacts(session, query=query, limit=limit, after=after)
        return {
            "contacts": [contacts.as_dict(c) for c in found],
            # The next page: ?after=<next_after>, until it is null.
            "next_after": found[-1].id if len(found) == limit else None,
        }

    return calls.reply(await calls.in_session(request, page))


@calls.api
async def count(request: Request) -> Response:
    calls.caller(request)
    query = calls.query_text(request, "query")
    return calls.reply(
        {"count": await calls.in_session(request, lambda s: contacts.count(s, query))}
    )


@calls.api
async def import_csv(request: Request) -> Response:
    who = calls.caller(request)
    strict = request.query_params.get("strict", "false") == "true"
    key = calls.idempotency_key(request)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        size, digest = 0, hashlib.sha256()
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_IMPORT_BYTES:
                raise problems.Problem(
                    413, f"the file is larger than {MAX_IMPORT_BYTES:,} bytes; split it"
                )
            digest.update(chunk)
            spool.write(chunk)
        spool.seek(0)

        def run(session: orm.Session) -> idempotency.Answer:
            def imported() -> idempotency.Answer:
                return 200, _import(session, spool, strict=strict)

            if key is None:
                return imported()
            return idempotency.once(
                session,
                user_id=who.user_id,
                key=key,
                request=["contacts.import", digest.hexdigest(), strict],
                work=imported,
            )

        status, body = await calls.in_session(request, run)
        return calls.reply(body, status)


def _import(session: orm.Session, source: IO[bytes], *, strict: bool) -> dict[str, object]:
    rejected: list[dict[str, object]] = []
    done = importer.import_bytes(
        session,
        source,
        strict=strict,
        on_rejected=lambda r: rejected.append({"line": r.line, "reason": r.reason}),
    )
    return {
        "rows": done.rows,
        "inserted": done.inserted,
        "updated": done.updated,
        "unchanged": done.unchanged,
        "duplicates": done.duplicates,
        "rejected": done.rejected,
        "rejected_rows": rejected,
    }


BASE = "/api/v1/contacts"
ONE = BASE + "/{contact_id:int}"
_QUERY = (
    "query",
    {"type": "string", "minLength": 1, "maxLength": 2000},
    "a recipient query: country = 'DE' and not tags contains 'x'",
)
endpoints = [
    spec.Endpoint(
        method="POST",
        path=BASE,
        summary="Create a contact",
        handler=create,
        response=shapes.Contact,
        body=NewContact,
        status=201,
        tag="contacts",
    ),
    spec.Endpoint(
        method="GET",
        path=BASE,
        summary="Contacts matching a recipient query, by id; the next page with ?after=",
        handler=listed,
        response=shapes.ContactPage,
        query=[
            _QUERY,
            (
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 1000},
                "at most this many (1 to 1000, default 100)",
            ),
            (
                "after",
                {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                "the next_after of the page before",
            ),
        ],
        tag="contacts",
    ),
    spec.Endpoint(
        method="GET",
        path=BASE + "/count",
        summary="How many contacts a query matches",
        handler=count,
        response=shapes.Count,
        query=[_QUERY],
        tag="contacts",
    ),
    spec.Endpoint(
        method="POST",
        path=BASE + "/import",
        summary="Upsert contacts from CSV (the body); the report lists each rejected line",
        handler=import_csv,
        response=shapes.ImportReport,
        upload=True,
        query=[
            (
                "strict",
                {"type": "string", "enum": ["true", "false"]},
                "true: the first bad row imports nothing",
            )
        ],
        idempotent_create=True,
        tag="contacts",
    ),
    spec.Endpoint(
        method="GET",
        path=ONE,
        summary="A contact",
        handler=get,
        response=shapes.Contact,
        tag="contacts",
    ),
    spec.Endpoint(
        method="PATCH",
        path=ONE,
        summary="Change a contact's given fields",
        handler=update,
        response=shapes.Contact,
        body=ContactChange,
        tag="contacts",
    ),
    spec.Endpoint(
        method="DELETE",
        path=ONE,
        summary="Delete a contact",
        handler=delete,
        status=204,
        produces="",
        tag="contacts",
    ),
]
