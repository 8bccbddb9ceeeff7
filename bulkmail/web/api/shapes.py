"""What the API's resources answer, as the OpenAPI document describes them: the ``as_dict`` of
each domain module, typed. The schema fuzzing test checks every answer against these."""

from __future__ import annotations

from typing import Any

import pydantic

Time = str  # ISO 8601 with its offset


class Operation(pydantic.BaseModel):
    id: int
    name: str | None
    status: str
    template_id: int | None
    sender: str
    query: str
    reply_to: str | None
    idempotency_key: str | None
    matched: int
    created: int
    skipped_opted_out: int
    skipped_no_address: int
    render_failures: int
    pending: int
    sending: int
    sent: int
    failed: int
    canceled: int
    checkpoint: int | None
    created_at: Time | None
    started_at: Time | None
    expanded_at: Time | None
    completed_at: Time | None
    progressed_at: Time | None
    last_error: str | None
    stored: bool | None = None  # SendBulkMail's answer: whether this call stored it


class Email(pydantic.BaseModel):
    id: int
    status: str
    statuscode: int
    statecode: int
    state: str
    direction: str
    from_address: str = pydantic.Field(alias="from")
    from_name: str | None
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: str | None
    subject: str
    text: str | None
    html: str | None
    priority: str
    send_after: Time | None
    message_id: str
    delivery_attempts: int
    next_attempt_at: Time | None
    last_smtp_reply: str | None
    failure_reason: str | None
    failure_kind: str | None
    regarding_contact_id: int | None
    template_id: int | None
    bulk_operation_id: int | None
    sent_at: Time | None
    created_at: Time | None
    modified_at: Time | None


class Attachment(pydantic.BaseModel):
    id: int
    attachment_id: int
    object_type: str
    object_id: int
    file_name: str
    mime_type: str
    size: int
    subject: str | None
    order_number: int
    content_id: str | None


class Template(pydantic.BaseModel):
    id: int
    name: str
    subject: str
    html: str
    text: str | None
    created_at: Time
    modified_at: Time


class Preview(pydantic.BaseModel):
    subject: str
    text: str
    html: str


class Contact(pydantic.BaseModel):
    id: int
    email: str | None
    first_name: str | None
    last_name: str | None
    company: str | None
    country: str | None
    language: str | None
    tags: list[str]
    attributes: dict[str, Any]
    do_not_bulk_email: bool


class ContactPage(pydantic.BaseModel):
    contacts: list[Contact]
    next_after: int | None


class Count(pydantic.BaseModel):
    count: int


class Rejected(pydantic.BaseModel):
    line: int
    reason: str


class ImportReport(pydantic.BaseModel):
    rows: int
    inserted: int
    updated: int
    unchanged: int
    duplicates: int
    rejected: int
    rejected_rows: list[Rejected]


class Organization(pydantic.BaseModel):
    require_approval_user: bool
    require_approval_queue: bool
    max_upload_size: int
    modified_at: Time


class Done(pydantic.BaseModel):
    """What the dashboard's actions answer."""

    done: str
