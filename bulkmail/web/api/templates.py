"""``/api/v1/templates``: create, get, update, delete, list, and a preview for one contact."""

from __future__ import annotations

import pydantic
from sqlalchemy import orm
from starlette.requests import Request
from starlette.responses import Response

from bulkmail import mailboxes, templates
from bulkmail.web.api import calls, shapes, spec


class NewTemplate(calls.Strict):
    name: calls.Line
    subject: calls.Line
    html: str = pydantic.Field(max_length=1_000_000)
    text: str | None = pydantic.Field(default=None, max_length=1_000_000)


class TemplateChange(calls.Strict):
    subject: calls.Line | None = None
    html: str | None = pydantic.Field(default=None, max_length=1_000_000)
    text: str | None = pydantic.Field(default=None, max_length=1_000_000)


class Preview(calls.Strict):
    contact: calls.Line
    from_address: calls.Line | None = pydantic.Field(default=None, alias="from")


@calls.api
async def create(request: Request) -> Response:
    calls.caller(request)
    asked = await calls.body(request, NewTemplate)
    return calls.reply(
        await calls.in_session(
            request, lambda s: templates.as_dict(templates.create(s, **asked.model_dump()))
        ),
        201,
    )


@calls.api
async def get(request: Request) -> Response:
    calls.caller(request)
    name = request.path_params["name"]
    return calls.reply(
        await calls.in_session(request, lambda s: templates.as_dict(templates.get(s, name)))
    )


@calls.api
async def listed(request: Request) -> Response:
    calls.caller(request)
    return calls.reply(
        await calls.in_session(
            request, lambda s: [templates.as_dict(t) for t in templates.list_templates(s)]
        )
    )


@calls.api
async def update(request: Request) -> Response:
    calls.caller(request)
    name = request.path_params["name"]
    asked = await calls.body(request, TemplateChange)
    return calls.reply(
        await calls.in_session(
            request,
            lambda s: templates.as_dict(
                templates.update(s, name, **asked.model_dump(exclude_none=True))
            ),
        )
    )


@calls.api
async def delete(request: Request) -> Response:
    calls.caller(request)
    name = request.path_params["name"]
    await calls.in_session(request, lambda s: templates.delete(s, name))
    return Response(status_code=204)


@calls.api
async def preview(request: Request) -> Response:
    calls.caller(request)
    name = request.path_params["name"]
    asked = await calls.body(request, Preview)

    def render(session: orm.Session) -> dict[str, str]:
        sender = mailboxes.find(session, asked.from_address) if asked.from_address else None
        done = templates.render_for(session, name, contact_address=asked.contact, sender=sender)
        return {"subject": done.subject, "text": done.text, "html": done.html}

    return calls.reply(await calls.in_session(request, render))


BASE = "/api/v1/templates"
ONE = BASE + "/{name}"
endpoints = [
    spec.Endpoint(
        method="POST",
        path=BASE,
        summary="Store a template (validated: syntax, a sample render)",
        handler=create,
        response=shapes.Template,
        body=NewTemplate,
        status=201,
        tag="templates",
    ),
    spec.Endpoint(
        method="GET",
        path=BASE,
        summary="Templates",
        handler=listed,
        response=shapes.Template,
        many=True,
        tag="templates",
    ),
    spec.Endpoint(
        method="GET",
        path=ONE,
        summary="A template",
        handler=get,
        response=shapes.Template,
        tag="templates",
    ),
    spec.Endpoint(
        method="PATCH",
        path=ONE,
        summary="Change a template",
        handler=update,
        response=shapes.Template,
        body=TemplateChange,
        tag="templates",
    ),
    spec.Endpoint(
        method="DELETE",
        path=ONE,
        summary="Delete a template",
        handler=delete,
        status=204,
        produces="",
        tag="templates",
    ),
    spec.Endpoint(
        method="POST",
        path=ONE + "/preview",
        summary="Subject, text and HTML as they would go out to one contact",
        handler=preview,
        response=shapes.Preview,
        body=Preview,
        tag="templates",
    ),
]
