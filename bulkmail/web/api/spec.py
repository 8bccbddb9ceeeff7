"""The API's endpoints as data: each one's route, and its part of the OpenAPI 3.1 document.

A handler is written once with its request model (a strict pydantic model) and the privilege
it needs; the document is built from the same ``Endpoint`` values, so it cannot drift from the
routes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
from starlette.routing import Route

from bulkmail.web.api import calls

_PARAMETER = re.compile(r"\{(\w+)(?::(\w+))?\}")
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    method: str
    path: str  # Starlette's: /api/v1/emails/{email_id:int}
    summary: str
    handler: calls.Handler | None = None  # None: routed elsewhere (``routed``)
    body: type[pydantic.BaseModel] | None = None
    response: type[pydantic.BaseModel] | None = None  # None: a JSON object
    many: bool = False  # the answer is an array of ``response``
    status: int = 200
    privilege: str | None = None
    query: Sequence[tuple[str, dict[str, Any], str]] = ()  # name, JSON Schema, description
    upload: bool = False  # the body is the file itself
    produces: str = "application/json"
    idempotent_create: bool = False  # takes an Idempotency-Key header
    tag: str = ""
    # False: documented here, routed by the dashboard (its JSON and actions take API tokens).
    routed: bool = True

    def route(self) -> Route:
        assert self.handler is not None, self.path
        return Route(self.path, self.handler, methods=[self.method])


def _schema(model: type[pydantic.BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    found = model.model_json_schema(ref_template=_REF)
    components.update(found.pop("$defs", {}))
    components[model.__name__] = found
    return {"$ref": _REF.format(model=model.__name__)}


def _operation(endpoint: Endpoint, components: dict[str, Any]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 1} if kind == "int" else {"type": "string"},
        }
        for name, kind in _PARAMETER.findall(endpoint.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema, "description": d}
        for name, schema, d in endpoint.query
    ]
    if endpoint.idempotent_create:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 200, "pattern": r"^[^\r\n\x00]+$"},
                "description": "a retry with the same key returns the first result",
            }
        )
    success: dict[str, Any] = {"description": "done"}
    if endpoint.produces == "application/json":
        schema: dict[str, Any] = {"type": ["object", "array"]}
        if endpoint.response is not None:
            schema = _schema(endpoint.response, components)
            if endpoint.many:
                schema = {"type": "array", "items": schema}
        success["content"] = {"application/json": {"schema": schema}}
    elif endpoint.status != 204:
        success["content"] = {endpoint.produces: {"schema": {"type": "string"}}}
    problem = {"$ref": "#/components/responses/Problem"}
    responses: dict[str, Any] = {str(endpoint.status): success}
    for code in ("400", "401", "403", "404", "409", "413", "414", "415", "422"):
        responses[code] = problem
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": f"{endpoint.method.lower()}{_PARAMETER.sub('', endpoint.path)}".replace(
            "/", "_"
        ).replace("-", "_"),
        "parameters": parameters,
        "responses": responses,
    }
    if endpoint.tag:
        operation["tags"] = [endpoint.tag]
    if endpoint.privilege:
        operation["description"] = f"Needs the privilege `{endpoint.privilege}`."
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(endpoint.body, components)}},
        }
    elif endpoint.upload:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    return operation


def document(endpoints: Sequence[Endpoint], *, version: str) -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        path = _PARAMETER.sub(r"{\1}", endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bulkmail",
            "version": version,
            "description": "Every call acts as the system user of its API token "
            "(`bulkmail users token create`). Errors are RFC 9457 problem documents.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "refused: an RFC 9457 problem document",
                    "content": {"application/problem+json": {"schema": _PROBLEM}},
                }
            },
        },
        "security": [{"token": []}],
    }


_PROBLEM: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
            },
        },
    },
}
