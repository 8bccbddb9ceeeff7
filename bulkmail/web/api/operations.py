"""``POST /api/v1/operations``: SendBulkMail. Its status, the list, cancel and retry-failed are
the dashboard's JSON and actions (``shared``)."""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from bulkmail import bulk, errors, submission
from bulkmail.models import OperationStatus
from bulkmail.web.api import calls, shapes, spec

logger = logging.getLogger("bulkmail.web")


class SendBulkMail(calls.Strict):
    template: calls.Line
    sender: calls.Line
    query: str
    name: calls.Line | None = None
    reply_to: calls.Line | None = None
    allow_empty: bool = False


@calls.api
async def create(request: Request) -> Response:
    calls.caller(request)
    asked = await calls.body(request, SendBulkMail)
    key = calls.idempotency_key(request)
    wanted = submission.Asked(
        template_name=asked.template,
        sender_address=asked.sender,
        query=asked.query,
        name=asked.name,
        reply_to=asked.reply_to,
    )
    submitted = await calls.in_session(
        request,
        lambda session: submission.submit(
            session, wanted, idempotency_key=key, allow_empty=asked.allow_empty
        ),
    )
    operation = submitted.operation
    data = {**bulk.as_dict(operation), "stored": submitted.created}
    if submitted.created or operation.current_status is OperationStatus.QUEUED:
        enqueue = request.app.state.enqueue_expansion
        try:
            await run_in_threadpool(enqueue, operation.id)
        except errors.BrokerUnavailable as error:
            # Stored is stored: the reconciler queues it once the broker is back.
            logger.warning("%s", error)
            data["warning"] = str(error)
    return calls.reply(data, 201 if submitted.created else 200)


endpoints = [
    spec.Endpoint(
        method="POST",
        path="/api/v1/operations",
        summary="SendBulkMail: store a bulk operation and queue its expansion",
        handler=create,
        response=shapes.Operation,
        body=SendBulkMail,
        status=201,
        idempotent_create=True,
        tag="bulk operations",
    ),
]
