"""``/api/v1/organization``: the organization's settings; changing them needs
``administrator``."""

from __future__ import annotations

import pydantic
from starlette.requests import Request
from starlette.responses import Response

from bulkmail import mailboxes, organization
from bulkmail.web.api import calls, shapes, spec


class OrganizationChange(calls.Strict):
    require_approval_user: bool | None = None
    require_approval_queue: bool | None = None
    max_upload_size: calls.Int | None = pydantic.Field(default=None, ge=1)


@calls.api
async def show(request: Request) -> Response:
    calls.caller(request)
    return calls.reply(
        await calls.in_session(request, lambda s: organization.as_dict(organization.get(s)))
    )


@calls.api
async def change(request: Request) -> Response:
    calls.caller(request).require(mailboxes.ADMINISTRATOR, "change the organization's settings")
    asked = await calls.body(request, OrganizationChange)
    return calls.reply(
        await calls.in_session(
            request,
            lambda s: organization.as_dict(
                organization.update(s, **asked.model_dump(exclude_none=True))
            ),
        )
    )


endpoints = [
    spec.Endpoint(
        method="GET",
        path="/api/v1/organization",
        summary="The organization's settings",
        handler=show,
        response=shapes.Organization,
        tag="organization",
    ),
    spec.Endpoint(
        method="PATCH",
        path="/api/v1/organization",
        summary="Change the organization's settings (only those given)",
        handler=change,
        response=shapes.Organization,
        body=OrganizationChange,
        privilege=mailboxes.ADMINISTRATOR,
        tag="organization",
    ),
]
