"""The front door: one TCP port for HTTP routes and WebSocket upgrades.

Theory of operation: each accepted stream is read with h11 until the request head is
complete (bounded in size and time). A WebSocket upgrade is handed on together with the
raw bytes read so far, which the WebSocket layer feeds to wsproto (the head, plus any
frames the client sent right after it). Everything else is an HTTP request answered
by the ``http_handler`` (one request per connection; the response closes it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import h11
import trio

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 * 1024


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


WebSocketHandler = Callable[[trio.abc.Stream, HttpRequest, bytes], Awaitable[None]]
HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def remote_of(stream: trio.abc.Stream) -> str:
    """``host:port`` of the peer, or a placeholder for in-memory streams."""
    if isinstance(stream, trio.SocketStream):
        try:
            host, port, *_ = stream.socket.getpeername()
            return f"{host}:{port}"
        except OSError:
            return "?"
    return "memory"


async def read_request_head(stream: trio.abc.Stream) -> tuple[HttpRequest, bytes, h11.Connection]:
    """Read one request head; returns it, every byte read so far, and the h11 state.

    Raises :class:`h11.RemoteProtocolError` for a malformed or oversized head and
    :class:`EOFError` when the peer closes first.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    raw = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                raise EOFError
            raw += data
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            target = event.target.decode("latin-1")
            parts = urlsplit(target)
            headers: dict[str, str] = {}
            for name, value in event.headers:
                key = name.decode("latin-1").lower()
                val = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {val}" if key in headers else val
            request = HttpRequest(
                method=event.method.decode("ascii"),
                target=target,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers=headers,
                remote=remote_of(stream),
            )
            return request, bytes(raw), conn
        if isinstance(event, h11.ConnectionClosed):
            raise EOFError
        raise h11.RemoteProtocolError("unexpected event before request", 400)


async def _read_body(
    stream: trio.abc.Stream, conn: h11.Connection, max_bytes: int
) -> bytes | None:
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return None
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_bytes:
                return None
            continue
        if isinstance(event, h11.EndOfMessage):
            return bytes(body)
        return None


async def send_response(stream: trio.abc.Stream, conn: h11.Connection, resp: HttpResponse) -> None:
    """Write ``resp`` and ask the peer to close (no keep-alive)."""
    headers = [
        ("content-type", resp.content_type),
        ("content-length", str(len(resp.body))),
        ("connection", "close"),
        *resp.headers,
    ]
    out = conn.send(h11.Response(status_code=resp.status, headers=headers))
    assert out is not None
    out += conn.send(h11.Data(data=resp.body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)


async def handle_stream(
    stream: trio.abc.Stream,
    *,
    on_websocket: WebSocketHandler,
    on_http: HttpHandler,
    max_body_bytes: int,
) -> None:
    """Serve one accepted stream until it is done; never raises (except Cancelled).

    Resource handling: the stream is closed when this returns, whatever happened.
    """
    try:
        try:
            with trio.fail_after(HEAD_TIMEOUT_S):
                request, raw, conn = await read_request_head(stream)
        except (EOFError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except h11.RemoteProtocolError as exc:
            # h11 knows which status fits (400, 413, 431)
            status = exc.error_status_hint or 400
            await stream.send_all(
                b"HTTP/1.1 %d Bad Request\r\ncontent-length: 12\r\n"
                b"connection: close\r\n\r\nbad request\n" % status
            )
            return
        if request.is_websocket_upgrade:
            # the session lasts as long as the client: keep nothing of the head parse
            del conn
            await on_websocket(stream, request, raw)
            return
        body = b""
        if request.method in ("POST", "PUT", "PATCH"):
            got = None
            with trio.move_on_after(HEAD_TIMEOUT_S):
                got = await _read_body(stream, conn, max_body_bytes)
            if got is None:
                await send_response(stream, conn, HttpResponse(413, b"request body too large\n"))
                return
            body = got
        response = await on_http(
            HttpRequest(
                request.method,
                request.target,
                request.path,
                request.query,
                request.headers,
                request.remote,
                body,
            )
        )
        await send_response(stream, conn, response)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        log.exception("error while serving a connection")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()


def first(query: dict[str, list[str]], name: str) -> str | None:
    """The first value of a query parameter, or None."""
    values = query.get(name)
    return values[0] if values else None
