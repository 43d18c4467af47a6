"""The HTTP API under ``/api/``: routes for back-end services, on the server's port.

Every route needs ``Authorization: Bearer <api key>`` (:mod:`.auth`): 401 without a
key or with one not in use, 403 for a key without the route's scope. Then the route
table (:data:`ROUTES`) picks the route by path and method (404, 405 with ``Allow``),
the body is checked against ``api_max_body_bytes`` (413) and validated with the route's
model (400 ``VALIDATION`` with details), and the route calls
:class:`~collabtrio.app.service.BackendService`, the same code the embedding API on
:class:`~collabtrio.server.Server` calls. Answers are JSON, shaped by the route's answer
model; errors are ``{error: {code, message, retryable, details?}}`` with the socket
protocol's codes, and a 503 (a busy room, storage down) carries ``Retry-After``.

Routes (scope in brackets):

- ``POST /api/rooms/{room}/publish`` [publish], ``POST /api/publish`` [publish]
- ``POST /api/rooms/{room}/ops`` [publish; ``admin`` for ``replace``]
- ``GET /api/stats``, ``GET /api/rooms``, ``GET /api/rooms/{room}`` [read]
- ``POST /api/users/{sub}/disconnect`` [admin]
- ``GET /api/openapi.json`` [any key]

Access log: every request is logged once, at ``info`` on the ``collabtrio.access``
logger: method, path, status, duration in milliseconds and the key's name (``-``
when none was recognised), never the secret or the ``Authorization`` header.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import trio
from pydantic import BaseModel, ValidationError

from ..app.service import BackendService
from ..errors import CollabError, ErrorCode
from ..protocol import jsonsafe
from ..transport.frontdoor import HttpRequest, HttpResponse
from . import models
from .auth import ApiKey, ApiKeys
from .openapi import Route, openapi_document

log = logging.getLogger(__name__)
access_log = logging.getLogger("collabtrio.access")

__all__ = ["API_PREFIX", "ROUTES", "STATUS", "ApiHandler", "Call"]

API_PREFIX = "/api/"

STATUS: dict[str, int] = {
    ErrorCode.AUTH_REQUIRED: 401,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.INVALID_ROOM: 400,
    ErrorCode.VALIDATION: 400,
    ErrorCode.UNKNOWN_EVENT: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_JOINED: 409,
    ErrorCode.DUPLICATE: 409,
    ErrorCode.EPOCH_MISMATCH: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 503,
    ErrorCode.ROOM_FULL: 503,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
"""The HTTP status of each error code."""

METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"


@dataclass(frozen=True, slots=True)
class Call:
    """What a route gets: the caller's key, the path parameters (decoded), and the
    validated query and body (None for a route without one)."""

    key: ApiKey
    params: dict[str, str]
    query: Any = None
    body: Any = None


class _Refusal(Exception):
    """An answer with a code of HTTP's own (``METHOD_NOT_ALLOWED``)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.wire = {"code": code, "message": message, "retryable": False}
        self.headers = headers


class ApiHandler:
    """Serves every request under ``/api/`` (see the module docstring)."""

    def __init__(self, service: BackendService, keys: ApiKeys) -> None:
        self.service = service
        self.keys = keys
        self.config = service.ctx.config
        self._openapi: bytes | None = None

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of :data:`ROUTES`."""
        return openapi_document(ROUTES, version=self.service.version,
                                max_body_bytes=self.config.api_max_body_bytes)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request (never raises for a client's mistake) and log it."""
        started = trio.current_time()
        who: list[str] = []  # the key's name, once recognised (per request)
        response = await self._answer(request, who)
        self.service.ctx.metrics.http_request()
        if access_log.isEnabledFor(logging.INFO):
            ms = round((trio.current_time() - started) * 1000, 1)
            key = who[0] if who else "-"
            access_log.info("%s %s %d %.1f ms key=%s", request.method, request.path,
                            response.status, ms, key,
                            extra={"method": request.method, "path": request.path,
                                   "status": response.status, "duration_ms": ms,
                                   "key": key})
        return response

    async def _answer(self, request: HttpRequest, who: list[str]) -> HttpResponse:
        try:
            key = self.keys.authenticate(request.headers.get("authorization"))
            who.append(key.name)
            route, params = self._route(request)
            if route.scope is not None and not key.allows(route.scope):
                raise CollabError(ErrorCode.FORBIDDEN,
                                  f"this API key lacks the {route.scope!r} scope")
            call = Call(key, params, self._query(route, request), self._body(route, request))
            if route.run is _openapi:
                if self._openapi is None:
                    self._openapi = jsonsafe.dumps(self.openapi()).encode()
                return HttpResponse(200, self._openapi, "application/json")
            result = await route.run(self, call)
            answer = route.response.model_validate(result).model_dump(by_alias=True)
            return HttpResponse.json(200, answer)
        except _Refusal as refusal:
            return self._error(refusal.status, refusal.wire, refusal.headers)
        except CollabError as err:
            return self._error(STATUS.get(err.code, 400), err.to_wire())
        except Exception:
            log.exception("HTTP API: %s %s failed", request.method, request.path)
            return self._error(500, CollabError(ErrorCode.INTERNAL, "internal error").to_wire())

    def _error(self, status: int, wire: dict[str, Any],
               headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
        if status == 401:
            headers += (("www-authenticate", 'Bearer realm="collabtrio"'),)
        elif status == 503:
            headers += (("retry-after", str(self.config.api_retry_after_s)),)
        body = {"error": wire}
        return HttpResponse(status, jsonsafe.dumps(body).encode(), "application/json", headers)

    def _route(self, request: HttpRequest) -> tuple[Route, dict[str, str]]:
        segments = request.path.strip("/").split("/")
        matched: list[tuple[Route, dict[str, str]]] = []
        for route in ROUTES:
            template = route.segments
            if len(template) != len(segments):
                continue
            params: dict[str, str] = {}
            for want, got in zip(template, segments, strict=True):
                if want.startswith("{"):
                    try:
                        value = unquote(got, errors="strict")
                    except UnicodeDecodeError:
                        break  # not UTF-8 once decoded: no room or user has that id
                    if not value:
                        break
                    params[want[1:-1]] = value
                elif want != got:
                    break
            else:
                matched.append((route, params))
        if not matched:
            raise CollabError(ErrorCode.NOT_FOUND, f"no API route {request.path}")
        method = "GET" if request.method == "HEAD" else request.method
        for route, params in matched:
            if route.method == method:
                return route, params
        allowed = sorted({r.method for r, _ in matched} | (
            {"HEAD"} if any(r.method == "GET" for r, _ in matched) else set()))
        raise _Refusal(405, METHOD_NOT_ALLOWED,
                       f"{request.method} is not allowed here; use {' or '.join(allowed)}",
                       (("allow", ", ".join(allowed)),))

    def _query(self, route: Route, request: HttpRequest) -> Any:
        if route.query is None:
            return None
        values = {name: found[0] for name, found in request.query.items() if found}
        return _validate(route.query, values, "query")

    def _body(self, route: Route, request: HttpRequest) -> Any:
        if route.body is None:
            return None
        limit = min(self.config.api_max_body_bytes, self.config.max_payload)
        body = request.body
        if len(body) > limit:
            raise CollabError(ErrorCode.TOO_LARGE, f"the body is {len(body)} bytes; the "
                              f"limit is {limit} (api_max_body_bytes)")
        if not body.strip():
            value: Any = {}
        else:
            try:
                value = jsonsafe.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise CollabError(ErrorCode.VALIDATION, f"the body is not JSON: {exc}",
                                  details=[{"loc": [], "msg": "Invalid JSON",
                                            "type": "json_invalid"}]) from None
        if not isinstance(value, dict):
            raise CollabError(ErrorCode.VALIDATION, "the body must be a JSON object",
                              details=[{"loc": [], "msg": "Input should be an object",
                                        "type": "dict_type"}])
        return _validate(route.body, value, "body")


def _validate(model: type[BaseModel], value: dict[str, Any], what: str) -> BaseModel:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise CollabError(ErrorCode.VALIDATION, f"invalid request {what}",
                          details=models.validation_details(exc)) from None


# -- the routes ----------------------------------------------------------------------------

async def _publish_room(api: ApiHandler, call: Call) -> Any:
    body: models.PublishRequest = call.body
    result = await api.service.publish([call.params["room"]], body.event, body.data)
    return {"ok": True, **result["rooms"][0]}


async def _publish_many(api: ApiHandler, call: Call) -> Any:
    body: models.PublishManyRequest = call.body
    return await api.service.publish(body.rooms, body.event, body.data)


async def _op(api: ApiHandler, call: Call) -> Any:
    body: models.OpRequest = call.body
    if body.op == "replace" and not call.key.allows("admin"):
        raise CollabError(ErrorCode.FORBIDDEN, "replace needs an API key with the 'admin' scope")
    return await api.service.apply_op(
        call.params["room"], operation_id=body.operation_id, op=body.op,
        collection=body.collection, id=body.id, data=body.data, timestamp=body.timestamp,
        user_id=call.key.name, user_name=call.key.name)


async def _stats(api: ApiHandler, call: Call) -> Any:
    stats = api.service.stats()
    stats["storage"].update(await api.service.storage_state())
    return stats


async def _rooms(api: ApiHandler, call: Call) -> Any:
    query: models.RoomsQuery = call.query
    return api.service.list_rooms(limit=query.limit, cursor=query.cursor, prefix=query.prefix)


async def _room(api: ApiHandler, call: Call) -> Any:
    return await api.service.room_state(call.params["room"])


async def _disconnect(api: ApiHandler, call: Call) -> Any:
    body: models.DisconnectRequest = call.body
    return api.service.disconnect_user(call.params["sub"], body.reason)


async def _openapi(api: ApiHandler, call: Call) -> Any:
    return api.openapi()  # served from a cache by ApiHandler.handle


ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/rooms/{room}/publish", "publishToRoom",
          "Send a broadcast event to every member of a room", "publish",
          models.PublishResponse, _publish_room, body=models.PublishRequest,
          description="Members get `broadcast {room, event, data, userId: null, "
                      "userName: null, socketId: null}`. `user:<sub>` reaches every "
                      "connection of that user. A room that is not open reaches nobody "
                      "(`open: false`) and is not opened."),
    Route("POST", "/api/publish", "publish",
          "Send a broadcast event to several rooms", "publish",
          models.PublishManyResponse, _publish_many, body=models.PublishManyRequest,
          description="As publishToRoom, for up to `api_max_rooms` rooms; all or "
                      "nothing: if one open room is busy, nothing is sent (503)."),
    Route("POST", "/api/rooms/{room}/ops", "applyOperation",
          "Apply a document operation, answered after the commit", "publish",
          models.OpResponse, _op, body=models.OpRequest,
          description="The same validation, persistence, broadcast and idempotency as a "
                      "client's `op`, as user id = the key's name; the same `operationId` "
                      "gets the first answer. `replace` needs the `admin` scope. Opens "
                      "the room if it is not open.",
          errors=(400, 401, 403, 404, 409, 413, 503)),
    Route("GET", "/api/stats", "stats", "Connections, rooms, users, storage", "read",
          models.StatsResponse, _stats, errors=(401, 403)),
    Route("GET", "/api/rooms", "listRooms", "Open rooms with member counts, paged", "read",
          models.RoomListResponse, _rooms, query=models.RoomsQuery, errors=(400, 401, 403)),
    Route("GET", "/api/rooms/{room}", "roomState",
          "A room's document, seq, epoch and members", "read",
          models.RoomStateResponse, _room,
          description="An open room answers from memory; another is read from storage "
                      "without opening it (no members).", errors=(400, 401, 403, 503)),
    Route("POST", "/api/users/{sub}/disconnect", "disconnectUser",
          "Close every connection of a user", "admin",
          models.DisconnectResponse, _disconnect, body=models.DisconnectRequest,
          description="Socket.IO clients get `disconnect-reason {reason}` and a "
                      "Socket.IO DISCONNECT (`io server disconnect`: no automatic "
                      "reconnection); y-websocket peers are closed with 4403.",
          errors=(400, 401, 403, 413)),
    Route("GET", "/api/openapi.json", "openapi", "This document", None,
          models.ApiModel, _openapi, errors=(401,)),
)
"""The HTTP API: what it dispatches on and what its OpenAPI document lists."""
