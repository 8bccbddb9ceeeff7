"""The HTTP API under ``/api/v1``: calls made with a user's API token, as that user.

The web app's gate checks the token (``calls.authenticate``); each module here is one resource's
endpoints, thin over the domain modules; refusals are RFC 9457 problem documents (``problems``).
The OpenAPI 3.1 document and its rendered docs are built from the same endpoint list.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bulkmail.web.api import (
    attachments,
    background,
    contacts,
    emails,
    operations,
    organization,
    shared,
    spec,
    templates,
)

ENDPOINTS: list[spec.Endpoint] = [
    *background.endpoints,
    *operations.endpoints,
    *emails.endpoints,
    *attachments.endpoints,
    *templates.endpoints,
    *contacts.endpoints,
    *organization.endpoints,
    *shared.endpoints,
]


def document() -> dict[str, Any]:
    return spec.document(ENDPOINTS, version=importlib.metadata.version("bulkmail"))


def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


def docs(request: Request) -> Response:
    found: dict[str, Any] = request.app.state.openapi
    operations = [
        {
            "method": method.upper(),
            "path": path,
            "summary": operation["summary"],
            "description": operation.get("description", ""),
            "tag": operation.get("tags", [""])[0],
            "parameters": operation["parameters"],
            "body": json.dumps(_resolved(operation.get("requestBody"), found), indent=2),
        }
        for path, methods in found["paths"].items()
        for method, operation in methods.items()
    ]
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "api_docs.html", {"operations": operations, "document": found}
    )


def _resolved(value: Any, found: dict[str, Any]) -> Any:
    """``value`` with its ``$ref``s to schemas replaced by the schemas, for reading."""
    if isinstance(value, dict):
        ref = value.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            return _resolved(found["components"]["schemas"][ref.rsplit("/", 1)[1]], found)
        return {k: _resolved(v, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, found) for v in value]
    return value


routes: list[BaseRoute] = [
    Route("/api/v1/openapi.json", openapi, methods=["GET"]),
    Route("/api/v1/docs", docs, methods=["GET"]),
    *(endpoint.route() for endpoint in ENDPOINTS if endpoint.routed),
]
