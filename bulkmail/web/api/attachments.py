"""Attachments of emails and templates: upload (streamed, the organization's size limit
enforced while reading), reuse of a stored file by ``attachment_id``, list, download, delete.

An upload is the file itself as the body (any media type but JSON), its name in the query
(``?file_name=report.pdf``); a JSON body ``{"attachment_id": N, "file_name": …}`` reuses a file
already stored instead.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from typing import BinaryIO, cast
from urllib.parse import quote

import pydantic
from sqlalchemy import orm
from starlette.requests import Request
from starlette.responses import Response

from bulkmail import attachments, emails, organization, templates
from bulkmail.web.api import calls, problems, shapes, spec

# An upload up to this size stays in memory; a larger one is spooled to a temporary file.
_IN_MEMORY = 1 << 20


class Reuse(calls.Strict):
    attachment_id: calls.Int = pydantic.Field(ge=1)
    file_name: calls.Line
    mime_type: calls.Line | None = None
    content_id: calls.Line | None = None


def _owner(request: Request) -> Callable[[orm.Session], attachments.Owner]:
    params = request.path_params

    def owner(session: orm.Session) -> attachments.Owner:
        if "email_id" in params:
            return attachments.Owner(email_id=emails.get(session, params["email_id"]).id)
        return attachments.Owner(template_id=templates.get(session, params["name"]).id)

    return owner


async def _upload(request: Request) -> BinaryIO:
    """The body in a temporary file (in memory up to 1 MiB, then on disk), refused (413) as
    soon as it passes the organization's limit: an upload never sits whole in memory."""
    limit = await calls.in_session(request, lambda s: organization.get(s).max_upload_size)
    spooled = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY)  # noqa: SIM115 (returned open)
    try:
        async for chunk in calls.within(request, limit):
            spooled.write(chunk)
    except calls.TooLarge:
        spooled.close()
        raise problems.Problem(
            413,
            f"the file is larger than the organization's limit of {limit:,} bytes "
            "(an administrator can raise it: PATCH /api/v1/organization max_upload_size)",
        ) from None
    return cast(BinaryIO, spooled)


@calls.api
async def add(request: Request) -> Response:
    calls.caller(request)
    owner = _owner(request)
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        reuse = await calls.body(request, Reuse)
        file_name, mime_type, content_id = reuse.file_name, reuse.mime_type, reuse.content_id
        data, blob = None, reuse.attachment_id
    else:
        file_name = calls.query_text(request, "file_name", limit=255) or ""
        if not file_name:
            raise problems.Problem(422, "name the file: ?file_name=report.pdf")
        mime_type = calls.query_text(request, "mime_type", limit=255)
        content_id = calls.query_text(request, "content_id", limit=255)
        data, blob = await _upload(request), None

    def store(session: orm.Session) -> dict[str, object]:
        record = attachments.add(
            session,
            owner(session),
            file_name=file_name,
            data=data,
            reuse=blob,
            mime_type=mime_type,
            content_id=content_id,
        )
        listed = attachments.list_for(session, owner(session))
        return attachments.as_dict(next(x for x in listed if x.record.id == record.id))

    with contextlib.closing(data) if data is not None else contextlib.nullcontext():
        return calls.reply(await calls.in_session(request, store), 201)


@calls.api
async def listed(request: Request) -> Response:
    calls.caller(request)
    owner = _owner(request)
    return calls.reply(
        await calls.in_session(
            request,
            lambda s: [attachments.as_dict(x) for x in attachments.list_for(s, owner(s))],
        )
    )


@calls.api
async def download(request: Request) -> Response:
    calls.caller(request)
    record_id = request.path_params["record_id"]

    def load(session: orm.Session) -> tuple[str, str, bytes]:
        record = attachments.get(session, record_id)
        return record.file_name, record.mime_type, attachments.read(session, record_id)

    name, mime_type, data = await calls.in_session(request, load)
    return Response(
        data,
        media_type=mime_type,
        headers={"content-disposition": f"attachment; filename*=UTF-8''{quote(name)}"},
    )


@calls.api
async def delete(request: Request) -> Response:
    calls.caller(request)
    record_id = request.path_params["record_id"]
    await calls.in_session(request, lambda s: attachments.delete(s, record_id))
    return Response(status_code=204)


_UPLOAD_QUERY = [
    (
        "file_name",
        {"type": "string", "minLength": 1, "maxLength": 255},
        "the file's name (an upload)",
    ),
    ("mime_type", {"type": "string", "maxLength": 255}, "its media type; default: from the name"),
    ("content_id", {"type": "string", "maxLength": 255}, "a Content-ID, for an inline image"),
]
endpoints = [
    *(
        endpoint
        for owner_path in ("/api/v1/emails/{email_id:int}", "/api/v1/templates/{name}")
        for endpoint in (
            spec.Endpoint(
                method="POST",
                path=owner_path + "/attachments",
                summary="Attach a file: the body is the file (or JSON reusing an attachment_id)",
                handler=add,
                response=shapes.Attachment,
                upload=True,
                query=_UPLOAD_QUERY,
                status=201,
                tag="attachments",
            ),
            spec.Endpoint(
                method="GET",
                path=owner_path + "/attachments",
                summary="The attachments that go out with it",
                handler=listed,
                response=shapes.Attachment,
                many=True,
                tag="attachments",
            ),
        )
    ),
    spec.Endpoint(
        method="GET",
        path="/api/v1/attachments/{record_id:int}",
        summary="Download an attachment's file",
        handler=download,
        produces="application/octet-stream",
        tag="attachments",
    ),
    spec.Endpoint(
        method="DELETE",
        path="/api/v1/attachments/{record_id:int}",
        summary="Delete an attachment record (its file when nothing else uses it)",
        handler=delete,
        status=204,
        produces="",
        tag="attachments",
    ),
]
