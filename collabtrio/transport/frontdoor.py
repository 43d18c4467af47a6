"""The front door: one TCP port, HTTP/1.1 with keep-alive, a router, WebSocket upgrades.

Theory of operation: each accepted stream is served by :func:`serve_stream`, which
reads requests with h11 one after the other on the same connection (keep-alive, which
long-polling clients rely on), answering each in order before reading the next. The
:class:`Router` maps a path to an HTTP handler (request in, :class:`HttpResponse`
out, or a :class:`Hold`: a long poll, written once it is ready) or to a WebSocket
handler. A WebSocket upgrade ends the HTTP part of the connection: the handler gets
the stream and the bytes of the upgrade request (its head and whatever the client sent
right after it), which the WebSocket layer feeds to wsproto.

Limits: a request head must be complete within :data:`HEAD_TIMEOUT_S` of its start
(for the first request, of the connection's start; an idle keep-alive connection waits
at most ``keep_alive_s`` for the next request to start, 5 s by default as in Node's
HTTP server) and is at most :data:`MAX_HEAD_BYTES` as it was sent, however it arrives
(431); a body must be at most ``max_body_bytes`` (else 413, at once when its
``Content-Length`` says so) and arrive within :data:`BODY_TIMEOUT_S` (else 408); either
way the connection is closed. A WebSocket upgrade needs HTTP/1.1 or later (400).

Every HTTP response is written by :func:`send_response`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import h11
import trio

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0
"""Seconds a request head may take to arrive, once it has started (or for the first)."""
BODY_TIMEOUT_S = 10.0
"""Seconds a request body may take to arrive."""
MAX_HEAD_BYTES = 16 * 1024
"""The largest request head accepted (431 past it)."""
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed request head (and, for HTTP routes, its body)."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    remote: str
    body: bytes = b""
    http_version: str = "1.1"

    @property
    def is_websocket_upgrade(self) -> bool:
        """True for a ``GET`` asking to upgrade to WebSocket."""
        return (
            self.method == "GET"
            and self.headers.get("upgrade", "").lower() == "websocket"
            and "upgrade" in self.headers.get("connection", "").lower()
        )


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What an HTTP route answers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, body: object) -> HttpResponse:
        """A JSON response."""
        return cls(status, json.dumps(body).encode(), "application/json")


class Hold(Protocol):
    """An answer that is not ready yet: a long poll, held until :meth:`ready`.

    The front door keeps reading the connection meanwhile (so a client that goes away
    is noticed, and pipelined bytes are kept); :meth:`set_waker` gives the callable
    that ends the wait when the answer becomes ready.
    """

    def ready(self) -> bool:
        """The answer can be written now."""

    def set_waker(self, wake: Callable[[], None] | None) -> None:
        """Call ``wake`` (synchronously, from any task) once :meth:`ready`; None: stop."""

    def respond(self) -> HttpResponse:
        """The answer (called once, when ready)."""

    def abandon(self) -> None:
        """The client went away (or the server is stopping) before the answer."""


WebSocketHandler = Callable[[trio.abc.Stream, HttpRequest, bytes], Awaitable[None]]
HttpHandler = Callable[[HttpRequest], Awaitable["HttpResponse | Hold"]]


def _route_key(path: str) -> str:
    return path.rstrip("/") or "/"


class Router:
    """Paths to handlers: exact paths (a trailing ``/`` does not matter) or prefixes."""

    def __init__(self) -> None:
        self._http: dict[str, HttpHandler] = {}
        self._http_prefixes: list[tuple[str, HttpHandler]] = []
        self._websocket: dict[str, WebSocketHandler] = {}
        self._websocket_prefixes: list[tuple[str, WebSocketHandler]] = []

    def http(self, path: str, handler: HttpHandler, *, prefix: bool = False) -> None:
        """Answer HTTP requests for ``path`` (or every path under it) with ``handler``
        (which may answer with a :class:`Hold`: a long poll)."""
        if prefix:
            self._http_prefixes.append((path, handler))
        else:
            self._http[_route_key(path)] = handler

    def websocket(self, path: str, handler: WebSocketHandler, *, prefix: bool = False) -> None:
        """Hand WebSocket upgrades for ``path`` (or under it) to ``handler``."""
        if prefix:
            self._websocket_prefixes.append((path, handler))
        else:
            self._websocket[_route_key(path)] = handler

    def find_http(self, path: str) -> HttpHandler | None:
        """The HTTP handler for ``path``, if any."""
        found = self._http.get(_route_key(path))
        if found is None:
            found = next((h for p, h in self._http_prefixes if path.startswith(p)), None)
        return found

    def find_websocket(self, path: str) -> WebSocketHandler | None:
        """The WebSocket handler for ``path``, if any."""
        found = self._websocket.get(_route_key(path))
        if found is None:
            found = next((h for p, h in self._websocket_prefixes if path.startswith(p)), None)
        return found


def remote_of(stream: trio.abc.Stream) -> str:
    """``host:port`` of the peer, or a placeholder for in-memory streams."""
    if isinstance(stream, trio.SocketStream):
        try:
            host, port, *_ = stream.socket.getpeername()
            return f"{host}:{port}"
        except OSError:
            return "?"
    return "memory"


def _request_of(event: h11.Request, remote: str) -> HttpRequest:
    """The request as routes see it; ``ValueError`` for a target ``urlsplit`` refuses
    (``//[``: a bad IPv6 host)."""
    target = event.target.decode("latin-1")
    if target[:1] == "/" and target[1:2] != "/" and "#" not in target:
        # the origin form every client sends: no scheme, host or fragment to split off
        # (h11 already refused whitespace and control characters in a target); "//"
        # is left to urlsplit, which reads a host there
        path, _, query = target.partition("?")
    else:
        parts = urlsplit(target)
        path, query = parts.path, parts.query
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1")  # h11 gives names lower-cased
        val = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    return HttpRequest(
        method=event.method.decode("ascii"),
        target=target,
        path=path,
        query=parse_query(query),
        headers=headers,
        remote=remote,
        http_version=event.http_version.decode("ascii"),
    )


def parse_query(query: str) -> dict[str, list[str]]:
    """``query`` as ``parse_qs(query, keep_blank_values=True)`` reads it, without its
    cost for the plain ``name=value`` pairs every poll carries."""
    if "%" in query or "+" in query or ";" in query:
        return parse_qs(query, keep_blank_values=True)
    out: dict[str, list[str]] = {}
    for field in query.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        found = out.get(name)
        if found is None:
            out[name] = [value]
        else:
            found.append(value)
    return out


async def _next_event(
    stream: trio.abc.Stream, conn: h11.Connection
) -> h11.Event | type[h11.PAUSED]:
    """The next h11 event, reading from ``stream`` as needed (EOF: ConnectionClosed)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        data = await stream.receive_some(65536)
        conn.receive_data(bytes(data))


def _head_bytes(event: h11.Request) -> bytes:
    """The request head again, for the WebSocket layer (wsproto parses it itself)."""
    lines = [event.method + b" " + event.target + b" HTTP/" + event.http_version]
    lines.extend(name + b": " + value for name, value in event.headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _BodyRefused(Exception):
    """The request body cannot be served: answer ``status`` and close."""

    def __init__(self, status: int, message: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.message = message


async def _read_body(stream: trio.abc.Stream, conn: h11.Connection, max_bytes: int) -> bytes:
    """The request body; :class:`_BodyRefused` if it is larger than ``max_bytes`` or the
    client ends the connection before it does."""
    body = bytearray()
    while True:
        try:
            event = await _next_event(stream, conn)
        except h11.RemoteProtocolError:
            # a malformed chunk, or the client gone before the end of the body: its fault
            raise _BodyRefused(400, b"malformed or incomplete request body\n") from None
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_bytes:
                raise _BodyRefused(413, b"request body too large\n")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise _BodyRefused(400, b"incomplete request body\n")


_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "")


def encode_response(resp: HttpResponse, *, close: bool, head: bool = False) -> bytes:
    """``resp`` as HTTP/1.1 bytes, with ``connection: close`` if ``close``; for a
    ``HEAD`` (``head``), the headers only. Written by hand rather than by h11: a long
    poll's answer is the hot path, and every header here is the server's own (a value
    copied from a request, such as an allowed ``Origin``, passed h11's checks then;
    a line break in one is still refused, with ``ValueError``)."""
    lines = [f"HTTP/1.1 {resp.status} {_reason(resp.status)}",
             f"content-type: {resp.content_type}", f"content-length: {len(resp.body)}"]
    if close:
        lines.append("connection: close")
    for name, value in resp.headers:
        line = f"{name}: {value}"
        if "\r" in line or "\n" in line:
            raise ValueError(f"a line break in the response header {name!r}")
        lines.append(line)
    lines.append("\r\n")
    out = "\r\n".join(lines).encode("latin-1")
    return out if head else out + resp.body


def _keep_alive(request: HttpRequest) -> bool:
    # h11's rule: HTTP/1.1 or later, and no "close" among the Connection tokens
    if request.http_version < "1.1":
        return False
    connection = request.headers.get("connection")
    return connection is None or "close" not in (
        token.strip().lower() for token in connection.split(","))


async def write_all(stream: trio.abc.SendStream, data: bytes | bytearray | memoryview) -> None:
    """``stream.send_all(data)``, except that on a socket the first attempt is a plain
    non-blocking write from this task: an answer that fits the socket's buffer (a poll's
    answer does) then costs no pass through the scheduler. Whatever does not fit is
    sent with ``send_all``. Only for a stream that this task alone writes to."""
    if isinstance(stream, trio.SocketStream) and data:
        fd = stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # EPIPE, ECONNRESET: the peer is gone
            raise trio.BrokenResourceError(f"the peer closed the connection: {exc}") from exc
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    await stream.send_all(data)


async def send_response(
    stream: trio.abc.Stream, resp: HttpResponse, conn: h11.Connection | None = None,
    *, close: bool = False, head: bool = False,
) -> None:
    """Write ``resp``: the answer to ``conn``'s current request (keep-alive unless
    ``close``), or, without ``conn`` or once it cannot answer (a malformed request), as
    a last answer before the connection closes. ``head``: the answer to a ``HEAD``
    (headers only)."""
    if conn is None or conn.our_state is not h11.SEND_RESPONSE:
        close, head = True, False
    await write_all(stream, encode_response(resp, close=close, head=head))


async def send_error(stream: trio.abc.Stream, status: int, message: str,
                     headers: tuple[tuple[str, str], ...] = ()) -> None:
    """Answer with ``{code: 3, message}`` (Engine.IO's error body) and close; never raises
    for a peer that is already gone."""
    body = json.dumps({"code": 3, "message": message}).encode()
    try:
        await send_response(stream, HttpResponse(status, body, "application/json", headers))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def abort_stream(stream: trio.abc.Stream) -> None:
    """Make the coming close of ``stream`` an abort (a TCP RST, SO_LINGER 0), for a
    stream that may end inside a WebSocket frame: the peer must see a broken
    connection, not an orderly end after a torn frame. Other streams are left as they
    are."""
    if isinstance(stream, trio.SocketStream):
        try:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed by the peer: nothing left to abort


async def serve_stream(
    stream: trio.abc.Stream, router: Router, *, max_body_bytes: int, keep_alive_s: float = 5.0,
    remote: str | None = None,
) -> None:
    """Serve one accepted stream until it is done; never raises (except Cancelled).

    ``remote`` is the client's ``host:port`` when the stream's own peer address is not
    it (an in-memory stream); by default, the peer's address.

    Resource handling: the stream is closed when this returns, whatever happened, except
    that a WebSocket handler owns it (and closes it) once the upgrade was handed over.
    """
    try:
        upgrade = await _serve_http(stream, router, max_body_bytes, keep_alive_s,
                                    remote or remote_of(stream))
        if upgrade is not None:
            # the HTTP parser and its events are gone with _serve_http's frame: a
            # session that lasts as long as its client keeps nothing of them
            handler, request, raw = upgrade
            del upgrade
            await handler(stream, request, raw)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        pass
    except Exception:
        log.exception("error while serving a connection")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()


async def _serve_http(
    stream: trio.abc.Stream, router: Router, max_body_bytes: int, keep_alive_s: float,
    remote: str,
) -> tuple[WebSocketHandler, HttpRequest, bytes] | None:
    """Answer requests until the connection is done, or return a WebSocket upgrade
    (its handler, request and raw bytes) to hand the stream to."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    counted = _CountingStream(stream)
    first_request = True
    while True:
        try:
            # bytes of this request already read: what h11 holds unparsed
            start = counted.received - len(conn.trailing_data[0])
            if not first_request and not conn.trailing_data[0]:
                # idle between requests: wait for the next one to start
                data: bytes | bytearray = b""
                with trio.move_on_after(keep_alive_s):
                    data = await counted.receive_some(65536)
                if not data:
                    return None  # idle too long, or closed by the peer
                conn.receive_data(bytes(data))
            event = conn.next_event()  # a head already read needs no deadline
            if event is h11.NEED_DATA:
                with trio.fail_after(HEAD_TIMEOUT_S):
                    event = await _next_event(counted, conn)
            if isinstance(event, h11.Request):
                # h11 bounds only a head still incomplete; one that came whole in a
                # single read is measured here, as sent (whitespace h11 drops included)
                consumed = counted.received - len(conn.trailing_data[0]) - start
                if consumed > MAX_HEAD_BYTES:
                    raise h11.RemoteProtocolError("request head too large", 431)
        except h11.RemoteProtocolError as exc:
            # h11 knows which status fits (400, 413, 431)
            await send_response(counted, HttpResponse(exc.error_status_hint or 400,
                                                     b"bad request\n"))
            return None
        if not isinstance(event, h11.Request):
            return None  # closed by the peer
        try:
            request = _request_of(event, remote)
        except ValueError:
            await send_response(counted, HttpResponse(400, b"bad request target\n"), conn,
                                close=True, head=event.method == b"HEAD")
            return None
        if request.method == "CONNECT":
            # no route tunnels, and h11 would switch protocols on a 2xx answer
            await send_response(counted, HttpResponse(405, b"method not allowed\n"), conn,
                                close=True)
            return None
        if request.is_websocket_upgrade:
            handler = router.find_websocket(request.path)
            if handler is None:
                await send_error(counted, 404, "not found")
                return None
            if event.http_version < b"1.1":
                # RFC 6455 section 4.1: the opening handshake is HTTP/1.1 or later
                await send_error(counted, 400, "a WebSocket upgrade needs HTTP/1.1")
                return None
            return handler, request, _head_bytes(event) + conn.trailing_data[0]
        if not await _serve_request(counted, conn, router, request, max_body_bytes):
            return None
        conn = _next_cycle(conn)
        first_request = False


def _next_cycle(conn: h11.Connection) -> h11.Connection:
    """A parser for the next request on a keep-alive connection, holding what ``conn``
    read past the answered one. A fresh ``h11.Connection`` rather than
    ``start_next_cycle``: the answers are written by :func:`encode_response`, so h11's
    state of ``conn`` never reached the end of the response."""
    data, closed = conn.trailing_data
    fresh = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    if data:
        fresh.receive_data(bytes(data))
    if closed:
        fresh.receive_data(b"")
    return fresh


class _CountingStream(trio.abc.Stream):
    """A stream that counts the bytes read from it (to measure request heads as sent)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.received = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Read from the stream, counting what arrives."""
        data = await self.stream.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write to the stream (:func:`write_all`: the front door is its only writer)."""
        await write_all(self.stream, data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the stream's."""
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Close the stream."""
        await self.stream.aclose()


async def _serve_request(stream: trio.abc.Stream, conn: h11.Connection, router: Router,
                         request: HttpRequest, max_body_bytes: int) -> bool:
    """Answer one request; True if the connection may carry another."""
    limit = max_body_bytes if request.method in _BODY_METHODS else 0
    head = request.method == "HEAD"  # an answer to HEAD carries no body, refusals too
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        # refused before reading it: the client said how big it is
        await send_response(stream, HttpResponse(413, b"request body too large\n"), conn,
                            close=True, head=head)
        return False
    body: bytes | None = None  # stays None if the body takes too long
    try:
        if declared in ("", "0") and "transfer-encoding" not in request.headers:
            body = await _read_body(stream, conn, limit)  # no body: h11 ends it without I/O
        else:
            with trio.move_on_after(BODY_TIMEOUT_S):
                body = await _read_body(stream, conn, limit)
            if body is None:
                raise _BodyRefused(408, b"request body timed out\n")
    except _BodyRefused as refused:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await send_response(stream, HttpResponse(refused.status, refused.message), conn,
                                close=True, head=head)
        return False
    handler = router.find_http(request.path)
    if handler is None:
        response: HttpResponse | None = HttpResponse(404, b"not found\n")
    else:
        answer = await handler(HttpRequest(request.method, request.target, request.path,
                                           request.query, request.headers, request.remote,
                                           body, request.http_version))
        response = answer if isinstance(answer, HttpResponse) else await _hold(
            stream, conn, answer)
    if response is None:
        return False  # the client went away while its request was held
    keep = _keep_alive(request)
    await send_response(stream, response, conn, close=not keep, head=head)
    return keep


async def _hold(stream: trio.abc.Stream, conn: h11.Connection, hold: Hold) -> HttpResponse | None:
    """Wait until ``hold`` is ready, reading the connection meanwhile; None if the client
    closed it first (the hold is then abandoned).

    One task does both: the read is cancelled when the hold's waker fires, so a held
    poll costs no extra task. Bytes that arrive meanwhile (a pipelined next request)
    are kept for h11.
    """
    try:
        while not hold.ready():
            with trio.CancelScope() as scope:
                hold.set_waker(scope.cancel)
                try:
                    data = await stream.receive_some(65536)
                finally:
                    hold.set_waker(None)
            if scope.cancelled_caught:
                continue
            if not data:
                hold.abandon()  # the client went away
                return None
            conn.receive_data(bytes(data))
    except BaseException:
        hold.abandon()
        raise
    return hold.respond()


def first(query: dict[str, list[str]], name: str) -> str | None:
    """The first value of a query parameter, or None."""
    values = query.get(name)
    return values[0] if values else None
