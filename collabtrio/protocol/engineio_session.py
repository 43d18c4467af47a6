"""The Engine.IO v4 session as a sans-IO state machine (both sides, for paired tests).

One cohesive thing: the states, the one transition table and both sides' rules belong
together, so the table can be read against the code in one place.

Theory of operation
-------------------
An Engine.IO session outlives its transports: it opens on one (long-polling or
WebSocket) and may move to another during an *upgrade*. This module keeps the
session's state and says what each packet means; it does no I/O and reads no clock
(times are passed in), in the manner of h11 and wsproto:

- feed every decoded packet with :meth:`EngineSession.receive`, saying which
  transport it came on; it returns one event (:class:`Message`, :class:`Ping`, ...)
  or raises :class:`RemoteProtocolError` (the peer broke the protocol: close);
- to send, call a method (:meth:`~EngineSession.send_message`,
  :meth:`~EngineSession.ping`, :meth:`~EngineSession.close`, ...) that checks the
  state, updates it and returns the :class:`~collabtrio.protocol.engineio.Packet` to
  write; calling one in a state that does not allow it raises
  :class:`LocalProtocolError` (we broke the protocol: a bug).

States and the one transition table (:data:`TRANSITIONS`)::

    OPENING --open/recv_open--> OPEN --probe/recv_probe--> UPGRADING --upgrade/recv_upgrade--> OPEN
    UPGRADING --abandon_upgrade--> OPEN        (the probing transport failed or timed out)
    OPEN | UPGRADING --close--> CLOSING --transport_closed--> CLOSED
    OPENING | OPEN | UPGRADING --recv_close--> CLOSED;  any --transport_closed--> CLOSED

Rules:

1. While UPGRADING, the old transport carries everything as before; the new one may
   carry only the probe and the ``UPGRADE`` packet. ``UPGRADE`` switches
   :attr:`~EngineSession.transport`. A caller keeps one send buffer per session and
   empties it onto the transport the session names at the moment it writes, so no
   message is reordered or stranded across the switch.
2. A server pings, a client answers (v4); a client may also ping and is answered
   (collabtrio's own clients use it as a keep-alive). The next ping is due
   ``ping_interval`` after the last one was sent; a pong that answers no ping is
   ignored.
3. ``UPGRADE`` on a WebSocket that was never polling (nothing to upgrade from) is
   ignored, as the reference server does; on long-polling it is a protocol error.
4. In CLOSING, packets still arriving are dropped (``receive`` returns ``None``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

from .engineio import EngineIOProtocolError, Packet, PacketType, open_packet

__all__ = [
    "TRANSITIONS",
    "Closed",
    "EngineSession",
    "Event",
    "LocalProtocolError",
    "Message",
    "Noop",
    "Opened",
    "Ping",
    "Pong",
    "ProbeAnswered",
    "RemoteProtocolError",
    "Side",
    "State",
    "Transport",
    "UpgradeProbe",
    "Upgraded",
]

Transport = Literal["polling", "websocket"]
"""The two Engine.IO transports."""

PROBE: Final = "probe"


class State(Enum):
    """Where an Engine.IO session is in its life."""

    OPENING = "opening"
    OPEN = "open"
    UPGRADING = "upgrading"
    CLOSING = "closing"
    CLOSED = "closed"


class Side(Enum):
    """Which end of the session this machine is."""

    SERVER = "server"
    CLIENT = "client"


RemoteProtocolError = EngineIOProtocolError
"""The peer sent something the protocol does not allow here (close the session)."""


class LocalProtocolError(RuntimeError):
    """This side tried something its state does not allow (a bug in the caller)."""


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    """(client) The server's ``OPEN`` handshake."""

    sid: str
    upgrades: tuple[str, ...]
    ping_interval_ms: int
    ping_timeout_ms: int
    max_payload: int


@dataclass(frozen=True, slots=True)
class Message:
    """A ``MESSAGE`` for the layer above (a Socket.IO packet or attachment)."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer pinged; answer with :meth:`EngineSession.pong` on the same transport."""

    data: str


@dataclass(frozen=True, slots=True)
class Pong:
    """The peer answered a ping (the heartbeat is alive)."""

    data: str


@dataclass(frozen=True, slots=True)
class UpgradeProbe:
    """(server) A probe on a new transport: answer with :meth:`EngineSession.probe_pong`
    on it, and release a pending poll with a ``NOOP``."""

    transport: Transport


@dataclass(frozen=True, slots=True)
class ProbeAnswered:
    """(client) The server answered the probe: send :meth:`EngineSession.upgrade`."""

    transport: Transport


@dataclass(frozen=True, slots=True)
class Upgraded:
    """(server) ``UPGRADE`` arrived: the session now uses ``transport`` only."""

    transport: Transport


@dataclass(frozen=True, slots=True)
class Noop:
    """A packet with no effect (``NOOP``, or an ignored ``UPGRADE``)."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over (the peer's ``CLOSE``, or its transport went away)."""

    reason: str


Event = Opened | Message | Ping | Pong | UpgradeProbe | ProbeAnswered | Upgraded | Noop | Closed

# -- the transition table ----------------------------------------------------------------

_S = State
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (_S.OPENING, "open"): _S.OPEN,
    (_S.OPENING, "recv_open"): _S.OPEN,
    (_S.OPEN, "probe"): _S.UPGRADING,
    (_S.OPEN, "recv_probe"): _S.UPGRADING,
    (_S.UPGRADING, "recv_probe"): _S.UPGRADING,  # a repeated probe is answered again
    (_S.UPGRADING, "upgrade"): _S.OPEN,
    (_S.UPGRADING, "recv_upgrade"): _S.OPEN,
    (_S.UPGRADING, "abandon_upgrade"): _S.OPEN,
    **{(s, "message"): s for s in (_S.OPEN, _S.UPGRADING)},
    **{(s, "ping"): s for s in (_S.OPEN, _S.UPGRADING)},
    **{(s, "close"): _S.CLOSING for s in (_S.OPEN, _S.UPGRADING)},
    **{(s, "recv_close"): _S.CLOSED for s in (_S.OPENING, _S.OPEN, _S.UPGRADING)},
    **{(s, "transport_closed"): _S.CLOSED for s in _S},
}
"""``(state, action) -> next state``; actions starting ``recv_`` are the peer's, the
others this side's. A pair that is not here is a protocol error of that side."""


class EngineSession:
    """One Engine.IO session, server or client side (see the module docstring).

    ``sid`` and the settings are the server's to choose (they go in ``OPEN``); a
    client learns them from :class:`Opened`.
    """

    __slots__ = (
        "_ping_sent_at",
        "_pong_at",
        "_probe_answered",
        "max_payload",
        "ping_interval_ms",
        "ping_timeout_ms",
        "probing",
        "sid",
        "side",
        "state",
        "transport",
        "upgrades",
    )

    def __init__(
        self,
        side: Side,
        transport: Transport,
        *,
        sid: str = "",
        upgrades: Sequence[str] = (),
        ping_interval_ms: int = 25000,
        ping_timeout_ms: int = 20000,
        max_payload: int = 1_000_000,
    ) -> None:
        self.side = side
        self.state = State.OPENING
        self.transport: Transport = transport
        self.probing: Transport | None = None
        self.sid = sid
        self.upgrades = tuple(upgrades)
        self.ping_interval_ms = ping_interval_ms
        self.ping_timeout_ms = ping_timeout_ms
        self.max_payload = max_payload
        self._ping_sent_at: float | None = None
        self._pong_at = float("-inf")
        self._probe_answered = False

    def __repr__(self) -> str:
        return f"<EngineSession {self.side.value} {self.state.value} {self.transport} {self.sid}>"

    def _do(self, action: str) -> None:
        new = TRANSITIONS.get((self.state, action))
        if new is None:
            if action.startswith("recv_"):
                raise RemoteProtocolError(
                    f"{action[5:]} not allowed in state {self.state.value}")
            raise LocalProtocolError(f"cannot {action} in state {self.state.value}")
        self.state = new

    # -- sending -------------------------------------------------------------------------

    def open(self) -> Packet:
        """(server) Start the session: the ``OPEN`` packet to send first."""
        if self.side is not Side.SERVER:
            raise LocalProtocolError("only a server sends OPEN")
        self._do("open")
        text = open_packet(self.sid, upgrades=self.upgrades,
                           ping_interval_ms=self.ping_interval_ms,
                           ping_timeout_ms=self.ping_timeout_ms, max_payload=self.max_payload)
        return Packet(PacketType.OPEN, text[1:])

    def send_message(self, data: str | bytes) -> Packet:
        """A ``MESSAGE`` packet (OPEN or UPGRADING)."""
        self._do("message")
        return Packet(PacketType.MESSAGE, data)

    def ping(self, now: float, data: str = "") -> Packet:
        """A heartbeat ``PING`` sent at ``now`` (see :meth:`pong_overdue`)."""
        self._do("ping")
        if self.side is Side.SERVER:
            self._ping_sent_at = now
        return Packet(PacketType.PING, data)

    def pong(self, data: str = "") -> Packet:
        """The answer to a :class:`Ping` (its ``data`` echoed)."""
        if self.state not in (State.OPEN, State.UPGRADING):
            raise LocalProtocolError(f"cannot pong in state {self.state.value}")
        return Packet(PacketType.PONG, data)

    def pong_overdue(self, now: float) -> bool:
        """(server) True when the last ping got no pong and ``ping_timeout`` has passed."""
        sent = self._ping_sent_at
        if sent is None or self._pong_at >= sent:
            return False
        return now >= sent + self.ping_timeout_ms / 1000

    def next_ping_at(self) -> float | None:
        """(server) When the next heartbeat is due: ``ping_interval`` after the last ping."""
        sent = self._ping_sent_at
        return None if sent is None else sent + self.ping_interval_ms / 1000

    def probe(self, transport: Transport) -> Packet:
        """(client) Start an upgrade: the ``PING "probe"`` to send on ``transport``."""
        if self.side is not Side.CLIENT:
            raise LocalProtocolError("only a client probes")
        if transport == self.transport:
            raise LocalProtocolError(f"already on {transport}")
        if transport not in self.upgrades:
            raise LocalProtocolError(f"the server offers no upgrade to {transport}")
        self._do("probe")
        self.probing = transport
        self._probe_answered = False
        return Packet(PacketType.PING, PROBE)

    def probe_pong(self) -> Packet:
        """(server) The ``PONG "probe"`` answering an :class:`UpgradeProbe`."""
        if self.side is not Side.SERVER or self.state is not State.UPGRADING:
            raise LocalProtocolError("no upgrade in progress on this server session")
        return Packet(PacketType.PONG, PROBE)

    def noop(self) -> Packet:
        """(server) A ``NOOP``, sent to release a pending poll when an upgrade starts."""
        if self.side is not Side.SERVER or self.state not in (State.OPEN, State.UPGRADING):
            raise LocalProtocolError(f"cannot send NOOP in state {self.state.value}")
        return Packet(PacketType.NOOP)

    def upgrade(self) -> Packet:
        """(client) Finish the upgrade: the ``UPGRADE`` packet, sent on the new transport
        once the server answered the probe (:class:`ProbeAnswered`)."""
        probing = self.probing
        if self.side is not Side.CLIENT or probing is None or not self._probe_answered:
            raise LocalProtocolError("no answered probe: the upgrade cannot finish")
        self._do("upgrade")
        self.transport, self.probing = probing, None
        return Packet(PacketType.UPGRADE)

    def abandon_upgrade(self) -> None:
        """Give up an upgrade in progress (the new transport closed or timed out); the
        session carries on over the old one."""
        self._do("abandon_upgrade")
        self.probing = None
        self._probe_answered = False

    def close(self) -> Packet:
        """Start closing: the ``CLOSE`` packet (a WebSocket may close its socket instead)."""
        self._do("close")
        return Packet(PacketType.CLOSE)

    def transport_closed(self, reason: str) -> Closed:
        """The transport is gone (or closing finished): the session is CLOSED."""
        self._do("transport_closed")
        self.probing = None
        return Closed(reason)

    # -- receiving -----------------------------------------------------------------------

    def receive(self, packet: Packet, transport: Transport | None = None) -> Event | None:
        """Interpret one packet that arrived on ``transport`` (default: the current one).

        Returns the event, or ``None`` for a packet dropped while CLOSING. Raises
        :class:`RemoteProtocolError` for a packet the state does not allow, and
        :class:`LocalProtocolError` if the session is already CLOSED.
        """
        state = self.state
        if state is State.CLOSED:
            raise LocalProtocolError("the session is closed")
        if state is State.CLOSING:
            return None
        via = self.transport if transport is None else transport
        ptype = packet.type
        if via != self.transport:
            return self._receive_on_other(packet, via)
        if state is State.OPENING:
            return self._receive_opening(packet)
        if ptype is PacketType.MESSAGE:
            return Message(packet.data)
        data = packet.data if isinstance(packet.data, str) else ""
        if ptype is PacketType.PING:
            return Ping(data)
        if ptype is PacketType.PONG:
            if self.side is Side.SERVER and self._ping_sent_at is not None:
                self._pong_at = self._ping_sent_at  # that ping is answered
            return Pong(data)
        if ptype is PacketType.CLOSE:
            return self._closed_by_peer()
        if ptype is PacketType.NOOP:
            return Noop()
        if ptype is PacketType.UPGRADE and self.side is Side.SERVER and via == "websocket":
            return Noop()  # rule 3: nothing to upgrade from
        raise RemoteProtocolError(f"unexpected {ptype.name} packet in state {state.value}")

    def _closed_by_peer(self) -> Closed:
        self._do("recv_close")
        self.probing = None
        return Closed("peer close")

    def _receive_opening(self, packet: Packet) -> Event:
        if packet.type is PacketType.CLOSE:
            return self._closed_by_peer()
        if self.side is Side.SERVER or packet.type is not PacketType.OPEN:
            raise RemoteProtocolError(f"{packet.type.name} before the OPEN handshake")
        opened = _parse_open(packet.data)
        self._do("recv_open")
        self.sid = opened.sid
        self.upgrades = opened.upgrades
        self.ping_interval_ms = opened.ping_interval_ms
        self.ping_timeout_ms = opened.ping_timeout_ms
        self.max_payload = opened.max_payload
        return opened

    def _receive_on_other(self, packet: Packet, via: Transport) -> Event:
        """A packet on a transport other than the current one: only the upgrade dance."""
        ptype, data = packet.type, packet.data
        if self.side is Side.SERVER:
            if ptype is PacketType.PING and data == PROBE and via in self.upgrades and (
                    self.probing in (None, via)):
                self._do("recv_probe")
                self.probing = via
                return UpgradeProbe(via)
            if ptype is PacketType.UPGRADE and self.probing == via:
                self._do("recv_upgrade")
                self.transport, self.probing = via, None
                return Upgraded(via)
            if ptype is PacketType.CLOSE:
                return self._closed_by_peer()
        elif ptype is PacketType.PONG and data == PROBE and self.probing == via:
            self._probe_answered = True
            return ProbeAnswered(via)
        raise RemoteProtocolError(f"unexpected {ptype.name} packet on {via} "
                                  f"(the session is on {self.transport})")


def _parse_open(data: str | bytes) -> Opened:
    """The handshake of an ``OPEN`` packet, checked field by field."""
    try:
        info = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"bad OPEN packet: {exc}") from None
    if not isinstance(info, dict):
        raise RemoteProtocolError("bad OPEN packet: not a JSON object")
    sid, upgrades = info.get("sid"), info.get("upgrades", [])
    if not isinstance(sid, str) or not sid:
        raise RemoteProtocolError("bad OPEN packet: 'sid' must be a non-empty string")
    if not isinstance(upgrades, list) or not all(isinstance(u, str) for u in upgrades):
        raise RemoteProtocolError("bad OPEN packet: 'upgrades' must be an array of strings")
    numbers: list[int] = []
    for key, default in (("pingInterval", None), ("pingTimeout", None),
                         ("maxPayload", 1_000_000)):
        value = info.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise RemoteProtocolError(f"bad OPEN packet: {key!r} must be a positive integer")
        numbers.append(value)
    return Opened(sid, tuple(upgrades), *numbers)
