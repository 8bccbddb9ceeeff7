"""``/api/v1/emails``: create a Draft, update, delete, send, cancel, send from a template.

Getting one (with its attempts), the list with filters and the ``.eml`` export are the
dashboard's JSON (``shared``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import pydantic
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from bulkmail import emails, idempotency, sending
from bulkmail.status import Priority
from bulkmail.web.api import calls, problems, shapes, spec

# How long a cancel waits for a poller holding the email to withdraw it.
CANCEL_WAIT_SECONDS = 5.0

Address = calls.Line
Recipients = list[Address]
PriorityName = Literal["low", "normal", "high"]


class NewEmail(calls.Strict):
    from_address: Address = pydantic.Field(alias="from")
    to: Recipients = pydantic.Field(min_length=1, max_length=emails.MAX_RECIPIENTS)
    cc: Recipients = pydantic.Field(default=[], max_length=emails.MAX_RECIPIENTS)
    bcc: Recipients = pydantic.Field(default=[], max_length=emails.MAX_RECIPIENTS)
    reply_to: Address | None = None
    subject: calls.Line
    text: str | None = pydantic.Field(default=None, max_length=10_000_000)
    html: str | None = pydantic.Field(default=None, max_length=10_000_000)
    priority: PriorityName = "normal"
    send_after: dt.datetime | None = None


class EmailChange(calls.Strict):
    subject: calls.Line | None = None
    to: Recipients | None = pydantic.Field(default=None, max_length=emails.MAX_RECIPIENTS)
    cc: Recipients | None = pydantic.Field(default=None, max_length=emails.MAX_RECIPIENTS)
    bcc: Recipients | None = pydantic.Field(default=None, max_length=emails.MAX_RECIPIENTS)
    text: str | None = pydantic.Field(default=None, max_length=10_000_000)
    html: str | None = pydantic.Field(default=None, max_length=10_000_000)
    priority: PriorityName | None = None
    send_after: dt.datetime | None = None


class FromTemplate(calls.Strict):
    template: calls.Line
    contact: Address
    from_address: Address = pydantic.Field(alias="from")
    reply_to: Address | None = None


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is not None and moment.tzinfo is None:
        raise problems.Problem(422, "send_after needs its offset: 2027-01-31T09:00:00+00:00")
    return moment


@calls.api
async def create(request: Request) -> Response:
    who = calls.caller(request)
    asked = await calls.body(request, NewEmail)
    key = calls.idempotency_key(request)
    domain = request.app.state.message_id_domain
    new = emails.NewEmail(
        from_address=asked.from_address,
        to=asked.to,
        cc=asked.cc,
        bcc=asked.bcc,
        reply_to=asked.reply_to,
        subject=asked.subject,
        text=asked.text,
        html=asked.html,
        priority=Priority.parse(asked.priority),
        send_after=_aware(asked.send_after),
    )

    def work(session: Any) -> idempotency.Answer:
        def made() -> idempotency.Answer:
            return 201, emails.as_dict(emails.create(session, new, message_id_domain=domain))

        if key is None:
            return made()
        return idempotency.once(
            session,
            user_id=who.user_id,
            key=key,
            request=["emails.create", asked.model_dump()],
            work=made,
        )

    status, body = await calls.in_session(request, work)
    return calls.reply(body, status)


@calls.api
async def update(request: Request) -> Response:
    calls.caller(request)
    email_id = request.path_params["email_id"]
    asked = await calls.body(request, EmailChange)
    given = asked.model_dump(exclude_none=True)
    if "priority" in given:
        given["priority"] = Priority.parse(given["priority"])
    if "send_after" in given:
        _aware(given["send_after"])
    return calls.reply(
        await calls.in_session(
            request, lambda s: emails.as_dict(emails.update(s, email_id, **given))
        )
    )


@calls.api
async def delete(request: Request) -> Response:
    calls.caller(request)
    email_id = request.path_params["email_id"]
    await calls.in_session(request, lambda s: emails.delete(s, email_id))
    return Response(status_code=204)


@calls.api
async def send(request: Request) -> Response:
    calls.caller(request)
    email_id = request.path_params["email_id"]
    return calls.reply(
        await calls.in_session(request, lambda s: emails.as_dict(emails.send(s, email_id)))
    )


@calls.api
async def cancel(request: Request) -> Response:
    calls.caller(request)
    email_id = request.path_params["email_id"]
    await calls.in_session(request, lambda s: emails.cancel(s, email_id))
    settled = await run_in_threadpool(
        emails.settle_cancel,
        request.app.state.engine,
        email_id,
        timeout=CANCEL_WAIT_SECONDS,
    )
    return calls.reply(emails.as_dict(settled))


@calls.api
async def from_template(request: Request) -> Response:
    calls.caller(request)
    asked = await calls.body(request, FromTemplate)
    domain = request.app.state.message_id_domain
    return calls.reply(
        await calls.in_session(
            request,
            lambda s: emails.as_dict(
                sending.send_from_template(
                    s,
                    template_name=asked.template,
                    contact_address=asked.contact,
                    from_address=asked.from_address,
                    reply_to=asked.reply_to,
                    message_id_domain=domain,
                )
            ),
        ),
        201,
    )


ONE = "/api/v1/emails/{email_id:int}"
endpoints = [
    spec.Endpoint(
        method="POST",
        path="/api/v1/emails",
        summary="Create a Draft email",
        handler=create,
        response=shapes.Email,
        body=NewEmail,
        status=201,
        idempotent_create=True,
        tag="emails",
    ),
    spec.Endpoint(
        method="PATCH",
        path=ONE,
        summary="Edit a Draft or Failed email (a Failed one becomes a Draft)",
        handler=update,
        response=shapes.Email,
        body=EmailChange,
        tag="emails",
    ),
    spec.Endpoint(
        method="DELETE",
        path=ONE,
        summary="Delete an email",
        handler=delete,
        status=204,
        produces="",
        tag="emails",
    ),
    spec.Endpoint(
        method="POST",
        path=ONE + "/send",
        summary="SendEmail: Draft to Pending Send",
        handler=send,
        response=shapes.Email,
        tag="emails",
    ),
    spec.Endpoint(
        method="POST",
        path=ONE + "/cancel",
        summary="Cancel a Draft or Pending Send email; one a sender holds is withdrawn unless "
        "the SMTP server has it",
        handler=cancel,
        response=shapes.Email,
        tag="emails",
    ),
    spec.Endpoint(
        method="POST",
        path="/api/v1/emails/send-template",
        summary="SendEmailFromTemplate: render a template for one contact and send it",
        handler=from_template,
        response=shapes.Email,
        body=FromTemplate,
        status=201,
        tag="emails",
    ),
]
