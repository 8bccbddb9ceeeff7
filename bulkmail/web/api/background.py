"""``/api/v1/background-send-email``: claimed emails for other senders, and their outcomes.

Both need the caller's ``background_send_email`` privilege: a claim hands out whole messages.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Literal

import pydantic
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bulkmail import defaults, handout, mailboxes, smtp
from bulkmail.web.api import calls, spec

MAX_BATCH = 5000
NEEDED_FOR = "claim emails for sending"


class ClaimRequest(calls.Strict):
    limit: calls.Int = pydantic.Field(ge=1, le=MAX_BATCH, description="emails to claim, at most")
    lease_seconds: calls.Int = pydantic.Field(
        default=int(defaults.LEASE_SECONDS),
        ge=10,
        le=86400,
        description="how long the claim holds; then the emails go to another sender",
    )


class ClaimedMessage(pydantic.BaseModel):
    id: int
    claim_token: uuid.UUID
    message_id: str
    mail_from: str
    rcpt_to: list[str]
    smtputf8: bool = pydantic.Field(description="MAIL FROM needs the SMTPUTF8 parameter")
    message: str = pydantic.Field(
        description="the message, base64: CRLF line ends, not dot-stuffed"
    )


class Claimed(pydantic.BaseModel):
    lease_expires_at: dt.datetime
    emails: list[ClaimedMessage]


class SmtpReply(calls.Strict):
    code: calls.Int = pydantic.Field(ge=200, le=599)
    enhanced_code: str | None = pydantic.Field(
        default=None, pattern=r"^[245]\.[0-9]{1,3}\.[0-9]{1,3}$"
    )
    text: calls.Line = ""


class OutcomeItem(calls.Strict):
    """Exactly one of ``reply`` (the server's answer to the message), ``connection_failed``
    (what went wrong: counted as a temporary failure) or ``not_sent`` (never handed to a
    server: released uncounted)."""

    id: calls.Int
    claim_token: uuid.UUID
    reply: SmtpReply | None = None
    connection_failed: calls.Line | None = None
    not_sent: Literal[True] | None = None

    @pydantic.model_validator(mode="after")
    def _one_result(self) -> OutcomeItem:
        given = [self.reply, self.connection_failed, self.not_sent]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of reply, connection_failed, not_sent")
        return self

    def report(self) -> handout.Report:
        if self.reply is not None:
            code = self.reply.code
            kind = (
                smtp.OutcomeKind.DELIVERED
                if code < 300
                else smtp.OutcomeKind.PERMANENT
                if code >= 500
                else smtp.OutcomeKind.TEMPORARY
            )
            parts = (str(code), self.reply.enhanced_code, self.reply.text)
            text = " ".join(part for part in parts if part)
            return handout.Report(id=self.id, claim_token=self.claim_token, kind=kind, reply=text)
        if self.connection_failed is not None:
            return handout.Report(
                id=self.id,
                claim_token=self.claim_token,
                kind=smtp.OutcomeKind.TEMPORARY,
                reply=f"connection failed: {self.connection_failed}".rstrip(": "),
            )
        return handout.Report(id=self.id, claim_token=self.claim_token, kind=None)


class OutcomesRequest(calls.Strict):
    outcomes: list[OutcomeItem] = pydantic.Field(min_length=1, max_length=MAX_BATCH)


class ItemResult(pydantic.BaseModel):
    id: int
    result: handout.Applied


class OutcomesResult(pydantic.BaseModel):
    sent: int
    retried: int
    failed: int
    canceled: int
    released: int
    stale: int
    items: list[ItemResult]


@calls.api
async def claim(request: Request) -> Response:
    who = calls.caller(request)
    who.require(mailboxes.BACKGROUND_SEND_EMAIL, NEEDED_FOR)
    asked = await calls.body(request, ClaimRequest)
    lease = dt.timedelta(seconds=asked.lease_seconds)
    started = dt.datetime.now(dt.UTC)
    handed = await run_in_threadpool(
        handout.claim,
        request.app.state.engine,
        worker=who.worker,
        limit=asked.limit,
        lease=lease,
        policy=request.app.state.policy,
        reap=request.app.state.reaper.due(),
        links=request.app.state.unsubscribe,
        keyring=request.app.state.keyring,
        return_path=request.app.state.return_path,
    )
    # Built by hand: validating thousands of messages again would cost more than the claim.
    emails = [
        {
            "id": h.id,
            "claim_token": str(h.claim_token),
            "message_id": h.message_id,
            "mail_from": h.mail_from,
            "rcpt_to": list(h.rcpt_to),
            "smtputf8": h.smtputf8,
            "message": base64.b64encode(h.data).decode("ascii"),
        }
        for h in handed
    ]
    return JSONResponse({"lease_expires_at": (started + lease).isoformat(), "emails": emails})


@calls.api
async def outcomes(request: Request) -> Response:
    who = calls.caller(request)
    who.require(mailboxes.BACKGROUND_SEND_EMAIL, NEEDED_FOR)
    asked = await calls.body(request, OutcomesRequest)
    written = await run_in_threadpool(
        handout.report,
        request.app.state.engine,
        [item.report() for item in asked.outcomes],
        worker=who.worker,
        policy=request.app.state.policy,
    )
    done = written.completed
    return JSONResponse(
        {
            "sent": done.sent,
            "retried": done.retried,
            "failed": done.failed,
            "canceled": done.canceled + written.released.canceled,
            "released": written.released.pending,
            "stale": sum(1 for _, applied in written.items if applied is handout.Applied.STALE),
            "items": [{"id": i, "result": applied.value} for i, applied in written.items],
        }
    )


endpoints = [
    spec.Endpoint(
        method="POST",
        path="/api/v1/background-send-email",
        summary="BackgroundSendEmail: claim due emails, as the pollers do, with their messages",
        handler=claim,
        body=ClaimRequest,
        response=Claimed,
        privilege=mailboxes.BACKGROUND_SEND_EMAIL,
        tag="background send",
    ),
    spec.Endpoint(
        method="POST",
        path="/api/v1/background-send-email/outcomes",
        summary="Write back what the SMTP server said about claimed emails",
        handler=outcomes,
        body=OutcomesRequest,
        response=OutcomesResult,
        privilege=mailboxes.BACKGROUND_SEND_EMAIL,
        tag="background send",
    ),
]
