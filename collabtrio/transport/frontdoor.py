"""The front door: one TCP port, HTTP/1.1 with keep-alive, a router, WebSocket upgrades.

Theory of operation: each accepted stream is served by :func:`serve_stream`, which
reads requests one after the other on the same connection (keep-alive, which
long-polling clients rely on), answering each in order before reading the next. The
connection's bytes are kept in one buffer: a request head is cut from it at its blank
line and parsed by httptools (llhttp, in C: about 2 µs a head where h11 took 22, and
a long poll is a request per delivery); a ``Content-Length`` body is cut from it by
length, a chunked one fed to the parser up to each blank line, so nothing past the
request is consumed and pipelined requests wait their turn. Answers are encoded here
and written with one non-blocking write when the socket takes them (:func:`write_all`).
The
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
import math
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import httptools
import trio

from .socketwrite import write_all

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


class _Parsed:
    """What httptools reports of one request (the target of its callbacks)."""

    __slots__ = ("body", "complete", "headers", "headers_done", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body = bytearray()
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class _BadRequest(Exception):
    """The request cannot be served: answer ``status`` and close."""

    def __init__(self, status: int, message: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.message = message


def _head_end(buf: bytearray, start: int = 0) -> int:
    """The length of the request head at the start of ``buf`` (its blank line
    included), or -1 while it is incomplete; ``start``: where the blank line may begin
    at the earliest (what was searched before, less the 3 bytes a line end may span)."""
    crlf = buf.find(b"\r\n\r\n", start)
    lf = buf.find(b"\n\n", start)  # bare line ends: llhttp refuses them, with a 400
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 2
    return crlf + 4 if crlf >= 0 else -1


def _parse_head(head: bytes,
                remote: str) -> tuple[HttpRequest, _Parsed, httptools.HttpRequestParser]:
    """The request whose head is ``head``, with its parser (which reads a chunked body);
    :class:`_BadRequest` if it is malformed."""
    parsed = _Parsed()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # an upgrade (or CONNECT): the head is complete; the caller decides
    except httptools.HttpParserError:
        raise _BadRequest(400, b"bad request\n") from None
    if not parsed.headers_done:
        raise _BadRequest(400, b"bad request\n")
    target = parsed.url.decode("latin-1")
    try:
        if target[:1] == "/" and target[1:2] != "/" and "#" not in target:
            # the origin form every client sends: no scheme, host or fragment to split
            # off (llhttp refused whitespace and control characters in a target); "//"
            # is left to urlsplit, which reads a host there
            path, _, query = target.partition("?")
        else:
            parts = urlsplit(target)
            path, query = parts.path, parts.query
    except ValueError:  # urlsplit: "//[", a bad IPv6 host
        raise _BadRequest(400, b"bad request target\n") from None
    headers: dict[str, str] = {}
    for name, value in parsed.headers:
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1").strip(" \t")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    version = parser.get_http_version()
    if version not in ("1.0", "1.1"):
        # llhttp reads a request line without a version as HTTP/0.9
        raise _BadRequest(400, b"HTTP/1.0 or HTTP/1.1 only\n")
    if version == "1.1" and "host" not in headers:
        raise _BadRequest(400, b"missing Host header\n")  # RFC 9112 section 3.2
    request = HttpRequest(
        method=parser.get_method().decode("ascii"),
        target=target,
        path=path,
        query=parse_query(query),
        headers=headers,
        remote=remote,
        http_version=version,
    )
    return request, parsed, parser


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


_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "")


def encode_response(resp: HttpResponse, *, close: bool, head: bool = False) -> bytes:
    """``resp`` as HTTP/1.1 bytes, with ``connection: close`` if ``close``; for a
    ``HEAD`` (``head``), the headers only. Every header here is the server's own (a
    value copied from a request, such as an allowed ``Origin``, passed the parser's
    checks then; a line break in one is still refused, with ``ValueError``)."""
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
    # HTTP/1.1 or later, and no "close" among the Connection tokens (an HTTP/1.0
    # client is answered without keep-alive, even if it asks for it)
    if request.http_version < "1.1":
        return False
    connection = request.headers.get("connection")
    return connection is None or "close" not in (
        token.strip().lower() for token in connection.split(","))


async def send_response(stream: trio.abc.Stream, resp: HttpResponse, *, close: bool = True,
                        head: bool = False) -> None:
    """Write ``resp``, the answer to the current request: the last one on the
    connection unless ``close`` is False (keep-alive). ``head``: the answer to a
    ``HEAD`` (headers only)."""
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


MAX_HELD_BYTES = 64 * 1024
"""What a client may send on a connection while its request is held (a pipelined next
request); past it the connection is closed."""


async def _read_body(stream: trio.abc.Stream, buf: bytearray, request: HttpRequest,
                     parsed: _Parsed, parser: httptools.HttpRequestParser,
                     limit: int) -> bytes:
    """The request body, taken from ``buf`` and then the stream; :class:`_BadRequest`
    if it is larger than ``limit`` (413) or the client ends the connection first (400).
    Nothing past the body is taken from ``buf``: it is the next request."""
    if "transfer-encoding" not in request.headers:
        declared = request.headers.get("content-length", "0")
        length = int(declared) if declared.isdigit() else 0  # llhttp checked the value
        if length > limit:
            raise _BadRequest(413, b"request body too large\n")
        while len(buf) < length:
            data = await stream.receive_some(65536)
            if not data:
                raise _BadRequest(400, b"incomplete request body\n")
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        return body
    # chunked: the parser reads the framing. A chunked message ends with a blank line,
    # so it is fed up to each one in turn (never past the end of the message), and the
    # last 3 bytes are kept back while none is in sight
    while not parsed.complete:
        end = _head_end(buf)
        take = end if end >= 0 else max(len(buf) - 3, 0)
        if take:
            try:
                parser.feed_data(bytes(buf[:take]))
            except httptools.HttpParserError:
                raise _BadRequest(400, b"malformed request body\n") from None
            del buf[:take]
            if len(parsed.body) > limit:
                raise _BadRequest(413, b"request body too large\n")
            continue
        data = await stream.receive_some(65536)
        if not data:
            raise _BadRequest(400, b"incomplete request body\n")
        buf += data
    return bytes(parsed.body)


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
            # the request buffer is gone with _serve_http's frame: a session that lasts
            # as long as its client keeps nothing of it
            handler, request, rest = upgrade
            del upgrade
            await handler(stream, request, rest)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        pass
    except Exception:
        log.exception("error while serving a connection")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()


async def _read_head(stream: trio.abc.Stream, buf: bytearray, idle_s: float | None,
                     deadline: trio.CancelScope) -> int:
    """Read until ``buf`` starts with a whole request head; its length, or 0 if the
    client closed the connection before starting one. Raises :class:`_BadRequest`
    (431) past :data:`MAX_HEAD_BYTES`. The connection's ``deadline`` scope is set to
    end it if the client stays idle ``idle_s`` before starting a request, or takes
    more than :data:`HEAD_TIMEOUT_S` to send its head, and is cleared once the head is
    in (moving one scope's deadline costs far less than a scope per request)."""
    end = _head_end(buf)
    if end >= 0:
        return end  # already read (pipelined, or sent with the previous request)
    if idle_s is not None and not buf:
        # between two requests: wait for the next one to start
        deadline.deadline = trio.current_time() + idle_s
        data = await stream.receive_some(65536)
        if not data:
            return 0
        buf += data
        end = _head_end(buf)
    if end < 0:
        deadline.deadline = trio.current_time() + HEAD_TIMEOUT_S
        while end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise _BadRequest(431, b"request head too large\n")
            searched = max(len(buf) - 3, 0)
            data = await stream.receive_some(65536)
            if not data:
                return 0
            buf += data
            end = _head_end(buf, searched)
    deadline.deadline = math.inf
    return end


async def _serve_http(
    stream: trio.abc.Stream, router: Router, max_body_bytes: int, keep_alive_s: float,
    remote: str,
) -> tuple[WebSocketHandler, HttpRequest, bytes] | None:
    """Answer requests until the connection is done, or return a WebSocket upgrade
    (its handler, the request, and the bytes read after its head) to hand the stream to."""
    buf = bytearray()  # what was read and not consumed yet: the next request(s)
    idle_s: float | None = None  # the first request has no idle wait, only the head's
    with trio.CancelScope() as deadline:  # idle and head time limits: see _read_head
        while True:
            try:
                end = await _read_head(stream, buf, idle_s, deadline)
                if not end:
                    return None  # closed by the peer
                if end > MAX_HEAD_BYTES:
                    raise _BadRequest(431, b"request head too large\n")
                head = bytes(buf[:end])
                del buf[:end]
                request, parsed, parser = _parse_head(head, remote)
            except _BadRequest as bad:
                await send_response(stream, HttpResponse(bad.status, bad.message))
                return None
            if request.method == "CONNECT":
                # no route tunnels
                await send_response(stream, HttpResponse(405, b"method not allowed\n"))
                return None
            if request.is_websocket_upgrade:
                handler = router.find_websocket(request.path)
                if handler is None:
                    await send_error(stream, 404, "not found")
                    return None
                if request.http_version < "1.1":
                    # RFC 6455 section 4.1: the opening handshake is HTTP/1.1 or later
                    await send_error(stream, 400, "a WebSocket upgrade needs HTTP/1.1")
                    return None
                return handler, request, bytes(buf)
            if not await _serve_request(stream, buf, router, request, parsed, parser,
                                        max_body_bytes):
                return None
            idle_s = keep_alive_s
    return None  # idle too long, or the head took too long


async def _serve_request(stream: trio.abc.Stream, buf: bytearray, router: Router,
                         request: HttpRequest, parsed: _Parsed,
                         parser: httptools.HttpRequestParser, max_body_bytes: int) -> bool:
    """Answer one request; True if the connection may carry another."""
    limit = max_body_bytes if request.method in _BODY_METHODS else 0
    head = request.method == "HEAD"  # an answer to HEAD carries no body, refusals too
    body: bytes | None = None  # stays None if the body takes too long
    try:
        if parsed.complete:
            body = b""  # no body: nothing to read
        else:
            with trio.move_on_after(BODY_TIMEOUT_S):
                body = await _read_body(stream, buf, request, parsed, parser, limit)
            if body is None:
                raise _BadRequest(408, b"request body timed out\n")
    except _BadRequest as refused:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await send_response(stream, HttpResponse(refused.status, refused.message),
                                head=head)
        return False
    handler = router.find_http(request.path)
    if handler is None:
        response: HttpResponse | None = HttpResponse(404, b"not found\n")
    else:
        answer = await handler(HttpRequest(request.method, request.target, request.path,
                                           request.query, request.headers, request.remote,
                                           body, request.http_version))
        response = answer if isinstance(answer, HttpResponse) else await _hold(
            stream, buf, answer)
    if response is None:
        return False  # the client went away while its request was held
    keep = _keep_alive(request)
    await send_response(stream, response, close=not keep, head=head)
    return keep


async def _hold(stream: trio.abc.Stream, buf: bytearray, hold: Hold) -> HttpResponse | None:
    """Wait until ``hold`` is ready, reading the connection meanwhile; None if the client
    closed it first (the hold is then abandoned), or sent more than
    :data:`MAX_HELD_BYTES` meanwhile.

    One task does both: the read is cancelled when the hold's waker fires, so a held
    poll costs no extra task. Bytes that arrive meanwhile (a pipelined next request)
    are kept in ``buf``.
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
            if not data or len(buf) + len(data) > MAX_HELD_BYTES:
                hold.abandon()  # the client went away (or misbehaves)
                return None
            buf += data
    except BaseException:
        hold.abandon()
        raise
    return hold.respond()


def first(query: dict[str, list[str]], name: str) -> str | None:
    """The first value of a query parameter, or None."""
    values = query.get(name)
    return values[0] if values else None
