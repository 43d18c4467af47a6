"""One client's Engine.IO v4 session on its transports: WebSocket, long-polling, the upgrade.

Theory of operation: an :class:`EngineIOSession` drives the sans-IO
:class:`~collabtrio.protocol.engineio_session.EngineSession` (pings, pongs, close,
upgrade rules) over its *carrier*: a WebSocket (whose reader is :meth:`run`) or a
long-polling queue (which the endpoint's ``GET`` and ``POST`` requests drive), and
moves from polling to a WebSocket during an upgrade (:meth:`run_upgrade`). Everything
sent is an :class:`~collabtrio.protocol.outgoing.Outgoing` handed to the current
carrier: the WebSocket's :class:`~collabtrio.transport.outbox.Outbox` (written by its
writer task) or the :class:`~collabtrio.transport.polling.PollQueue`. Pings come from
the server's single :class:`~collabtrio.timers.Timers` task.

What the messages mean is the subclass's business (:mod:`.session`: Socket.IO): it
gets each ``MESSAGE`` through :meth:`EngineIOSession._on_data` and is told when the
session ends.

Invariants: the carrier the engine session names is the one written to (so nothing
is reordered across an upgrade); however the session ends, :meth:`_finish` runs once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

import trio

from ..config import Config
from ..observability.sink import Metrics
from ..protocol import engineio
from ..protocol.engineio_session import (
    Closed,
    EngineSession,
    Message,
    Ping,
    RemoteProtocolError,
    Side,
    State,
    Transport,
    Upgraded,
    UpgradeProbe,
)
from ..protocol.outgoing import Outgoing
from ..timers import TimerHandle, Timers
from .outbox import Outbox
from .polling import PollQueue
from .websocket import ServerWebSocket, WebSocketClosed

log = logging.getLogger(__name__)

__all__ = ["CLOSE_GOING_AWAY", "CLOSE_POLICY", "CLOSE_PROTOCOL_ERROR", "CLOSE_TRY_AGAIN_LATER",
           "EngineHost", "EngineIOSession", "new_sid"]

# Close codes of RFC 6455 (and its IANA registry) used here.
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013

_PING = Outgoing.engineio(engineio.PING_FRAME)
_NOOP = Outgoing.engineio(engineio.NOOP_FRAME)
_CLOSE = Outgoing.engineio(engineio.CLOSE_FRAME)
_PROBE_PONG = Outgoing.engineio(engineio.PROBE_PONG)


def _engine_packet(packet: engineio.Packet) -> Outgoing:
    text = engineio.encode_ws(packet)
    assert isinstance(text, str)  # only MESSAGE packets carry bytes
    return Outgoing.engineio(text)


def new_sid() -> str:
    """A random 20-character id, as Engine.IO and Socket.IO use."""
    return secrets.token_urlsafe(15)


class EngineHost(Protocol):
    """What an Engine.IO session needs from the server above it."""

    config: Config
    timers: Timers
    metrics: Metrics
    """Where sessions count slow consumers and dropped volatile messages."""

    @property
    def sessions(self) -> set[Any]:
        """Every live session (a session adds itself at start, removes itself at end)."""


class EngineIOSession:
    """One Engine.IO session (see the module docstring).

    Attributes: ``sid`` (the Socket.IO socket id, kept here so the layer above can
    renew it), ``engine`` (the Engine.IO state, whose ``transport`` says which carrier
    is current), ``ws`` (the WebSocket, once there is one) or ``poll`` (the
    long-polling queue, until an upgrade), ``outbox`` (whichever of the two is
    current), the request's ``headers``, ``query`` and ``remote`` address, and
    ``close_reason`` once the session is ending.
    """

    __slots__ = ("_cancel", "_finished", "_on_finish", "_ping_timer", "_probe", "_push",
                 "_upgrade_timer", "app", "close_reason", "engine", "headers", "poll",
                 "posting", "query", "remote", "sid", "ws")

    def __init__(
        self,
        app: EngineHost,
        carrier: ServerWebSocket | PollQueue,
        *,
        headers: dict[str, str],
        query: dict[str, list[str]],
        remote: str,
        on_finish: Callable[[EngineIOSession], None] | None = None,
    ) -> None:
        cfg = app.config
        self.app = app
        self.headers = headers
        self.query = query
        self.remote = remote
        polling = isinstance(carrier, PollQueue)
        self.engine = EngineSession(
            Side.SERVER, "polling" if polling else "websocket", sid=new_sid(),
            upgrades=("websocket",) if polling else (),
            ping_interval_ms=cfg.ping_interval_ms, ping_timeout_ms=cfg.ping_timeout_ms,
            max_payload=cfg.max_payload,
        )
        self.ws: ServerWebSocket | None = None
        self.poll: PollQueue | None = None
        self._push: Callable[[Outgoing, bool], bool]
        if isinstance(carrier, PollQueue):
            self.poll = carrier
            self._push = carrier.push
            carrier.on_high_water = self._high_water_notice
        else:
            self.ws = carrier
            self._push = carrier.outbox.send
            carrier.outbox.on_high_water = self._high_water_frame
        self._probe: ServerWebSocket | None = None
        self.sid = new_sid()
        self.close_reason: str | None = None
        self._on_finish = on_finish
        self._finished = False
        self._cancel: trio.CancelScope | None = None
        self._ping_timer: TimerHandle | None = None
        self._upgrade_timer: TimerHandle | None = None
        self.posting = False  # a long-polling POST is being handled (one at a time)

    @property
    def outbox(self) -> Outbox | PollQueue:
        """The current outbound queue (the WebSocket's, or the long-polling one)."""
        if self.ws is not None:
            return self.ws.outbox
        assert self.poll is not None
        return self.poll

    def poll_now(self) -> bool:
        """A poll must be answered at once even with nothing to send: an upgrade is in
        progress, and the client waits for its poll to end before it sends UPGRADE."""
        return self._probe is not None and self.engine.probing is not None

    @property
    def probing(self) -> bool:
        """A WebSocket is probing this polling session for an upgrade."""
        return self._probe is not None

    @property
    def transport(self) -> str:
        """``"websocket"`` or ``"polling"``: what the session uses now."""
        return self.engine.transport

    # -- sending -------------------------------------------------------------------------

    def send(self, out: Outgoing, volatile: bool = False) -> None:
        """Queue ``out`` for this client; a full queue disconnects it (slow-consumer)."""
        if not self._push(out, volatile):
            self.disconnect_slow_consumer()

    def emit(self, event: str, payload: Any, volatile: bool = False) -> None:
        """Send one event to this client."""
        self.send(Outgoing.event(event, payload), volatile)

    # -- closing -------------------------------------------------------------------------

    def close(self, reason: str, code: int = 1000, *, notify: bool = True,
              by_client: bool = False) -> None:
        """Disconnect this client (synchronous; the session's task, if any, does the rest).

        With ``notify`` the client first gets :meth:`_goodbye` (the Socket.IO
        DISCONNECT, so stock clients report ``io server disconnect`` and do not
        reconnect on their own). On
        long-polling a waiting ``GET`` is answered with the Engine.IO ``close`` packet
        (``noop`` when the client closed it: ``by_client``).
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        goodbye = self._goodbye() if notify else None
        if goodbye is not None:
            self._push(goodbye, False)
        if self.engine.state in (State.OPEN, State.UPGRADING):
            self.engine.close()  # on a WebSocket the close frame says it; no CLOSE packet
        if self._probe is not None:
            self._probe.close(CLOSE_GOING_AWAY, "session closed")
        if self.ws is not None:
            self.ws.close(code, reason)
            if self._cancel is not None:
                self._cancel.cancel()
        else:
            poll = self.poll
            assert poll is not None
            poll.push(_NOOP if by_client else _CLOSE)
            poll.close()
            # a graceful kick (a DISCONNECT was queued) waits for the client's next poll
            self._finish(linger=notify)

    def _high_water_notice(self, queued: int) -> Outgoing | None:
        """The ``warning`` event for a client whose queue passed half its bound (the
        queue puts it first), or None when this session has nobody to tell."""
        if self.close_reason is not None:
            return None
        limit = self.app.config.outbox_max_bytes
        log.info("%s: outbound queue past half full (%d of %d bytes)", self.sid, queued, limit,
                 extra={"sid": self.sid})
        return Outgoing.event("warning", {
            "code": "SLOW_CONSUMER",
            "message": "outbound queue is over half full; read faster, or this connection "
                       "is closed (slow-consumer) once it overflows",
            "queuedBytes": queued,
            "limitBytes": limit,
            "retryable": True,
        })

    def _high_water_frame(self, queued: int) -> bytes | None:
        notice = self._high_water_notice(queued)
        return None if notice is None else notice.ws_frames()

    def disconnect_slow_consumer(self) -> None:
        """Drop what is queued and disconnect: the client recovers with ``join {since}``."""
        if self.close_reason is not None:
            return
        log.info("disconnecting %s: slow consumer", self.sid, extra={"sid": self.sid})
        self.app.metrics.slow_consumer()
        self.outbox.clear()
        self.emit(
            "error",
            {
                "code": "SLOW_CONSUMER",
                "message": "outbound queue overflowed; rejoin with since to recover",
                "reason": "slow-consumer",
                "retryable": True,
            },
        )
        # no Socket.IO DISCONNECT: stock clients reconnect on their own and rejoin
        self.close("slow-consumer", CLOSE_POLICY, notify=False)

    # -- pings ---------------------------------------------------------------------------

    def _send_ping(self) -> None:
        if self.close_reason is not None:
            return
        now = trio.current_time()
        self.engine.ping(now)
        self._push(_PING, False)
        self._ping_timer = self.app.timers.call_at(
            now + self.engine.ping_timeout_ms / 1000, self._check_pong
        )

    def _check_pong(self) -> None:
        if self.close_reason is not None:
            return
        if self.engine.pong_overdue(trio.current_time()):
            log.info("disconnecting %s: ping timeout", self.sid, extra={"sid": self.sid})
            self.close("ping timeout", notify=False)
            return
        next_at = self.engine.next_ping_at()
        assert next_at is not None
        self._ping_timer = self.app.timers.call_at(next_at, self._send_ping)

    # -- the session's life --------------------------------------------------------------

    def start(self) -> None:
        """Queue the Engine.IO ``open`` packet and start the heartbeat (the endpoint
        calls it once, right after creating the session)."""
        cfg = self.app.config
        self.app.sessions.add(self)
        self._push(_engine_packet(self.engine.open()), False)
        self._ping_timer = self.app.timers.call_later(cfg.ping_interval_ms / 1000, self._send_ping)

    async def run(self) -> None:
        """Serve a WebSocket session until it leaves, breaks the protocol or is closed.

        Resource handling: the writer task lives in the caller's nursery (see
        :meth:`~collabtrio.transport.endpoint.EngineEndpoint.websocket`); on return a close
        frame is queued and the outbox closed, and the caller gives the writer a moment
        to drain before closing the stream.
        """
        ws = self.ws
        assert ws is not None
        try:
            await self._read(ws)
        finally:
            self._finish()

    async def run_upgrade(self, ws: ServerWebSocket) -> None:
        """Serve the WebSocket a polling session probes: the probe, the ``UPGRADE``,
        then everything, until the session ends.

        If the WebSocket goes away (or breaks the protocol, or has not upgraded within
        ``upgrade_timeout_s``) before ``UPGRADE``, the upgrade is abandoned and the
        session carries on over long-polling.
        """
        self._probe = ws

        def too_slow() -> None:
            if self._probe is ws:
                log.info("%s: upgrade abandoned: no UPGRADE in time", self.sid)
                ws.close(CLOSE_POLICY, "upgrade timeout")

        self._upgrade_timer = self.app.timers.call_later(self.app.config.upgrade_timeout_s,
                                                         too_slow)
        try:
            await self._read(ws)
        finally:
            self._upgrade_timer.cancel()
            if self.ws is ws:
                self._finish()
            else:  # never upgraded
                if self._probe is ws:
                    self._probe = None
                if self.engine.state is State.UPGRADING:
                    self.engine.abandon_upgrade()
                ws.close(CLOSE_GOING_AWAY if ws.closed is None else ws.closed.code)

    async def _read(self, ws: ServerWebSocket) -> None:
        with trio.CancelScope() as scope:
            if self.ws is ws:
                self._cancel = scope
            if self.close_reason is not None:
                scope.cancel()
            while True:
                try:
                    batch = await ws.receive_batch()
                except WebSocketClosed as exc:
                    if self.ws is ws:
                        self.close_reason = self.close_reason or f"transport close ({exc.code})"
                    return
                # the whole batch is handled before the next read, so a burst
                # reaches the rooms (and each member's writer) as one batch
                for message in batch:
                    if ws is self._probe and self.ws is not ws:
                        if not self._on_probe_message(ws, message):
                            return
                        if self.ws is ws:
                            self._cancel = scope  # upgraded: this is the reader now
                        continue
                    await self._on_message(message, "websocket")
                    if self.close_reason is not None:
                        return

    async def receive_polling(self, packets: list[engineio.Packet]) -> None:
        """Handle the packets of one long-polling ``POST``, in order."""
        for packet in packets:
            await self._on_engine_packet(packet, "polling")
            if self.close_reason is not None:
                return

    def _on_probe_message(self, ws: ServerWebSocket, message: str | bytes) -> bool:
        """One message on the WebSocket being probed; False ends the probe."""
        if self.close_reason is not None:
            # the session is closing or closed (its probe was told): the engine session
            # takes no more packets, so the probe ends here
            ws.close(CLOSE_GOING_AWAY, "session closed")
            return False
        try:
            event = self.engine.receive(engineio.decode_ws(message), "websocket")
        except RemoteProtocolError as exc:
            log.info("%s: upgrade abandoned: %s", self.sid, exc)
            ws.close(CLOSE_PROTOCOL_ERROR, "bad upgrade")
            return False
        if type(event) is UpgradeProbe:
            ws.outbox.send(_PROBE_PONG)
            if self.poll is not None and self.poll.waiting:
                self.poll.push(_NOOP)  # release the waiting GET: the client pauses polling
        elif type(event) is Upgraded:
            self._switch_to(ws)
        elif type(event) is Closed:
            self.close("client close", notify=False)
            return False
        return True

    def _switch_to(self, ws: ServerWebSocket) -> None:
        """``UPGRADE`` arrived: what waits for a poll goes first on the WebSocket, then
        everything else; a waiting ``GET`` is released with a ``noop``."""
        poll = self.poll
        assert poll is not None
        if self._upgrade_timer is not None:
            self._upgrade_timer.cancel()
        waiting = [item for item in poll.take() if item[0] is not _NOOP]
        if poll.dropped_volatile:
            self.app.metrics.dropped_volatile(poll.dropped_volatile)  # the queue goes
        poll.push(_NOOP)
        poll.close()
        self.ws, self.poll, self._probe = ws, None, None
        self._push = ws.outbox.send
        ws.outbox.on_high_water = self._high_water_frame
        for out, volatile in waiting:
            self.send(out, volatile)  # a queue that overflows here is a slow consumer

    def _finish(self, *, linger: bool = False) -> None:
        if self._finished:
            return
        self._finished = True
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self.close_reason = self.close_reason or "server shutdown"
        if self.ws is not None:
            self.ws.close(1000 if self.ws.closed is None else self.ws.closed.code)
        if self.engine.state is not State.CLOSED:
            self.engine.transport_closed(self.close_reason)
        self.app.sessions.discard(self)
        dropped = self.outbox.dropped_volatile
        if dropped:
            self.app.metrics.dropped_volatile(dropped)  # live sessions are read at scrape
        try:
            self._ended()
        finally:
            self.outbox.close()
            poll = self.poll
            if linger and poll is not None and not poll.waiting and len(poll) and (
                    self._on_finish):
                # a long-polling client kicked between two polls: its next poll gets the
                # DISCONNECT and the close, as the reference server lets the buffer
                # drain first; unclaimed, they go after a ping interval
                on_finish = self._on_finish
                self.app.timers.call_later(self.engine.ping_interval_ms / 1000,
                                           lambda: on_finish(self))
            elif self._on_finish is not None:
                self._on_finish(self)

    async def _on_message(self, message: str | bytes, via: Transport) -> None:
        try:
            packet = engineio.decode_ws(message)
        except RemoteProtocolError as exc:
            self._protocol_error(f"Engine.IO: {exc}")
            return
        await self._on_engine_packet(packet, via)

    async def _on_engine_packet(self, packet: engineio.Packet, via: Transport) -> None:
        if self.engine.state is State.CLOSED:
            return  # what arrives after the end is dropped, like a CLOSING session does
        try:
            event = self.engine.receive(packet, via)
        except RemoteProtocolError as exc:
            self._protocol_error(f"Engine.IO: {exc}")
            return
        if type(event) is Message:
            await self._on_data(event.data)
        elif type(event) is Ping:
            # a client-initiated ping (probe or keep-alive): answer it
            self._push(_engine_packet(self.engine.pong(event.data)), False)
        elif type(event) is Closed:
            self.close("client close", notify=False, by_client=True)
        # Pong: recorded by the engine session; Noop: nothing to do

    def _protocol_error(self, why: str) -> None:
        log.info("closing %s: %s", self.sid, why, extra={"sid": self.sid})
        self.close(f"protocol error: {why}", CLOSE_PROTOCOL_ERROR, notify=False)

    # -- what the layer above provides --------------------------------------------------

    def _goodbye(self) -> Outgoing | None:
        """What to send before a notified close (nothing at this layer)."""
        return None

    def _ended(self) -> None:
        """The session is over (called once, from :meth:`_finish`)."""

    async def _on_data(self, data: str | bytes) -> None:
        """One Engine.IO ``MESSAGE`` for the layer above."""
        raise NotImplementedError
