"""The server: nurseries, the accept loop, WebSocket sessions, HTTP routes, shutdown.

Task tree (each line a nursery or a long-lived task)::

    Server.run                        storage opened before, closed after
     ├─ CommitQueue.run               the one writer: group commit for every room
     └─ root nursery
      ├─ Timers.run                   every ping, pong deadline and token expiry
      ├─ RoomRegistry.run             one nursery per open room: room task + keeper
      ├─ grants watcher               stored role changes reach connected members
      └─ connections nursery
          ├─ accept loop              trio.serve_listeners
          └─ one task per client      h11 head → HTTP route | WebSocket session
               └─ outbox writer task     (the client's task itself reads)

Graceful shutdown (:meth:`Server.shutdown`, SIGINT/SIGTERM in the CLI): stop
accepting, flush every room's pending writes (so their confirmations still reach the
clients), disconnect every client with WebSocket close code 1001, give connections
``shutdown_grace_s`` to finish, then cancel rooms (each runs a final shielded flush)
and timers, stop the writer once it has served everyone, close storage and return.
Cancelling the scope around :func:`serve` instead tears everything down at once (rooms
still flush, shielded); either way no task or socket is left behind.

Error handling: an exception in one client's task is logged and ends that client
only; it never reaches the connections nursery, so it cannot cancel the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import trio

from . import handlers
from .auth import Authenticator, check_room_id, resolve_role
from .config import Config
from .errors import CollabError, ErrorCode
from .rooms.mailbox import MailboxClosed
from .rooms.registry import RoomRegistry
from .rooms.room import SetRole
from .storage import open_store
from .storage.base import StorageError, Store
from .storage.writer import CommitQueue
from .timers import Timers
from .transport.connection import Connection
from .transport.frontdoor import HttpRequest, HttpResponse, first, handle_stream
from .transport.outbox import Outbox
from .transport.websocket import HandshakeError, ServerWebSocket

log = logging.getLogger(__name__)

SOCKETIO_PATH = "/socket.io/"


def _json(status: int, body: Any) -> HttpResponse:
    return HttpResponse(status, json.dumps(body).encode(), "application/json")


class Server:
    """A collabtrio server (see the module docstring).

    Use :func:`serve` to run one; :meth:`run` is the same with the object in hand.
    After ``task_status.started``, :attr:`port` is the bound port.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        config.check()
        self.config = config
        self.wall_clock = wall_clock
        self.auth = Authenticator(config, now=wall_clock)
        self.timers = Timers()
        self._store = store
        self._registry: RoomRegistry | None = None
        self.commits: CommitQueue | None = None
        self.connections: set[Connection] = set()
        self.port: int | None = None
        self.host = config.host
        self._conn_nursery: trio.Nursery | None = None
        self._accept_scope = trio.CancelScope()
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self.started_at = 0.0
        self.connections_total = 0

    @property
    def store(self) -> Store:
        """The open store (available once :meth:`run` has started)."""
        if self._store is None:
            raise RuntimeError("the server has not opened its storage yet")
        return self._store

    @property
    def registry(self) -> RoomRegistry:
        """The open rooms (available once :meth:`run` has started)."""
        if self._registry is None:
            raise RuntimeError("the server is not running")
        return self._registry

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound listener."""
        return f"http://{self.host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Ask for a graceful shutdown (returns at once; :meth:`run` then returns)."""
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`run` has finished its teardown."""
        await self._stopped.wait()

    async def run(
        self,
        *,
        listen: bool = True,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until :meth:`shutdown` or cancellation.

        With ``listen=False`` no TCP port is opened; clients come in through
        :meth:`connect_stream` (the in-memory testing harness).
        """
        cfg = self.config
        owns_store = self._store is None
        if self._store is None:
            self._store = await open_store(cfg.db, sqlite_synchronous=cfg.sqlite_synchronous)
        store = self._store
        self.commits = CommitQueue(store, max_batch=cfg.max_ops_per_commit)
        self._registry = RoomRegistry(cfg, store, self.commits, wall_clock=self.wall_clock)
        try:
            async with trio.open_nursery() as writer:
                await writer.start(self.commits.run)
                async with trio.open_nursery() as root:
                    await root.start(self.timers.run)
                    await root.start(self.registry.run)
                    root.start_soon(self._watch_grants)
                    listeners: list[trio.SocketListener] = []
                    if listen:
                        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
                        self.port = listeners[0].socket.getsockname()[1]
                    async with trio.open_nursery() as conns:
                        self._conn_nursery = conns
                        if listeners:
                            conns.start_soon(self._accept, listeners, conns)
                        self.started_at = trio.current_time()
                        log.info("collabtrio listening on %s", self.url if listen else "memory")
                        task_status.started(self)
                        await self._shutdown.wait()
                        await self._drain(conns)
                    root.cancel_scope.cancel()
                writer.cancel_scope.cancel()
        finally:
            log.info("storage: %d transactions for %d room commits",
                     self.commits.transactions, self.commits.requests)
            if owns_store:  # a store passed in belongs to the caller
                with trio.CancelScope(shield=True):
                    await store.close()
            self._stopped.set()

    async def _drain(self, conns: trio.Nursery) -> None:
        cfg = self.config
        log.info("shutting down: flushing rooms, closing %d connections", len(self.connections))
        self._accept_scope.cancel()
        with trio.move_on_after(cfg.flush_timeout_s):
            await self.registry.flush_all()
        for conn in list(self.connections):
            # no Socket.IO DISCONNECT: stock clients then reconnect by themselves
            conn.close("server shutdown", 1001, notify=False)
        conns.cancel_scope.deadline = trio.current_time() + cfg.shutdown_grace_s

    async def _watch_grants(self) -> None:
        """Poll the stored grants; on a change, re-resolve connected members' roles."""
        interval = self.config.grants_poll_s
        if interval <= 0:
            return
        last: int | None = None
        while True:
            version: int | None
            try:
                version = await self.store.grants_version()
            except StorageError:
                version = last
            if last is not None and version != last:
                await self.refresh_roles()
            last = version
            await trio.sleep(interval)

    async def refresh_roles(self) -> None:
        """Reload every connected user's grants and tell rooms about changed roles."""
        cache: dict[str, dict[str, Any]] = {}
        for conn in list(self.connections):
            identity = conn.identity
            if identity is None:
                continue
            grants = cache.get(identity.user_id)
            if grants is None:
                try:
                    grants = await self.store.grants_for(identity.user_id)
                except StorageError:
                    return
                cache[identity.user_id] = grants
            conn.grants = grants
            for room_id, room in list(conn.rooms.items()):
                role = resolve_role(identity, room_id, grants=grants,
                                    default=self.config.default_role)
                with contextlib.suppress(MailboxClosed):  # a closed room has no members
                    room.mailbox.put_nowait(SetRole(conn, role))

    async def _accept(self, listeners: list[trio.SocketListener], conns: trio.Nursery) -> None:
        with self._accept_scope:
            await trio.serve_listeners(self._serve_stream, listeners, handler_nursery=conns)

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        await handle_stream(
            stream,
            on_websocket=self._on_websocket,
            on_http=self._on_http,
            max_body_bytes=self.config.max_payload,
        )

    def connect_stream(self, stream: trio.abc.Stream) -> None:
        """Serve a client on an already-open stream (e.g. one end of a memory pair)."""
        if self._conn_nursery is None:
            raise RuntimeError("the server is not running")
        self._conn_nursery.start_soon(self._serve_stream, stream)

    # -- WebSocket sessions --------------------------------------------------------------

    async def _on_websocket(
        self, stream: trio.abc.Stream, request: HttpRequest, raw: bytes
    ) -> None:
        cfg = self.config
        ws = ServerWebSocket(stream, Outbox(cfg.outbox_max_bytes),
                             max_message_size=cfg.max_payload)
        try:
            ws.start_handshake(raw)
            del raw  # held by this frame for the whole session otherwise
        except HandshakeError as exc:
            await self._reject(stream, 400, f"bad WebSocket handshake: {exc}")
            return
        problem = self._check_upgrade(request)
        if problem is not None:
            status, message = problem
            await ws.reject(status, json.dumps({"code": 3, "message": message}).encode())
            return
        await ws.accept()
        conn = Connection(
            self, ws, headers=request.headers, query=request.query, remote=request.remote
        )
        self.connections.add(conn)
        self.connections_total += 1
        writer_done = trio.Event()

        async def writer() -> None:
            try:
                await ws.outbox.run_writer(stream)
            finally:
                writer_done.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                try:
                    await conn.run()
                finally:
                    self.connections.discard(conn)
                    # let the writer flush the last frames (close frame included)
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await writer_done.wait()
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("WebSocket session failed")

    def _check_upgrade(self, request: HttpRequest) -> tuple[int, str] | None:
        if request.path.rstrip("/") != SOCKETIO_PATH.rstrip("/"):
            return 404, "not found"
        if first(request.query, "EIO") != "4":
            return 400, "unsupported Engine.IO version (EIO=4 required)"
        if first(request.query, "transport") != "websocket" or first(request.query, "sid"):
            return 400, "only the websocket transport is supported"
        if len(self.connections) >= self.config.max_connections:
            return 503, "server full"
        return None

    async def _reject(self, stream: trio.abc.Stream, status: int, message: str) -> None:
        body = json.dumps({"code": 3, "message": message}).encode()
        head = (
            f"HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        try:
            await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # -- the App interface used by connections ------------------------------------------

    async def on_connect(self, conn: Connection, auth: Any) -> None:
        """Authenticate (token from auth, then Authorization header, then ?token=)."""
        token: Any = None
        if isinstance(auth, dict):
            token = auth.get("token")
            rooms = auth.get("rooms")
            if isinstance(rooms, list):
                conn.auth_rooms = rooms
            elif rooms is not None:
                conn.auth_rooms = [rooms]
        if not token:
            header = conn.headers.get("authorization", "")
            if header.lower().startswith("bearer "):
                token = header[7:].strip()
        if not token:
            token = first(conn.query, "token")
        if token is not None and not isinstance(token, str):
            raise CollabError(ErrorCode.INVALID_TOKEN, "token must be a string")
        conn.identity = self.auth.authenticate(token or None)
        try:
            conn.grants = await self.store.grants_for(conn.identity.user_id)
        except StorageError as exc:
            # roles then come from the token and the default until the next poll
            log.warning("cannot load grants for %s: %s", conn.identity.user_id, exc)
        self.registry.add_user_connection(conn)
        self.schedule_token_expiry(conn)

    async def on_event(self, conn: Connection, name: str, payload: Any, ack_id: int | None) -> None:
        """Dispatch one event (``$connected`` is the connection's own hook)."""
        if name == "$connected":
            await self._join_at_connect(conn)
            return
        handler = handlers.HANDLERS.get(name)
        if handler is None:
            raise CollabError(ErrorCode.UNKNOWN_EVENT, f"unknown event {name!r}")
        await handler(self, conn, payload, ack_id)

    def on_close(self, conn: Connection) -> None:
        """Remove ``conn`` from every room at once, and from its personal room."""
        from .rooms.room import Leave

        for room in list(conn.rooms.values()):
            with contextlib.suppress(MailboxClosed):  # a closed room has no members
                room.mailbox.put_nowait(Leave(conn))
        self.registry.remove_user_connection(conn)

    async def _join_at_connect(self, conn: Connection) -> None:
        wanted: list[Any] = [*conn.auth_rooms, *conn.query.get("room", [])]
        for room in wanted:
            try:
                room_id = check_room_id(room)
                await handlers.request_join(self, conn, room_id, None, at_connect=True)
            except CollabError as err:
                conn.emit(
                    "room-error",
                    {"room": room if isinstance(room, str) else None, "ok": False,
                     "error": err.to_wire()},
                )

    def schedule_token_expiry(self, conn: Connection) -> None:
        """Warn a connection when its token expires, then disconnect it after the grace."""
        identity = conn.identity
        if conn.expiry_timer is not None:
            conn.expiry_timer.cancel()
            conn.expiry_timer = None
        if identity is None or identity.expires_at is None:
            return
        delay = max(0.0, identity.expires_at - self.wall_clock())
        if math.isinf(delay):
            return
        expected = identity

        def expired() -> None:
            if conn.identity is not expected or conn.close_reason is not None:
                return
            conn.emit(
                "error",
                {"code": "TOKEN_EXPIRED", "retryable": True,
                 "message": f"token expired; send refresh-token within "
                            f"{self.config.token_refresh_grace_s:g}s"},
            )

            def too_late() -> None:
                if conn.identity is expected:
                    conn.close("token expired", 1008)

            conn.expiry_timer = self.timers.call_later(
                self.config.token_refresh_grace_s, too_late
            )

        conn.expiry_timer = self.timers.call_later(delay, expired)

    # -- HTTP ----------------------------------------------------------------------------

    async def _on_http(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        if path == "/healthz" and request.method in ("GET", "HEAD"):
            try:
                await self.store.ping()
            except Exception as exc:
                return _json(503, {"status": "unavailable", "storage": str(exc)})
            return _json(200, {"status": "ok"})
        if path.rstrip("/") == SOCKETIO_PATH.rstrip("/"):
            return _json(
                400,
                {"code": 3, "message": "HTTP long-polling is not supported by this version; "
                 "connect with transports: ['websocket']"},
            )
        return HttpResponse(404, b"not found\n")

    def stats(self) -> dict[str, Any]:
        """Connections and rooms with member counts."""
        return {
            "connections": len(self.connections),
            "rooms": {rid: len(room.members) for rid, room in self.registry.rooms.items()},
        }


async def serve(
    config: Config,
    *,
    store: Store | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a collabtrio server until cancelled or shut down.

    Embed it in your own trio program with ``server = await nursery.start(serve,
    config)``: the :class:`Server` handed back has the bound ``port`` (use
    ``Config(port=0)`` for a free one) and a :meth:`Server.shutdown` method.
    Cancelling the surrounding scope stops it cleanly.
    """
    await Server(config, store=store).run(task_status=task_status)
