"""The dashboard's JSON and actions that are part of the API: an API token reaches them too
(the actions then act as the token's user). Documented here; routed by ``views`` and
``actions``."""

from __future__ import annotations

from bulkmail import mailboxes
from bulkmail.web.api import calls, shapes, spec


class Address(calls.Strict):
    address: calls.Line


_OPERATION = "/api/v1/operations/{operation_id:int}"
_EMAIL = "/api/v1/emails/{email_id:int}"
endpoints = [
    spec.Endpoint(
        method="GET",
        path="/api/v1/operations",
        summary="Bulk operations, newest first",
        routed=False,
        tag="bulk operations",
    ),
    spec.Endpoint(
        method="GET",
        path=_OPERATION,
        summary="A bulk operation's status: counters, rate, ETA, failures by reply",
        routed=False,
        tag="bulk operations",
    ),
    spec.Endpoint(
        method="POST",
        path=_OPERATION + "/cancel",
        summary="Cancel: nothing of it the SMTP server does not have yet goes out",
        response=shapes.Done,
        routed=False,
        tag="bulk operations",
    ),
    spec.Endpoint(
        method="POST",
        path=_OPERATION + "/retry-failed",
        summary="Send its failures again",
        response=shapes.Done,
        routed=False,
        tag="bulk operations",
    ),
    spec.Endpoint(
        method="GET",
        path="/api/v1/emails",
        summary="Emails, newest first, by address, status, operation or Message-ID",
        query=[
            ("address", {"type": "string"}, "in From, To, Cc or Bcc"),
            (
                "status",
                {"type": "string"},
                "a status name: Sent, Failed, Pending Send, …",
            ),
            (
                "operation",
                {"type": "string", "pattern": "^[0-9]*$"},
                "a bulk operation's id",
            ),
            ("message_id", {"type": "string"}, "a Message-ID"),
        ],
        routed=False,
        tag="emails",
    ),
    spec.Endpoint(
        method="GET",
        path=_EMAIL,
        summary="An email: fields, headers as built, attachments, every delivery attempt",
        routed=False,
        tag="emails",
    ),
    spec.Endpoint(
        method="GET",
        path=_EMAIL + ".eml",
        summary="The exact bytes the SMTP server receives (or received)",
        produces="message/rfc822",
        routed=False,
        tag="emails",
    ),
    spec.Endpoint(
        method="GET",
        path="/api/v1/mailboxes",
        summary="Users and queues with their approval",
        routed=False,
        tag="mailboxes",
    ),
    *(
        spec.Endpoint(
            method="POST",
            path=f"/api/v1/mailboxes/{decision}",
            summary=f"{decision.title()} a user's or queue's address",
            body=Address,
            response=shapes.Done,
            privilege=mailboxes.APPROVE_EMAIL_ADDRESS,
            routed=False,
            tag="mailboxes",
        )
        for decision in ("approve", "reject")
    ),
]
