"""The server's lifecycle: storage, nurseries, the accept loop, graceful shutdown.

Task tree (each line a nursery or a long-lived task)::

    Server.run                        storage opened before, closed after
     ├─ CommitQueue.run               the one writer: group commit for every room
     └─ root nursery
      ├─ Timers.run                   every ping, pong deadline and token expiry
      ├─ RoomRegistry.run             one nursery per open room: room task + components
      ├─ watch_grants                 stored role changes reach connected members
      └─ connections nursery
          ├─ accept loop              transport.accept.serve_listeners (backs off on EMFILE)
          └─ one task per connection  front door: HTTP/1.1 requests | WebSocket session
               └─ outbox writer task     (the session's task itself reads)

What serves clients lives elsewhere and takes the
:class:`~collabtrio.app.context.AppContext` built here: the routes
(:mod:`collabtrio.http.routes`), the Socket.IO connect logic and handlers
(:mod:`collabtrio.app`), the transport (:mod:`collabtrio.transport`).

Graceful shutdown (:meth:`Server.shutdown`, SIGINT/SIGTERM in the CLI): stop
accepting, flush every room's pending writes (so their confirmations still reach the
clients), disconnect every client with WebSocket close code 1001, give connections
``shutdown_grace_s`` to finish, then cancel rooms (each runs a final shielded flush)
and timers, stop the writer once it has served everyone, close storage and return.
Cancelling the scope around :func:`serve` instead tears everything down at once (rooms
still flush, shielded); either way no task or socket is left behind.

Phase (:attr:`Server.phase`, what ``/readyz`` answers from): ``starting`` until the
storage is open and the listeners are bound, ``serving``, ``draining`` from the call
to :meth:`Server.shutdown` on (so a load balancer takes the node out of rotation
while it drains), ``stopped`` once :meth:`Server.run` has returned.

Metrics: each server has its own counters
(:class:`~collabtrio.observability.sink.Metrics`, handed to the writer, the rooms and
the application) and its own Prometheus registry (:attr:`Server.metrics_registry`),
so several servers in one process share nothing; with ``metrics=False`` it counts
nothing (a :class:`~collabtrio.observability.sink.NullMetrics`) and has no
``/metrics`` route.

Error handling: an exception in one client's task is logged and ends that client
only; it never reaches the connections nursery, so it cannot cancel the server.

Embedding API, for back-end code in the same trio program: :meth:`Server.yjs_json`,
:meth:`Server.yjs_text` and :meth:`Server.replace_yjs` go through the room's own
mailbox (a room that is not open is opened, and closes again when idle), so they are
ordered with the members' commands. :meth:`Server.publish`, :meth:`Server.apply_op`,
:meth:`Server.stats`, :meth:`Server.list_rooms`, :meth:`Server.room_state` and
:meth:`Server.disconnect_user` are the HTTP API's operations
(:class:`~collabtrio.app.service.BackendService`, which the API's routes call too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, overload

import trio
from prometheus_client.registry import CollectorRegistry

from .app.context import AppContext
from .app.grants import watch_grants
from .app.service import DEFAULT_REASON, BackendComponent, BackendService
from .auth.tokens import Authenticator
from .config import Config
from .http.auth import ApiKeys
from .http.routes import build_router
from .observability.prometheus import (
    MetricsEndpoint,
    ServerCollector,
    build_registry,
    metrics_keys,
)
from .observability.sink import Metrics, NullMetrics
from .protocol.ids import check_room_id
from .rooms.commands import YjsReadCmd, YjsResetCmd
from .rooms.keeper import DocumentKeeper
from .rooms.registry import RoomRegistry
from .rooms.yjs import YjsComponent, doc_json, doc_text
from .storage import open_store
from .storage.base import Store
from .storage.writer import CommitQueue
from .timers import Timers
from .transport.accept import FD_MARGIN, raise_open_file_limit, serve_listeners
from .transport.frontdoor import Router, serve_stream
from .transport.session import SocketIOSession

log = logging.getLogger(__name__)

ROOM_COMPONENTS = (DocumentKeeper, YjsComponent, BackendComponent)
"""What every room runs besides its own task, in start order."""


class Server:
    """A collabtrio server (see the module docstring).

    Use :func:`serve` to run one; :meth:`run` is the same with the object in hand.
    After ``task_status.started``, :attr:`port` is the bound port and :attr:`context`
    the running application.
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
        self.api_keys = ApiKeys.from_config(config)  # ValueError for a bad key or file
        self.metrics: Metrics = Metrics() if config.metrics else NullMetrics()
        self._metrics_keys = metrics_keys(config.metrics_api_key)  # ValueError if bad
        self.metrics_registry: CollectorRegistry | None = None
        """The Prometheus registry of this server (once running, with metrics on)."""
        self._phase = "starting"
        self._service: BackendService | None = None
        self.timers = Timers()
        self._store = store
        self._context: AppContext | None = None
        self._router: Router | None = None
        self.port: int | None = None
        self.host = config.host
        self._conn_nursery: trio.Nursery | None = None
        self._accept_scope = trio.CancelScope()
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self.started_at = 0.0

    @property
    def phase(self) -> str:
        """``starting``, ``serving``, ``draining`` or ``stopped`` (see the module
        docstring); ``/readyz`` answers 200 only while ``serving``."""
        return self._phase

    @property
    def context(self) -> AppContext:
        """The running application (available once :meth:`run` has started)."""
        if self._context is None:
            raise RuntimeError("the server is not running")
        return self._context

    @property
    def store(self) -> Store:
        """The open store (available once :meth:`run` has started)."""
        if self._store is None:
            raise RuntimeError("the server has not opened its storage yet")
        return self._store

    @property
    def registry(self) -> RoomRegistry:
        """The open rooms (available once :meth:`run` has started)."""
        return self.context.registry

    @property
    def commits(self) -> CommitQueue:
        """The group-commit queue in front of the store."""
        return self.context.commits

    @property
    def connections(self) -> set[SocketIOSession]:
        """Every live Socket.IO session."""
        return self.context.sessions

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound listener."""
        return f"http://{self.host}:{self.port}"

    @property
    def service(self) -> BackendService:
        """The back-end operations (available once :meth:`run` has started)."""
        if self._service is None:
            raise RuntimeError("the server is not running")
        return self._service

    # -- embedding API -------------------------------------------------------------------

    @overload
    async def publish(self, rooms: str, event: str, data: Any = None) -> dict[str, Any]: ...

    @overload
    async def publish(self, rooms: Sequence[str], event: str, data: Any = None
                      ) -> dict[str, Any]: ...

    async def publish(self, rooms: str | Sequence[str], event: str, data: Any = None
                      ) -> dict[str, Any]:
        """Send ``broadcast {room, event, data, userId: null, userName: null, socketId:
        null}`` to the members of a room (``rooms`` a str) or of several (a list);
        ``user:<sub>`` reaches every connection of that user.

        Returns, for one room, ``{ok, room, open, delivered}``; for a list, ``{ok,
        delivered, rooms: [{room, open, delivered}]}`` (``delivered``: Socket.IO
        connections handed the event, once the room has sent it). A room that is not
        open reaches nobody and is not opened. Raises
        :class:`~collabtrio.errors.CollabError`: ``RATE_LIMITED`` (a room's mailbox is
        full: nothing was sent), ``INVALID_ROOM``, ``VALIDATION``, ``TOO_LARGE``.
        """
        if isinstance(rooms, str):
            result = await self.service.publish([rooms], event, data)
            return {"ok": True, **result["rooms"][0]}
        return await self.service.publish(rooms, event, data)

    async def apply_op(
        self, room: str, *, operation_id: str, op: str, collection: str, id: str,
        data: Any = None, timestamp: float | None = None, user_id: str = "server",
        user_name: str | None = None,
    ) -> dict[str, Any]:
        """Apply a document operation as ``user_id`` and return its result once
        committed, ``{ok, operationId, seq, serverTimestamp}`` (``epoch`` too for a
        ``replace``): the same validation, persistence, broadcast and idempotency as a
        client's ``op`` (see :meth:`~collabtrio.app.service.BackendService.apply_op`).
        """
        return await self.service.apply_op(
            room, operation_id=operation_id, op=op, collection=collection, id=id, data=data,
            timestamp=timestamp, user_id=user_id, user_name=user_name)

    def stats(self) -> dict[str, Any]:
        """Connections by transport, open rooms and members, users, uptime, version and
        the storage's commit counts (``GET /api/stats`` adds a storage ping)."""
        return self.service.stats()

    def list_rooms(self, *, limit: int | None = None, cursor: str | None = None,
                   prefix: str | None = None) -> dict[str, Any]:
        """A page of open rooms in id order, ``{rooms, nextCursor}`` (see
        :meth:`~collabtrio.app.service.BackendService.list_rooms`)."""
        return self.service.list_rooms(limit=limit, cursor=cursor, prefix=prefix)

    async def room_state(self, room: str) -> dict[str, Any]:
        """``{room, open, seq, epoch, state, members, uniqueUsers, connections}``: an
        open room from memory, another from storage without opening it."""
        return await self.service.room_state(room)

    def disconnect_user(self, sub: str, reason: str = DEFAULT_REASON) -> dict[str, Any]:
        """Close every connection of user ``sub`` (Socket.IO clients get
        ``disconnect-reason {reason}`` and a DISCONNECT, so stock clients do not
        reconnect; y-websocket peers close with 4403); returns the counts."""
        return self.service.disconnect_user(sub, reason)

    async def yjs_json(self, room: str) -> dict[str, Any]:
        """The room's Yjs document as JSON: ``{root name: value}``, a ``Y.Text`` as its
        plain text, a ``Y.Array`` as a list, a ``Y.Map`` as a dict, an
        ``Y.XmlFragment`` as its XML string (see :func:`collabtrio.rooms.yjs.doc_json`).

        It includes every update applied before the call, stored or still being
        stored. Raises :class:`~collabtrio.errors.CollabError`: ``INVALID_ROOM``, or
        ``STORAGE_UNAVAILABLE`` if the room cannot be loaded.
        """
        return dict(await self.registry.call(
            check_room_id(room), lambda caller: YjsReadCmd(caller, 0, doc_json)))

    async def yjs_text(self, room: str, name: str) -> str:
        """The plain text of the ``Y.Text`` called ``name`` in the room's Yjs document
        ("" if there is none); errors as :meth:`yjs_json`."""
        return str(await self.registry.call(
            check_room_id(room), lambda caller: YjsReadCmd(caller, 0,
                                                           lambda doc: doc_text(doc, name))))

    async def replace_yjs(self, room: str, update: bytes | None = None) -> str:
        """Replace the room's Yjs document with the one ``update`` holds (None: delete
        it, an empty document), as an admin would; returns the new Yjs epoch.

        In one commit the stored snapshot becomes ``update``, the update log is cleared
        and the epoch renewed. Then Socket.IO members get ``yjs-reset {room, epoch}``
        (they must drop their document and ``yjs-sync`` again; updates from their old
        one are refused with ``EPOCH_MISMATCH``) and y-websocket peers are closed with
        4409. Raises :class:`~collabtrio.errors.CollabError`: ``INVALID_ROOM``,
        ``VALIDATION`` (not a Yjs update), ``TOO_LARGE`` (past
        ``max_document_bytes``), ``STORAGE_UNAVAILABLE`` (the outcome is then unknown:
        the room reloads what is stored before its next Yjs command).
        """
        return str(await self.registry.call(
            check_room_id(room), lambda caller: YjsResetCmd(caller, 0, update)))

    # -- lifecycle -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Ask for a graceful shutdown (returns at once; :meth:`run` then returns).

        From now on :attr:`phase` is ``draining`` and ``/readyz`` answers 503."""
        if self._phase in ("starting", "serving"):
            self._phase = "draining"
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
        metrics = self.metrics
        commits = CommitQueue(store, max_batch=cfg.max_ops_per_commit, observer=metrics)
        registry = RoomRegistry(cfg, store, commits, components=ROOM_COMPONENTS,
                                wall_clock=self.wall_clock, metrics=metrics)
        ctx = self._context = AppContext(cfg, self.auth, store, commits, registry, self.timers,
                                         self.wall_clock, metrics=metrics)
        service = self._service = BackendService(ctx)
        metrics_route: MetricsEndpoint | None = None
        if cfg.metrics:
            collector = ServerCollector(ctx, service, lambda: self._phase)
            self.metrics_registry = build_registry(collector)
            metrics_route = MetricsEndpoint(collector, self.metrics_registry,
                                            self._metrics_keys)
        self._router = build_router(ctx, service=service, keys=self.api_keys,
                                    phase=lambda: self._phase, metrics=metrics_route)
        try:
            async with trio.open_nursery() as writer:
                await writer.start(commits.run)
                async with trio.open_nursery() as root:
                    await root.start(self.timers.run)
                    await root.start(registry.run)
                    await root.start(watch_grants, ctx)
                    listeners: list[trio.SocketListener] = []
                    if listen:
                        # one descriptor per connection, authenticated or not
                        raise_open_file_limit(cfg.max_connections + cfg.max_unauthenticated
                                              + FD_MARGIN)
                        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
                        self.port = listeners[0].socket.getsockname()[1]
                    async with trio.open_nursery() as conns:
                        self._conn_nursery = conns
                        if listeners:
                            conns.start_soon(self._accept, listeners, conns)
                        self.started_at = service.started_at = trio.current_time()
                        log.info("collabtrio listening on %s", self.url if listen else "memory")
                        names = self.api_keys.names()
                        if names:
                            log.info("HTTP API: %d API keys (%s)", len(names), ", ".join(names))
                        else:
                            log.info("HTTP API: no API key configured; /api/ answers 401")
                        if self._phase == "starting":  # not already asked to stop
                            self._phase = "serving"
                        task_status.started(self)
                        await self._shutdown.wait()
                        await self._drain(conns)
                    root.cancel_scope.cancel()
                writer.cancel_scope.cancel()
        finally:
            log.info("storage: %d transactions for %d room commits",
                     commits.transactions, commits.requests)
            self._phase = "stopped"
            if owns_store:  # a store passed in belongs to the caller
                with trio.CancelScope(shield=True):
                    await store.close()
            self._stopped.set()

    async def _drain(self, conns: trio.Nursery) -> None:
        cfg = self.config
        ctx = self.context
        log.info("shutting down: flushing rooms, closing %d connections", len(ctx.sessions))
        self._accept_scope.cancel()
        with trio.move_on_after(cfg.flush_timeout_s):
            await ctx.registry.flush_all()
        for session in list(ctx.sessions):
            # no Socket.IO DISCONNECT: stock clients then reconnect by themselves
            session.close("server shutdown", 1001, notify=False)
        conns.cancel_scope.deadline = trio.current_time() + cfg.shutdown_grace_s

    async def _accept(self, listeners: list[trio.SocketListener], conns: trio.Nursery) -> None:
        with self._accept_scope:
            # not trio.serve_listeners: out of descriptors, it logs every failed accept
            await serve_listeners(self._serve_stream, listeners, handler_nursery=conns)

    async def _serve_stream(self, stream: trio.abc.Stream, remote: str | None = None) -> None:
        assert self._router is not None
        await serve_stream(stream, self._router, max_body_bytes=self.config.max_payload,
                           keep_alive_s=self.config.http_keep_alive_s, remote=remote)

    def connect_stream(self, stream: trio.abc.Stream, *, remote: str | None = None) -> None:
        """Serve a client on an already-open stream (e.g. one end of a memory pair);
        ``remote`` is the client's ``host:port`` to record (default: the stream's peer,
        ``memory`` for an in-memory stream)."""
        if self._conn_nursery is None:
            raise RuntimeError("the server is not running")
        self._conn_nursery.start_soon(self._serve_stream, stream, remote)


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
