"""The API's resources in one walk through, as a client script uses them: templates, contacts
(a streamed CSV import, keyset pages), attachments uploaded and reused by id, emails with an
Idempotency-Key, SendBulkMail followed through the dashboard's JSON, organization settings, the
OpenAPI document and its docs page; bad input refused with a problem document."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bulkmail import db, mailboxes, tokens
from bulkmail.web.api import shapes
from tests import webserver

HTML = "<p>Hello {{ contact.first_name }}</p>"


@pytest.fixture
def start_web(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., webserver.Web]]:
    with webserver.started(pg_url, tmp_path) as start:
        yield start


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json() if response.content else None


def _refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    detail: str = response.json()["detail"]
    return detail


def test_a_client_drives_every_resource(
    engine: sa.Engine, start_web: Callable[..., webserver.Web]
) -> None:
    with db.session_scope(engine) as session:
        mailboxes.add_user(
            session,
            name="Admin",
            email="admin@example.org",
            privileges=[mailboxes.ADMINISTRATOR, mailboxes.APPROVE_EMAIL_ADDRESS],
        )
        mailboxes.add_user(session, name="Writer", email="writer@example.org")
        _, admin = tokens.create(session, user="admin@example.org", name="admin")
        _, writer = tokens.create(session, user="writer@example.org", name="writer")
    web = start_web()
    auth = {"Authorization": f"Bearer {writer}"}
    with httpx.Client(base_url=web.url + "/api/v1", headers=auth, timeout=30) as api:
        document = _ok(api.get("/openapi.json"))
        assert document["openapi"] == "3.1.0"
        for path in ("/background-send-email", "/contacts/{contact_id}", "/emails/{email_id}.eml"):
            assert "/api/v1" + path in document["paths"], path
        assert "/api/v1/docs" in _refused(api.get("/no-such-thing"), 404)
        options = api.request("OPTIONS", "/contacts")
        _refused(options, 405)
        assert options.headers["allow"] == "GET, HEAD, POST"
        assert "email 999" in _refused(api.get("/emails/999/attachments"), 404)
        assert "operation must be" in _refused(api.get("/emails", params={"operation": "²"}), 422)
        docs = api.get("/docs")
        assert docs.status_code == 200
        assert "/api/v1/background-send-email" in docs.text

        # Templates.
        created = _ok(
            api.post("/templates", json={"name": "welcome", "subject": "Hi", "html": HTML}), 201
        )
        assert created["name"] == "welcome"
        assert "unknown" in _refused(
            api.post("/templates", json={"name": "bad", "subject": "x", "html": "{{ unknown }}"}),
            422,
        )
        assert "NUL" in _refused(
            api.post("/templates", json={"name": "nul", "subject": "x", "html": "a\u0000b"}), 422
        )
        _ok(api.patch("/templates/welcome", json={"subject": "Hello {{ contact.first_name }}"}))
        assert [t["name"] for t in _ok(api.get("/templates"))] == ["welcome"]

        # Contacts: one by one, then a streamed CSV import with a bad line.
        ada = _ok(
            api.post("/contacts", json={"email": "ada@example.com", "first_name": "Ada",
                                        "country": "DE"}),
            201,
        )  # fmt: skip
        csv = (
            b"email,first_name,country\n"
            + b"".join(f"c{i}@example.com,C{i},DE\n".encode() for i in range(5))
            + b"not an address,X,DE\n"
        )
        import_key = {"Content-Type": "text/csv", "Idempotency-Key": "import-1"}
        report = _ok(
            api.post("/contacts/import", content=iter([csv[:30], csv[30:]]), headers=import_key)
        )
        # A retry gets the first report (a second import would report 5 unchanged).
        assert _ok(api.post("/contacts/import", content=csv, headers=import_key)) == report
        assert report["inserted"] == 5
        assert report["rejected"] == 1
        assert report["rejected_rows"][0]["line"] == 7
        assert _ok(api.get("/contacts/count", params={"query": "country = 'DE'"})) == {"count": 6}
        nul = _ok(
            api.post(
                "/contacts/import",
                content=b"email,first_name\nn@example.com,A\x00B\n",
                headers={"Content-Type": "text/csv"},
            )
        )
        assert nul["inserted"] == 0
        assert nul["rejected"] == 1
        first = _ok(api.get("/contacts", params={"query": "country = 'DE'", "limit": 4}))
        second = _ok(api.get("/contacts", params={"limit": 4, "after": first["next_after"]}))
        assert len(first["contacts"]) == 4
        assert len(second["contacts"]) == 2
        assert second["next_after"] is None
        _ok(api.patch(f"/contacts/{ada['id']}", json={"first_name": "Ada L.", "tags": ["vip"]}))
        assert _ok(api.get(f"/contacts/{ada['id']}"))["tags"] == ["vip"]
        preview = _ok(api.post("/templates/welcome/preview", json={"contact": "ada@example.com"}))
        assert preview["subject"] == "Hello Ada L."
        last = second["contacts"][-1]["id"]
        assert _ok(api.delete(f"/contacts/{last}"), 204) is None
        assert "no contact" in _refused(api.get(f"/contacts/{last}"), 404)

        # Attachments: an upload to the template, reused by id on an email. Over 1 MiB, the
        # upload is spooled to disk and stored by COPY in chunks: the bytes must come back.
        data = bytes(range(256)) * 6_000
        upload = _ok(
            api.post(
                "/templates/welcome/attachments",
                params={"file_name": "../../etc/price list.pdf"},
                content=data,
                headers={"Content-Type": "application/pdf"},
            ),
            201,
        )
        assert "/" not in upload["file_name"]
        assert upload["size"] == len(data)
        draft = {"from": "writer@example.org", "to": ["ada@example.com"], "subject": "Prices",
                 "text": "See the file.\n"}  # fmt: skip
        key = {"Idempotency-Key": "prices-1"}
        email = _ok(api.post("/emails", json=draft, headers=key), 201)
        again = _ok(api.post("/emails", json=draft, headers=key), 201)
        assert again["id"] == email["id"]
        assert "different request" in _refused(
            api.post("/emails", json={**draft, "subject": "Other"}, headers=key), 409
        )
        reused = _ok(
            api.post(f"/emails/{email['id']}/attachments",
                     json={"attachment_id": upload["attachment_id"], "file_name": "prices.pdf"}),
            201,
        )  # fmt: skip
        assert reused["attachment_id"] == upload["attachment_id"]
        assert api.get(f"/attachments/{reused['id']}").content == data
        listed = _ok(api.get(f"/emails/{email['id']}/attachments"))
        assert [a["file_name"] for a in listed] == ["prices.pdf"]
        _ok(api.patch(f"/emails/{email['id']}", json={"subject": "Prices 2027"}))
        assert "subject" in _refused(
            api.patch(f"/emails/{email['id']}", json={"subject": "x\r\nBcc: evil@example.com"}),
            422,
        )
        eml = api.get(f"/emails/{email['id']}.eml")
        assert b"Subject: Prices 2027" in eml.content
        assert b'filename="prices.pdf"' in eml.content
        assert _ok(api.post(f"/emails/{email['id']}/send"))["status"] == "Pending Send"
        assert _ok(api.post(f"/emails/{email['id']}/cancel"))["status"] == "Canceled"
        sent = _ok(
            api.post("/emails/send-template", json={"template": "welcome",
                     "contact": "ada@example.com", "from": "writer@example.org"}),
            201,
        )  # fmt: skip
        assert sent["subject"] == "Hello Ada L."
        assert sent["status"] == "Pending Send"
        shown = _ok(api.get(f"/emails/{sent['id']}"))
        assert [a["file_name"] for a in shown["attachments"]] == ["price list.pdf"]
        assert "attachments can change only while it is Draft or Failed" in _refused(
            api.delete(f"/attachments/{reused['id']}"), 409
        )

        # SendBulkMail, repeated with its key; followed through the dashboard's JSON.
        bulk = {"template": "welcome", "sender": "writer@example.org", "query": "country = 'DE'"}
        key = {"Idempotency-Key": "december"}
        operation = _ok(api.post("/operations", json=bulk, headers=key), 201)
        assert operation["stored"] is True
        assert type(operation["created"]) is int  # the counter, not the flag
        repeated = _ok(api.post("/operations", json=bulk, headers=key))
        assert repeated["id"] == operation["id"]
        assert repeated["stored"] is False
        status = _ok(api.get(f"/operations/{operation['id']}"))
        assert status["id"] == operation["id"]
        canceled = _ok(api.post(f"/operations/{operation['id']}/cancel", json={}))
        assert f"bulk operation {operation['id']} canceled" in canceled["done"]

        # Organization settings and approvals need their privileges.
        assert "lacks the privilege administrator" in _refused(
            api.patch("/organization", json={"max_upload_size": 1000}), 403
        )
        assert "unknown field extra" in _refused(
            api.post("/mailboxes/approve", json={"address": "writer@example.org", "extra": 1}),
            422,
        )
        assert "approve_email_address" in _refused(
            api.post("/mailboxes/approve", json={"address": "writer@example.org"}), 403
        )
        as_admin = {"Authorization": f"Bearer {admin}"}
        changed = _ok(api.patch("/organization", json={"max_upload_size": 1000}, headers=as_admin))
        assert changed["max_upload_size"] == 1000
        assert _ok(api.get("/organization"))["max_upload_size"] == 1000
        approved = _ok(
            api.post("/mailboxes/approve", json={"address": "writer@example.org"},
                     headers=as_admin)
        )  # fmt: skip
        assert approved["done"] == "writer@example.org is Approved"
        # The new limit is enforced while the upload is read.
        assert "limit of 1,000 bytes" in _refused(
            api.post("/templates/welcome/attachments", params={"file_name": "big.bin"},
                     content=iter([b"x" * 600, b"x" * 600]),
                     headers={"Content-Type": "application/octet-stream"}),
            413,
        )  # fmt: skip
        assert len(_ok(api.get("/templates/welcome/attachments"))) == 1

        # The answers are as the OpenAPI document describes them.
        for shape, answer in (
            (shapes.Template, created),
            (shapes.Contact, ada),
            (shapes.ImportReport, report),
            (shapes.ContactPage, first),
            (shapes.Attachment, upload),
            (shapes.Email, sent),
            (shapes.Operation, operation),
            (shapes.Organization, changed),
            (shapes.Preview, preview),
            (shapes.Done, approved),
        ):
            shape.model_validate(answer, strict=True)
