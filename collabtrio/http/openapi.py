"""The HTTP API's route table entries and the OpenAPI 3.1 document built from them.

A :class:`Route` is what the API dispatches on and what the document describes: method,
path template, scope, request model, query model, answer model. The document's schemas
come from the pydantic models the routes validate with (``model_json_schema``), and its
paths from the route table itself, so neither can drift from the routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .models import ErrorBody

__all__ = ["Route", "openapi_document"]

_REF = "#/components/schemas/{model}"

_ERRORS: dict[int, str] = {
    400: "Invalid input (`VALIDATION` with details, `INVALID_ROOM`).",
    401: "No API key, or not a key in use (`AUTH_REQUIRED`, `INVALID_TOKEN`).",
    403: "The key lacks the route's scope (`FORBIDDEN`).",
    404: "No such route, or no such entity (`NOT_FOUND`).",
    405: "The route does not take this method (`METHOD_NOT_ALLOWED`).",
    409: "The operation conflicts with the document (`DUPLICATE`).",
    413: "The body is larger than `api_max_body_bytes`, or the document would be (`TOO_LARGE`).",
    500: "An internal error (`INTERNAL`, retryable).",
    503: "A busy room (`RATE_LIMITED`) or storage down (`STORAGE_UNAVAILABLE`); "
         "see `Retry-After`.",
}


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP API route.

    ``path`` is a template (``/api/rooms/{room}/publish``); each ``{name}`` matches one
    path segment, percent-decoded. ``scope`` is the scope a key needs (None: any key).
    ``run(api, call)`` produces the answer, validated as ``response``.
    """

    method: str
    path: str
    operation_id: str
    summary: str
    scope: str | None
    response: type[BaseModel]
    run: Callable[[Any, Any], Awaitable[Any]]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    description: str = ""
    errors: tuple[int, ...] = (400, 401, 403, 413, 503)

    @property
    def segments(self) -> tuple[str, ...]:
        """The template's path segments."""
        return tuple(self.path.strip("/").split("/"))

    @property
    def params(self) -> tuple[str, ...]:
        """The names of the template's ``{name}`` segments."""
        return tuple(s[1:-1] for s in self.segments if s.startswith("{"))


Mode = Literal["validation", "serialization"]


def _schemas(routes: Sequence[Route]) -> tuple[dict[tuple[type[BaseModel], Mode], Any],
                                              dict[str, Any]]:
    models: list[type[BaseModel]] = [ErrorBody]
    for route in routes:
        for model in (route.body, route.response, route.query):
            if model is not None and model not in models:
                models.append(model)
    modes: tuple[Mode, ...] = ("validation", "serialization")
    inputs = [(m, mode) for mode in modes for m in models]
    refs, top = models_json_schema(inputs, ref_template=_REF)
    return {(cast("type[BaseModel]", m), mode): schema for (m, mode), schema in refs.items()}, \
        dict(top.get("$defs", {}))


def openapi_document(routes: Sequence[Route], *, version: str,
                     max_body_bytes: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    refs, schemas = _schemas(routes)
    error_ref = refs[(ErrorBody, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.params
        ]
        if route.query is not None:
            schema = route.query.model_json_schema(by_alias=True, ref_template=_REF)
            for name, prop in schema.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": False,
                               "schema": prop})
        scope = route.scope or "any key"
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "description": (route.description + f"\n\nScope: `{scope}`.").strip(),
            "security": [{"apiKey": []}],
            "x-collabtrio-scope": route.scope,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {
                    "schema": refs[(route.response, "serialization")]}}},
                **{str(status): {"description": text, "content": {"application/json": {
                    "schema": error_ref}}}
                   for status, text in _ERRORS.items()
                   if status in route.errors or status in (401, 404, 405, 500)},
            },
        }
        if params:
            operation["parameters"] = params
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "description": f"JSON, at most {max_body_bytes} bytes.",
                "content": {"application/json": {
                    "schema": refs[(route.body, "validation")]}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "collabtrio HTTP API",
            "version": version,
            "description": "Back-end access to a collabtrio server: publish events to "
                           "rooms and users, change documents, read stats and rooms, "
                           "disconnect users. Every route needs `Authorization: Bearer "
                           "<api key>`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "An API key's secret."}},
        },
    }
