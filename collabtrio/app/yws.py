"""The y-websocket endpoint, ``GET /yjs/<room>``: stock ``WebsocketProvider`` clients.

Theory of operation: a y-websocket connection is one more kind of room member. The
handshake is checked before any document data: the origin (``--cors-origins``, as for
Socket.IO), the room id, and the token (``?token=`` or ``Authorization: Bearer``); a
refusal is an HTTP error (400, 401, 403). Once accepted, the connection joins the
room with the role its token and grants give it, as a :class:`YWebsocketPeer`: a
``Peer`` that gets neither Socket.IO frames nor presence, only the y-protocols message
the room's Yjs component attaches to what it broadcasts (``Outgoing.yws``).

Messages (one y-protocols message per binary WebSocket message, see
``protocol/yprotocol.py``) become the same commands a Socket.IO client's Yjs events
do: sync step 1 -> a ``YjsSyncCmd`` answered with step 2; step 2 and updates -> a
``YjsUpdateCmd`` each (no ack: durability for these peers is the group-commit window);
awareness -> a ``YjsAwarenessCmd`` (echoed to the sender too: the stock provider
closes a socket that hears nothing for 30 s and counts on its own renewals coming
back). On join the Yjs component sends its sync step 1 and the awareness states; a
WebSocket ping every ``ping_interval_ms`` keeps the socket alive through proxies.

Epoch: ``?epoch=`` names the Yjs epoch of the document the provider holds (from a
Socket.IO join ack's ``yjsEpoch`` or a ``yjs-sync`` ack). It is checked when the peer
joins, after the token and before any document data: another epoch closes with 4409
("epoch mismatch"), in the range the stock provider does not reconnect from, so a
document from an old timeline is never merged into the new one. When the room's Yjs
document is replaced (``yjs-reset``), its y-websocket peers are closed with 4409 too.

Refusals: a ``read`` member's update is not applied and it gets the y-protocols auth
message (permission denied). A malformed message, a text message or a refused update
(``VALIDATION``, ``TOO_LARGE``) closes with 4400, which the provider takes as "stop
reconnecting"; a token that expires while connected 4401 (there is no refresh);
anything transient (storage, a full room, the rate limit, shutdown) closes with a
code below 4000 so the provider reconnects and syncs again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

import trio

from ..auth.roles import check_join_allowed, resolve_role
from ..auth.tokens import Identity
from ..errors import CollabError, ErrorCode
from ..observability.sink import NULL_METRICS, Metrics
from ..protocol import yprotocol
from ..protocol.ids import Role, check_room_id
from ..protocol.outgoing import Outgoing
from ..rooms.commands import Join, Leave, YjsAwarenessCmd, YjsHelloCmd, YjsSyncCmd, YjsUpdateCmd
from ..rooms.mailbox import MailboxClosed
from ..rooms.room import Room
from ..storage.base import StorageError
from ..transport.cors import OriginPolicy
from ..transport.frontdoor import (
    HttpRequest,
    HttpResponse,
    abort_stream,
    first,
    send_error,
    send_response,
)
from ..transport.limits import Admission, TokenBucket
from ..transport.outbox import Outbox
from ..transport.websocket import HandshakeError, ServerWebSocket, WebSocketClosed
from .context import AppContext

log = logging.getLogger(__name__)

__all__ = ["YJS_PATH", "YWebsocketEndpoint", "YWebsocketPeer"]

YJS_PATH = "/yjs/"

CLOSE_REFUSED = 4400  # malformed input or a refused update: do not reconnect
CLOSE_UNAUTHORIZED = 4401
CLOSE_EPOCH_MISMATCH = 4409  # another timeline's document: do not reconnect with it
CLOSE_TRY_AGAIN = 1013
CLOSE_INTERNAL = 1011
CLOSE_POLICY = 1008
CLOSE_GRACE_S = 5.0

_EPOCH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

_PERMANENT = {ErrorCode.VALIDATION, ErrorCode.TOO_LARGE, ErrorCode.INVALID_ROOM}


class YWebsocketPeer:
    """A y-websocket connection as a room member (see the module docstring)."""

    echo_awareness = True

    def __init__(self, ws: ServerWebSocket, identity: Identity,
                 metrics: Metrics = NULL_METRICS) -> None:
        self.ws = ws
        self.metrics = metrics
        self._identity = identity
        self._sid = "yws-" + secrets.token_urlsafe(12)
        self._rooms: dict[str, Any] = {}
        self.pending_joins = 0
        self._close_reason: str | None = None
        self.joined = trio.Event()

    @property
    def sid(self) -> str:
        """A socket id of its own (``yws-...``), as other members see it."""
        return self._sid

    @property
    def identity(self) -> Identity:
        """The token's identity."""
        return self._identity

    @property
    def rooms(self) -> MutableMapping[str, Any]:
        """The room it is in (one), kept by the room."""
        return self._rooms

    @property
    def close_reason(self) -> str | None:
        """Why it is closing, once it is."""
        return self._close_reason

    def close(self, code: int, reason: str) -> None:
        """Close the WebSocket (after what is queued)."""
        if self._close_reason is None:
            self._close_reason = reason
            self.ws.close(code, reason[:120])

    def send(self, out: Outgoing, volatile: bool = False) -> None:
        """Queue the y-protocols form of ``out``, if it has one (else nothing)."""
        frame = out.yws
        if frame is not None and self._close_reason is None and not self.ws.outbox.push(
                frame, volatile) and not volatile:
            self.metrics.slow_consumer()
            self.close(CLOSE_TRY_AGAIN, "slow-consumer")

    def emit(self, event: str, payload: Any, volatile: bool = False) -> None:
        """Only the answers to its join matter here."""
        if event == "joined":
            self.joined.set()
        elif event == "yjs-reset":
            # the room's document was replaced: the provider's must not come back
            self.close(CLOSE_EPOCH_MISMATCH, "epoch mismatch")
        elif event == "room-error":
            # the join was refused (or the room failed): closed, so the provider retries
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            self.close(CLOSE_TRY_AGAIN, f"room error: {error.get('message')}")
            self.joined.set()

    def ack(self, ack_id: int, payload: Any) -> None:
        """y-websocket has no acks."""

    def confirm(self, ack_id: int | None, result: dict[str, Any]) -> None:
        """y-websocket has no acks."""

    def reply_error(self, ack_id: int | None, err: CollabError, event: str | None,
                    operation_id: str | None = None) -> None:
        """A refusal: the auth message for a forbidden update, else a close."""
        self.metrics.refusal(err.code)
        if err.code is ErrorCode.EPOCH_MISMATCH:
            self.close(CLOSE_EPOCH_MISMATCH, "epoch mismatch")
        elif err.code is ErrorCode.FORBIDDEN:
            self.send(Outgoing.yws_only(yprotocol.encode_message(
                yprotocol.AuthMessage("permission denied"))))
        elif err.code in _PERMANENT:
            self.close(CLOSE_REFUSED, f"{err.code}: {err.message}")
        elif err.code is ErrorCode.RATE_LIMITED:
            self.close(CLOSE_POLICY, "rate limited")
        else:
            self.close(CLOSE_TRY_AGAIN if err.retryable else CLOSE_INTERNAL,
                       f"{err.code}: {err.message}")


class YWebsocketEndpoint:
    """``/yjs/<room>``: the router's WebSocket handler (see the module docstring)."""

    def __init__(self, ctx: AppContext, admission: Admission | None = None) -> None:
        self.ctx = ctx
        self.origins = OriginPolicy(ctx.config.cors_origins or "")
        self.admission = admission
        """The Socket.IO endpoint's connection counts, shared: a y-websocket peer takes
        one of ``max_connections`` like a Socket.IO connection (it authenticates in its
        handshake, so it is never among the unauthenticated)."""

    def _token(self, request: HttpRequest) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip() or None
        return first(request.query, "token") or None

    async def websocket(self, stream: trio.abc.Stream, request: HttpRequest, rest: bytes) -> None:
        """Serve one y-websocket connection until it ends."""
        ctx, cfg = self.ctx, self.ctx.config
        ws = ServerWebSocket(stream, Outbox(cfg.outbox_max_bytes),
                             max_message_size=cfg.max_payload)
        try:
            ws.start_handshake(request.method, request.headers, rest)
        except HandshakeError as exc:
            await send_error(stream, exc.status, f"bad WebSocket handshake: {exc}", exc.headers)
            return
        del rest
        try:
            if not self.origins.allows(request):
                raise CollabError(ErrorCode.FORBIDDEN, "origin not allowed (see --cors-origins)")
            room_id = check_room_id(unquote(request.path[len(YJS_PATH):]))
            identity = ctx.auth.authenticate(self._token(request))
            check_join_allowed(identity, room_id)
            epoch = first(request.query, "epoch") or None
            if epoch is not None and not _EPOCH_RE.fullmatch(epoch):
                raise CollabError(ErrorCode.VALIDATION, "epoch: not an epoch this server "
                                  "hands out (1-64 characters of A-Z, a-z, 0-9, _ and -)")
            try:
                grants = await ctx.store.grants_for(identity.user_id)
            except StorageError:
                grants = {}
        except CollabError as err:
            status = {ErrorCode.AUTH_REQUIRED: 401, ErrorCode.INVALID_TOKEN: 401,
                      ErrorCode.TOKEN_EXPIRED: 401, ErrorCode.FORBIDDEN: 403}.get(err.code, 400)
            await send_response(stream, HttpResponse(
                status, json.dumps({"error": err.to_wire()}).encode(), "application/json"))
            return
        role = resolve_role(identity, room_id, grants=grants, default=cfg.default_role)
        admission = self.admission
        if admission is not None and not admission.take_connection():
            await send_response(stream, HttpResponse(503, json.dumps(
                {"message": "server full (max_connections); try again later"}).encode(),
                "application/json", (("retry-after", "1"),)))
            return
        try:
            await self._run(stream, ws, identity, room_id, role, epoch)
        finally:
            if admission is not None:
                admission.release_connection()

    async def _run(self, stream: trio.abc.Stream, ws: ServerWebSocket, identity: Identity,
                   room_id: str, role: Role, epoch: str | None) -> None:
        ctx = self.ctx
        await ws.accept()
        metrics = ctx.metrics
        peer = YWebsocketPeer(ws, identity, metrics)
        counted = False
        room: Room | None = None
        try:
            async with trio.open_nursery() as nursery:
                # a writer task runs in this nursery only while frames wait
                ws.outbox.attach(stream, nursery)
                try:
                    room = ctx.registry.get_or_open(room_id)
                    peer.pending_joins += 1
                    await room.mailbox.put(Join(peer, None, role, room_id,
                                                yjs_epoch=epoch))
                    await peer.joined.wait()
                    if peer.close_reason is None:  # joined (a refusal closed it)
                        metrics.connected("y-websocket")
                        counted = True
                        await room.mailbox.put(YjsHelloCmd(peer, None))
                        nursery.start_soon(self._pings, peer)
                        if identity.expires_at is not None:
                            nursery.start_soon(self._expire, peer, identity.expires_at,
                                               nursery.cancel_scope)
                        await self._serve(peer, room)
                except MailboxClosed:
                    peer.close(CLOSE_TRY_AGAIN, "room closed; reconnect")
                finally:
                    if room is not None:
                        with contextlib.suppress(MailboxClosed):
                            room.mailbox.put_nowait(Leave(peer, None))
                    peer.close(1000, "bye")
                    ws.outbox.close()
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await ws.outbox.drain()
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("y-websocket connection failed")
        finally:
            if counted:
                metrics.disconnected(peer.close_reason)
            if ws.outbox.dropped_volatile:
                metrics.dropped_volatile(ws.outbox.dropped_volatile)
            if ws.outbox.torn:
                abort_stream(stream)

    async def _expire(self, peer: YWebsocketPeer, expires_at: float,
                      scope: trio.CancelScope) -> None:
        # y-websocket has no refresh-token: the connection ends with its token
        await trio.sleep(max(0.0, expires_at - self.ctx.wall_clock()))
        peer.close(CLOSE_UNAUTHORIZED, "token expired")
        await trio.sleep(CLOSE_GRACE_S)  # a client that does not answer the close
        scope.cancel()

    async def _pings(self, peer: YWebsocketPeer) -> None:
        interval = self.ctx.config.ping_interval_ms / 1000
        while peer.close_reason is None:
            await trio.sleep(interval)
            peer.ws.ping()

    async def _serve(self, peer: YWebsocketPeer, room: Room) -> None:
        cfg = self.ctx.config
        bucket = TokenBucket(cfg.rate_limit_per_s, cfg.rate_limit_burst)
        while peer.close_reason is None:
            try:
                batch = await peer.ws.receive_batch()
            except WebSocketClosed:
                return
            for data in batch:
                if peer.close_reason is not None:
                    return
                if not bucket.take():
                    self.ctx.metrics.rate_limit()
                    peer.close(CLOSE_POLICY, "rate limited")
                    return
                if isinstance(data, str):
                    peer.close(CLOSE_REFUSED, "y-websocket messages are binary")
                    return
                try:
                    msg = yprotocol.decode_message(data)
                except yprotocol.YProtocolError as exc:
                    peer.close(CLOSE_REFUSED, f"malformed y-protocols message: {exc}")
                    return
                cmd: YjsSyncCmd | YjsUpdateCmd | YjsAwarenessCmd | None
                if isinstance(msg, yprotocol.SyncStep1):
                    cmd = YjsSyncCmd(peer, None, msg.state_vector, step2=True)
                elif isinstance(msg, yprotocol.SyncStep2 | yprotocol.SyncUpdate):
                    cmd = YjsUpdateCmd(peer, None, msg.update)
                elif isinstance(msg, yprotocol.AwarenessMessage):
                    cmd = YjsAwarenessCmd(peer, None, msg.update)
                else:
                    cmd = None  # auth and query-awareness from a client: nothing to do
                if cmd is not None:
                    await room.mailbox.put(cmd)
