"""Paired client/server tests of the sans-IO Engine.IO v4 session state machine.

In the manner of h11's ``ConnectionPair`` and wsproto's connection tests, a
:class:`Pair` holds a server and a client :class:`EngineSession` and carries every
packet one sends to the other *through the real wire codec*: one WebSocket frame per
packet (``encode_ws``/``decode_ws``) or one long-polling body per batch
(``encode_payload``/``decode_payload``). So each test checks at once that what one
side sends survives the wire, that the other side understands it, and (with
:meth:`Pair.assert_agree`) that both sides agree on the session's state.

Reference: the Engine.IO protocol, 4th version (socket.io/docs/v4/engine-io-protocol),
and the reference server's ``lib/socket.ts`` (socketio/engine.io).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from collabtrio.protocol.engineio import (
    Packet,
    PacketType,
    decode_payload,
    decode_ws,
    encode_payload,
    encode_ws,
)
from collabtrio.protocol.engineio_session import (
    TRANSITIONS,
    Closed,
    EngineSession,
    Event,
    LocalProtocolError,
    Message,
    Noop,
    Opened,
    Ping,
    Pong,
    ProbeAnswered,
    RemoteProtocolError,
    Side,
    State,
    Transport,
    Upgraded,
    UpgradeProbe,
)

SERVER, CLIENT = Side.SERVER, Side.CLIENT
SIDES = [SERVER, CLIENT]
TRANSPORTS: list[Transport] = ["polling", "websocket"]
SID = "lv_VI97HAXpY6yYWAAAC"  # the sid of the EIO v4 doc's sample handshake

Wire = str | bytes


def _other(side: Side) -> Side:
    return CLIENT if side is SERVER else SERVER


def _side_id(side: Side) -> str:
    return side.value


class Pair:
    """A server and a client session, and the wire between them.

    ``send`` encodes packets for a transport, decodes what the peer would read and
    feeds it to the peer's ``receive``; ``queue``/``flush`` model a per-session write
    buffer that is drained to whatever transport the session names *at flush time*
    (as the reference server's ``writeBuffer`` is). Every frame or body that crosses
    the wire is kept in :attr:`wire`, and every event a side gets in :attr:`events`.
    """

    def __init__(
        self,
        transport: Transport = "polling",
        *,
        upgrades: Sequence[str] | None = None,
        ping_interval_ms: int = 25000,
        ping_timeout_ms: int = 20000,
        max_payload: int = 1_000_000,
    ) -> None:
        if upgrades is None:
            upgrades = ("websocket",) if transport == "polling" else ()
        self.server = EngineSession(
            SERVER, transport, sid=SID, upgrades=upgrades, ping_interval_ms=ping_interval_ms,
            ping_timeout_ms=ping_timeout_ms, max_payload=max_payload,
        )
        self.client = EngineSession(CLIENT, transport)
        self.outbox: dict[Side, list[Packet]] = {SERVER: [], CLIENT: []}
        self.wire: list[tuple[Side, Transport, Wire]] = []
        self.events: dict[Side, list[Event | None]] = {SERVER: [], CLIENT: []}

    def session(self, side: Side) -> EngineSession:
        return self.server if side is SERVER else self.client

    def carry(self, sender: Side, packets: Sequence[Packet], via: Transport) -> list[Packet]:
        """Put ``packets`` on the wire of ``via`` and return what the peer decodes."""
        if via == "websocket":
            frames = [encode_ws(p) for p in packets]
            self.wire.extend((sender, via, f) for f in frames)
            decoded = [decode_ws(f) for f in frames]
        else:
            body = encode_payload(packets)
            self.wire.append((sender, via, body))
            decoded = decode_payload(body)
        assert decoded == list(packets), "the codec must not change a packet"
        return decoded

    def send(
        self, sender: Side, packets: Packet | Sequence[Packet], via: Transport | None = None
    ) -> list[Event | None]:
        """Carry ``packets`` from ``sender`` over ``via`` (default: the sender's current
        transport) and feed them to the peer; return the peer's events."""
        batch = [packets] if isinstance(packets, Packet) else list(packets)
        transport = self.session(sender).transport if via is None else via
        receiver = _other(sender)
        events: list[Event | None] = []
        for packet in self.carry(sender, batch, transport):
            event = self.session(receiver).receive(packet, transport)
            events.append(event)
            self.events[receiver].append(event)
        return events

    def queue(self, sender: Side, packet: Packet) -> None:
        self.outbox[sender].append(packet)

    def flush(self, sender: Side) -> list[Event | None]:
        """Drain ``sender``'s write buffer to its current transport (a poll response or
        POST body on polling, frames on a WebSocket)."""
        pending, self.outbox[sender] = self.outbox[sender], []
        return self.send(sender, pending) if pending else []

    def messages(self, side: Side) -> list[str | bytes]:
        """The data of every :class:`Message` ``side`` has received so far."""
        return [e.data for e in self.events[side] if isinstance(e, Message)]

    def frames(self, sender: Side, via: Transport) -> list[Wire]:
        return [w for s, t, w in self.wire if s is sender and t == via]

    # -- the protocol's dances ---------------------------------------------------------

    def handshake(self) -> Opened:
        [event] = self.send(SERVER, self.server.open())
        assert isinstance(event, Opened)
        self.assert_agree()
        return event

    def start_upgrade(self, to: Transport = "websocket") -> None:
        """Client probes ``to``; the server answers on it and releases the pending poll
        with a NOOP (queued, so it follows whatever the server already buffered)."""
        old = self.server.transport
        assert self.send(CLIENT, self.client.probe(to), via=to) == [UpgradeProbe(to)]
        assert self.send(SERVER, self.server.probe_pong(), via=to) == [ProbeAnswered(to)]
        if old == "polling":
            self.queue(SERVER, Packet(PacketType.NOOP))
        self.assert_agree()

    def finish_upgrade(self) -> None:
        """The client pauses the old transport (its pending poll and POST complete, so
        both buffers are drained there), then sends UPGRADE on the new one."""
        new = self.client.probing
        assert new is not None
        self.flush(SERVER)
        self.flush(CLIENT)
        assert self.send(CLIENT, self.client.upgrade(), via=new) == [Upgraded(new)]
        self.assert_agree()

    def assert_agree(self) -> None:
        """Both sides see the same session."""
        assert self.server.state is self.client.state
        assert self.server.transport == self.client.transport
        assert self.server.probing == self.client.probing
        assert self.server.sid == self.client.sid
        assert self.server.upgrades == self.client.upgrades
        assert self.server.ping_interval_ms == self.client.ping_interval_ms
        assert self.server.ping_timeout_ms == self.client.ping_timeout_ms
        assert self.server.max_payload == self.client.max_payload


def _now(session: EngineSession) -> tuple[State, Transport]:
    """The session's state and transport, read afresh (not narrowed by earlier asserts)."""
    return session.state, session.transport


def _snapshot(session: EngineSession) -> tuple[object, ...]:
    return (session.state, session.transport, session.probing, session.sid, session.upgrades)


# -- handshake ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_handshake_client_learns_sid_and_settings(transport: Transport) -> None:
    pair = Pair(transport, upgrades=("websocket",), ping_interval_ms=300, ping_timeout_ms=200,
                max_payload=100_000)
    assert pair.server.state is pair.client.state is State.OPENING
    opened = pair.handshake()
    assert opened == Opened(sid=SID, upgrades=("websocket",), ping_interval_ms=300,
                            ping_timeout_ms=200, max_payload=100_000)
    assert _now(pair.client) == (State.OPEN, transport)
    assert pair.client.sid == SID
    [(_, _, frame)] = pair.wire
    assert isinstance(frame, str)
    assert frame[0] == "0"
    assert json.loads(frame[1:]) == {"sid": SID, "upgrades": ["websocket"], "pingInterval": 300,
                                     "pingTimeout": 200, "maxPayload": 100_000}


def test_handshake_defaults_match_the_reference_server() -> None:
    opened = Pair().handshake()
    assert (opened.ping_interval_ms, opened.ping_timeout_ms, opened.max_payload) == (
        25000, 20000, 1_000_000)


def test_handshake_without_max_payload_defaults_it() -> None:
    # maxPayload is a v4 addition; an OPEN without it still opens the session.
    client = EngineSession(CLIENT, "polling")
    body = json.dumps({"sid": SID, "upgrades": [], "pingInterval": 1, "pingTimeout": 2})
    assert client.receive(Packet(PacketType.OPEN, body)) == Opened(SID, (), 1, 2, 1_000_000)


def test_only_the_server_opens() -> None:
    client = EngineSession(CLIENT, "polling")
    with pytest.raises(LocalProtocolError):
        client.open()
    assert client.state is State.OPENING


@pytest.mark.parametrize("side", SIDES, ids=_side_id)
@pytest.mark.parametrize(
    "packet",
    [Packet(PacketType.MESSAGE, "x"), Packet(PacketType.MESSAGE, b"x"), Packet(PacketType.PING),
     Packet(PacketType.PONG), Packet(PacketType.NOOP), Packet(PacketType.UPGRADE)],
    ids=lambda p: f"{p.type.name}-{type(p.data).__name__}",
)
def test_packets_before_the_handshake_are_refused(side: Side, packet: Packet) -> None:
    session = Pair().session(side)
    with pytest.raises(RemoteProtocolError):
        session.receive(packet)
    assert session.state is State.OPENING


def test_server_refuses_an_open_packet() -> None:
    pair = Pair()
    pair.handshake()
    with pytest.raises(RemoteProtocolError):
        pair.send(CLIENT, Packet(PacketType.OPEN, pair.frames(SERVER, "polling")[0][1:]))
    assert pair.server.state is State.OPEN


def test_client_refuses_a_second_open() -> None:
    pair = Pair()
    pair.handshake()
    first = pair.frames(SERVER, "polling")[0]
    assert isinstance(first, str)
    with pytest.raises(RemoteProtocolError):
        pair.client.receive(decode_payload(first)[0])
    assert pair.client.state is State.OPEN


_GOOD_OPEN: dict[str, Any] = {"sid": SID, "upgrades": ["websocket"], "pingInterval": 25000,
                              "pingTimeout": 20000, "maxPayload": 1_000_000}


_DROP = object()
"""A value for :func:`_open_json` that leaves the key out."""


def _open_json(**changes: Any) -> str:
    info = {k: v for k, v in {**_GOOD_OPEN, **changes}.items() if v is not _DROP}
    return json.dumps(info)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("", id="empty"),
        pytest.param("not json", id="not-json"),
        pytest.param('{"sid": "a"', id="truncated"),
        pytest.param("null", id="null"),
        pytest.param("[]", id="array"),
        pytest.param('"sid"', id="string"),
        pytest.param("42", id="number"),
        pytest.param(_open_json(sid=_DROP), id="no-sid"),
        pytest.param(_open_json(pingInterval=_DROP), id="no-pingInterval"),
        pytest.param(_open_json(pingTimeout=_DROP), id="no-pingTimeout"),
        pytest.param(_open_json(pingInterval="soon"), id="pingInterval-not-a-number"),
        pytest.param(_open_json(pingTimeout=None), id="pingTimeout-null"),
        pytest.param(_open_json(maxPayload="big"), id="maxPayload-not-a-number"),
        pytest.param(_open_json(upgrades=5), id="upgrades-number"),
        pytest.param(_open_json(upgrades=None), id="upgrades-null"),
        pytest.param(_open_json(sid=None), id="sid-null"),
        pytest.param(_open_json(upgrades="websocket"), id="upgrades-string"),
        pytest.param(_open_json(pingInterval=-1), id="pingInterval-negative"),
        pytest.param(_open_json(pingTimeout=True), id="pingTimeout-boolean"),
    ],
)
def test_client_refuses_a_malformed_open(data: str) -> None:
    pair = Pair()
    before = _snapshot(pair.client)
    # Through the codec: the malformed OPEN is a well-formed Engine.IO packet.
    [packet] = pair.carry(SERVER, [Packet(PacketType.OPEN, data)], "polling")
    try:
        pair.client.receive(packet)
    except RemoteProtocolError:
        pass
    else:
        pytest.fail(f"malformed OPEN {data!r} was accepted: sid={pair.client.sid!r}, "
                    f"upgrades={pair.client.upgrades!r}")
    assert _snapshot(pair.client) == before


# -- messages -------------------------------------------------------------------------------

_SAMPLE_DATA: list[str | bytes] = ["hello", "", "héllo ✓ 日本", '2["ev",{"a":1}]',
                                   b"\x00\x01\xfe\xff", b"", b"4hello"]


@pytest.mark.parametrize("data", _SAMPLE_DATA, ids=repr)
@pytest.mark.parametrize("sender", SIDES, ids=_side_id)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_message_arrives_with_its_type(transport: Transport, sender: Side,
                                       data: str | bytes) -> None:
    pair = Pair(transport)
    pair.handshake()
    events = pair.send(sender, pair.session(sender).send_message(data))
    assert events == [Message(data)]
    event = events[0]
    assert isinstance(event, Message)
    assert type(event.data) is type(data)
    pair.assert_agree()
    assert pair.server.state is State.OPEN


@pytest.mark.parametrize("sender", SIDES, ids=_side_id)
def test_websocket_binary_message_is_a_raw_binary_frame(sender: Side) -> None:
    pair = Pair("websocket")
    pair.handshake()
    pair.send(sender, pair.session(sender).send_message(b"\x01\x02"))
    pair.send(sender, pair.session(sender).send_message("hi"))
    assert pair.frames(sender, "websocket")[-2:] == [b"\x01\x02", "4hi"]


@pytest.mark.parametrize("sender", SIDES, ids=_side_id)
def test_polling_batch_keeps_order_and_types(sender: Side) -> None:
    pair = Pair("polling")
    pair.handshake()
    data: list[str | bytes] = ["a", b"\x01\x02\x03\x04", "", b"", "z"]
    session = pair.session(sender)
    for item in data:
        pair.queue(sender, session.send_message(item))
    assert pair.flush(sender) == [Message(d) for d in data]
    assert pair.frames(sender, "polling")[-1] == "4a\x1ebAQIDBA==\x1e4\x1eb\x1e4z"


# -- heartbeat ------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["", "x"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_ping_client_pong(transport: Transport, data: str) -> None:
    pair = Pair(transport)
    pair.handshake()
    assert pair.send(SERVER, pair.server.ping(100.0, data)) == [Ping(data)]
    assert pair.send(CLIENT, pair.client.pong(data)) == [Pong(data)]
    assert pair.frames(SERVER, transport)[-1] == f"2{data}"
    assert pair.frames(CLIENT, transport)[-1] == f"3{data}"
    pair.assert_agree()


def test_pong_overdue_and_next_ping_at() -> None:
    pair = Pair(ping_interval_ms=25000, ping_timeout_ms=20000)
    pair.handshake()
    server = pair.server
    assert server.next_ping_at() is None
    assert not server.pong_overdue(1e9), "no ping sent yet: nothing is overdue"

    pair.send(SERVER, server.ping(100.0))
    assert server.next_ping_at() == pytest.approx(125.0)
    assert not server.pong_overdue(100.0)
    assert not server.pong_overdue(119.999)
    assert server.pong_overdue(120.0), "overdue exactly at ping + ping_timeout"
    assert server.pong_overdue(500.0)

    assert pair.send(CLIENT, pair.client.pong()) == [Pong("")]
    assert not server.pong_overdue(120.0)
    assert not server.pong_overdue(500.0)
    assert server.next_ping_at() == pytest.approx(125.0)

    # The next heartbeat is judged on its own.
    pair.send(SERVER, server.ping(125.0))
    assert server.next_ping_at() == pytest.approx(150.0)
    assert not server.pong_overdue(144.9)
    assert server.pong_overdue(145.0)
    pair.send(CLIENT, pair.client.pong())
    assert not server.pong_overdue(145.0)


def test_a_late_pong_still_answers_the_ping() -> None:
    pair = Pair(ping_timeout_ms=1000)
    pair.handshake()
    pair.send(SERVER, pair.server.ping(10.0))
    assert pair.server.pong_overdue(11.5)
    pair.send(CLIENT, pair.client.pong())
    assert not pair.server.pong_overdue(11.5)


def test_unsolicited_pong_does_not_answer_a_later_ping() -> None:
    pair = Pair(ping_timeout_ms=20000)
    pair.handshake()
    assert pair.send(CLIENT, pair.client.pong()) == [Pong("")]  # nobody pinged
    pair.send(SERVER, pair.server.ping(0.0))
    assert pair.server.pong_overdue(20.0)


def test_client_pings_and_server_answers() -> None:
    # Rule 2 of the module (the v4 reference server refuses this: "invalid heartbeat
    # direction"); the client keeps no heartbeat clock.
    pair = Pair("websocket")
    pair.handshake()
    assert pair.send(CLIENT, pair.client.ping(5.0, "c")) == [Ping("c")]
    assert pair.send(SERVER, pair.server.pong("c")) == [Pong("c")]
    assert pair.client.next_ping_at() is None
    assert not pair.client.pong_overdue(1e9)
    assert pair.server.next_ping_at() is None


def test_heartbeat_during_upgrade_uses_the_old_transport() -> None:
    pair = Pair("polling")
    pair.handshake()
    pair.start_upgrade()
    assert pair.send(SERVER, pair.server.ping(1.0)) == [Ping("")]
    assert pair.send(CLIENT, pair.client.pong()) == [Pong("")]
    assert pair.frames(SERVER, "polling")[-1] == "2"
    assert pair.frames(CLIENT, "polling")[-1] == "3"
    assert not pair.server.pong_overdue(1e9)


@pytest.mark.parametrize("state", [State.OPENING, State.CLOSING, State.CLOSED])
@pytest.mark.parametrize("side", SIDES, ids=_side_id)
def test_pong_refused_outside_open_and_upgrading(side: Side, state: State) -> None:
    session = _pair_in(state).session(side)
    with pytest.raises(LocalProtocolError):
        session.pong()
    assert session.state is state


# -- upgrade polling -> websocket -------------------------------------------------------------


@pytest.mark.parametrize("server_holds", [False, True],
                         ids=["server-flushes-on-poll", "server-holds-until-upgraded"])
def test_full_upgrade_keeps_message_order(server_holds: bool) -> None:
    pair = Pair("polling")
    pair.handshake()
    pair.send(SERVER, pair.server.send_message("s0"))
    pair.send(CLIENT, pair.client.send_message("c0"))

    pair.start_upgrade()
    assert pair.server.state is pair.client.state is State.UPGRADING
    assert pair.server.probing == pair.client.probing == "websocket"
    assert pair.server.transport == pair.client.transport == "polling"

    # Messages sent while UPGRADING go on polling (the session's transport).
    pair.queue(SERVER, pair.server.send_message("s1"))
    pair.queue(SERVER, pair.server.send_message(b"s2"))
    pair.queue(CLIENT, pair.client.send_message("c1"))
    pair.flush(CLIENT)
    pair.queue(CLIENT, pair.client.send_message(b"c2"))
    if server_holds:
        # The released poll carries only what was buffered then; later messages wait
        # in the session's buffer and go out after the switch.
        pair.flush(SERVER)
        pair.queue(SERVER, pair.server.send_message("s3"))
        held = pair.outbox[SERVER]
        pair.outbox[SERVER] = []
        pair.finish_upgrade()
        pair.outbox[SERVER] = held
        pair.flush(SERVER)
    else:
        pair.queue(SERVER, pair.server.send_message("s3"))
        pair.finish_upgrade()

    assert _now(pair.server) == _now(pair.client) == (State.OPEN, "websocket")
    assert pair.server.probing is pair.client.probing is None
    pair.send(SERVER, pair.server.send_message("s4"))
    pair.send(CLIENT, pair.client.send_message(b"c3"))

    assert pair.messages(CLIENT) == ["s0", "s1", b"s2", "s3", "s4"]
    assert pair.messages(SERVER) == ["c0", "c1", b"c2", b"c3"]
    assert Noop() in pair.events[CLIENT], "the pending poll was released with a NOOP"
    assert pair.frames(CLIENT, "websocket")[:1] == ["2probe"]
    assert pair.frames(SERVER, "websocket")[:1] == ["3probe"]
    assert "5" in pair.frames(CLIENT, "websocket")
    assert pair.frames(SERVER, "websocket")[-1] == "4s4"
    assert pair.frames(CLIENT, "websocket")[-1] == b"c3"
    pair.assert_agree()


def test_after_upgrade_polling_is_refused_and_no_second_upgrade() -> None:
    pair = Pair("polling")
    pair.handshake()
    pair.start_upgrade()
    pair.finish_upgrade()
    for side in SIDES:
        with pytest.raises(RemoteProtocolError):
            pair.session(side).receive(Packet(PacketType.MESSAGE, "late"), "polling")
    with pytest.raises(LocalProtocolError):
        pair.client.probe("websocket")
    # A second UPGRADE on the (now current) WebSocket is ignored (rule 3).
    assert pair.send(CLIENT, Packet(PacketType.UPGRADE)) == [Noop()]
    pair.assert_agree()


def test_repeated_probe_is_answered_again() -> None:
    pair = Pair("polling")
    pair.handshake()
    pair.start_upgrade()
    with pytest.raises(LocalProtocolError):
        pair.client.probe("websocket")  # the client's machine refuses to probe twice ...
    # ... but a peer that does is answered again.
    assert pair.send(CLIENT, Packet(PacketType.PING, "probe"), via="websocket") == [
        UpgradeProbe("websocket")]
    assert pair.send(SERVER, pair.server.probe_pong(), via="websocket") == [
        ProbeAnswered("websocket")]
    assert pair.server.state is pair.client.state is State.UPGRADING
    pair.finish_upgrade()
    assert pair.server.transport == "websocket"


def test_probe_on_a_transport_not_offered_is_refused() -> None:
    pair = Pair("polling", upgrades=())
    pair.handshake()
    with pytest.raises(RemoteProtocolError):
        pair.send(CLIENT, Packet(PacketType.PING, "probe"), via="websocket")
    assert pair.server.state is State.OPEN
    assert pair.server.probing is None
    assert pair.server.transport == "polling"


def test_client_does_not_probe_a_transport_not_offered() -> None:
    pair = Pair("polling", upgrades=())
    pair.handshake()
    with pytest.raises(LocalProtocolError):
        pair.client.probe("websocket")
    assert pair.client.state is State.OPEN


def test_server_refuses_upgrade_without_probe() -> None:
    pair = Pair("polling")
    pair.handshake()
    with pytest.raises(RemoteProtocolError):
        pair.send(CLIENT, Packet(PacketType.UPGRADE), via="websocket")
    assert pair.server.state is State.OPEN


def test_upgrade_on_a_plain_websocket_session_is_ignored() -> None:
    pair = Pair("websocket")
    pair.handshake()
    assert pair.send(CLIENT, Packet(PacketType.UPGRADE)) == [Noop()]
    assert pair.server.state is State.OPEN
    assert pair.server.transport == "websocket"


def test_upgrade_on_polling_is_a_protocol_error() -> None:
    pair = Pair("polling")
    pair.handshake()
    with pytest.raises(RemoteProtocolError):
        pair.send(CLIENT, Packet(PacketType.UPGRADE))
    pair.start_upgrade()
    with pytest.raises(RemoteProtocolError):  # on the old transport, even while upgrading
        pair.send(CLIENT, Packet(PacketType.UPGRADE))
    assert pair.server.state is State.UPGRADING


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_refuses_upgrade_packets(transport: Transport) -> None:
    pair = Pair(transport)
    pair.handshake()
    with pytest.raises(RemoteProtocolError):
        pair.send(SERVER, Packet(PacketType.UPGRADE))


def test_client_upgrades_only_after_the_probe_is_answered() -> None:
    pair = Pair("polling")
    pair.handshake()
    pair.send(CLIENT, pair.client.probe("websocket"), via="websocket")
    with pytest.raises(LocalProtocolError):
        pair.client.upgrade()
    assert pair.client.transport == "polling"


def test_only_the_server_answers_a_probe() -> None:
    pair = Pair("polling")
    pair.handshake()
    pair.start_upgrade()
    with pytest.raises(LocalProtocolError):
        pair.client.probe_pong()


@pytest.mark.parametrize("state", [State.OPENING, State.OPEN, State.CLOSING, State.CLOSED])
def test_probe_pong_only_while_upgrading(state: State) -> None:
    server = _pair_in(state).server
    with pytest.raises(LocalProtocolError):
        server.probe_pong()
    assert server.state is state


@pytest.mark.parametrize("method", ["probe", "upgrade"])
@pytest.mark.parametrize("state", list(State))
def test_only_the_client_probes_and_upgrades(state: State, method: str) -> None:
    server = _pair_in(state).server
    before = _snapshot(server)
    with pytest.raises(LocalProtocolError):
        if method == "probe":
            server.probe("websocket")
        else:
            server.upgrade()
    assert _snapshot(server) == before


@pytest.mark.parametrize("state", list(State))
def test_only_the_server_opens_in_any_state(state: State) -> None:
    client = _pair_in(state).client
    before = _snapshot(client)
    with pytest.raises(LocalProtocolError):
        client.open()
    assert _snapshot(client) == before


def test_client_cannot_probe_its_own_transport() -> None:
    pair = Pair("polling")
    pair.handshake()
    with pytest.raises(LocalProtocolError):
        pair.client.probe("polling")
    assert pair.client.state is State.OPEN


# -- packets on the wrong transport -----------------------------------------------------------

_ANY_BUT_PROBE = [Packet(PacketType.MESSAGE, "x"), Packet(PacketType.MESSAGE, b"x"),
                  Packet(PacketType.PING), Packet(PacketType.PONG), Packet(PacketType.NOOP),
                  Packet(PacketType.PONG, "probe")]


@pytest.mark.parametrize("packet", _ANY_BUT_PROBE, ids=repr)
@pytest.mark.parametrize("upgrading", [False, True], ids=["open", "upgrading"])
def test_server_refuses_other_packets_on_the_new_transport(upgrading: bool,
                                                           packet: Packet) -> None:
    pair = Pair("polling")
    pair.handshake()
    if upgrading:
        pair.start_upgrade()
    before = _snapshot(pair.server)
    with pytest.raises(RemoteProtocolError):
        pair.send(CLIENT, packet, via="websocket")
    assert _snapshot(pair.server) == before


@pytest.mark.parametrize(
    "packet",
    [Packet(PacketType.MESSAGE, "x"), Packet(PacketType.MESSAGE, b"x"), Packet(PacketType.PING),
     Packet(PacketType.PING, "probe"), Packet(PacketType.PONG), Packet(PacketType.NOOP),
     Packet(PacketType.CLOSE)],
    ids=repr,
)
@pytest.mark.parametrize("upgrading", [False, True], ids=["open", "upgrading"])
def test_client_refuses_other_packets_on_the_new_transport(upgrading: bool,
                                                           packet: Packet) -> None:
    pair = Pair("polling")
    pair.handshake()
    if upgrading:
        pair.start_upgrade()
    before = _snapshot(pair.client)
    with pytest.raises(RemoteProtocolError):
        pair.send(SERVER, packet, via="websocket")
    assert _snapshot(pair.client) == before


def test_client_refuses_probe_pong_when_not_probing() -> None:
    pair = Pair("polling")
    pair.handshake()
    with pytest.raises(RemoteProtocolError):
        pair.send(SERVER, Packet(PacketType.PONG, "probe"), via="websocket")
    assert pair.client.state is State.OPEN


@pytest.mark.parametrize("side", SIDES, ids=_side_id)
def test_websocket_session_refuses_polling_packets(side: Side) -> None:
    pair = Pair("websocket")
    pair.handshake()
    with pytest.raises(RemoteProtocolError):
        pair.send(_other(side), Packet(PacketType.MESSAGE, "x"), via="polling")
    assert pair.session(side).state is State.OPEN


def test_close_on_the_probe_transport_closes_the_session() -> None:
    pair = Pair("polling")
    pair.handshake()
    pair.start_upgrade()
    assert pair.send(CLIENT, pair.client.close(), via="websocket") == [Closed("peer close")]
    assert pair.server.state is State.CLOSED


# -- close --------------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", SIDES, ids=_side_id)
@pytest.mark.parametrize(("transport", "upgrading"),
                         [("polling", False), ("websocket", False), ("polling", True)],
                         ids=["polling", "websocket", "polling-upgrading"])
def test_close_from_either_side(transport: Transport, upgrading: bool, closer: Side) -> None:
    pair = Pair(transport)
    pair.handshake()
    if upgrading:
        pair.start_upgrade()
    local, peer = pair.session(closer), pair.session(_other(closer))

    packet = local.close()
    assert local.state is State.CLOSING
    assert pair.send(closer, packet) == [Closed("peer close")]
    assert pair.frames(closer, transport)[-1] == "1"
    assert peer.state is State.CLOSED

    # The closer drops whatever still arrives ...
    for late in (Packet(PacketType.MESSAGE, "late"), Packet(PacketType.MESSAGE, b"late"),
                 Packet(PacketType.PING), Packet(PacketType.PONG), Packet(PacketType.NOOP)):
        [dropped] = pair.carry(_other(closer), [late], transport)
        assert local.receive(dropped) is None
    # ... until its transport is gone.
    assert local.transport_closed("transport close") == Closed("transport close")
    assert _now(local)[0] is _now(peer)[0] is State.CLOSED
    assert local.probing is None


@pytest.mark.parametrize("side", SIDES, ids=_side_id)
def test_local_close_drops_packets_then_transport_closed(side: Side) -> None:
    pair = Pair("websocket")
    pair.handshake()
    local = pair.session(side)
    local.close()  # not delivered: the peer keeps talking
    assert pair.send(_other(side), pair.session(_other(side)).send_message("x")) == [None]
    assert local.state is State.CLOSING
    assert local.transport_closed("done") == Closed("done")
    assert _now(local)[0] is State.CLOSED


@pytest.mark.parametrize(
    "packet",
    [Packet(PacketType.MESSAGE, "x"), Packet(PacketType.PING), Packet(PacketType.CLOSE),
     Packet(PacketType.OPEN, _open_json())],
    ids=repr,
)
@pytest.mark.parametrize("side", SIDES, ids=_side_id)
def test_receive_after_closed_is_a_local_error(side: Side, packet: Packet) -> None:
    for session in (_pair_in(State.CLOSED).session(side),
                    _pair_in(State.CLOSED, via_upgrading=True).session(side)):
        with pytest.raises(LocalProtocolError):
            session.receive(packet)
        with pytest.raises(LocalProtocolError):
            session.receive(packet, "websocket")
        assert session.state is State.CLOSED


def test_closed_by_peer_then_transport_closed_is_harmless() -> None:
    pair = Pair("websocket")
    pair.handshake()
    pair.send(SERVER, pair.server.close())
    assert pair.client.state is State.CLOSED
    assert pair.client.transport_closed("socket gone") == Closed("socket gone")
    assert pair.client.state is State.CLOSED


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_simultaneous_close_ends_when_the_transport_does(transport: Transport) -> None:
    """Both sides closing at once: each drops the other's CLOSE (rule 4) and the
    session is over once its transport is."""
    pair = Pair(transport)
    pair.handshake()
    from_server, from_client = pair.server.close(), pair.client.close()
    assert pair.send(SERVER, from_server) == [None]
    assert pair.send(CLIENT, from_client) == [None]
    assert pair.server.state is pair.client.state is State.CLOSING
    pair.server.transport_closed("done")
    pair.client.transport_closed("done")
    assert pair.server.state is pair.client.state is State.CLOSED


def test_close_before_open_closes_the_client() -> None:
    pair = Pair("websocket")
    assert pair.send(SERVER, Packet(PacketType.CLOSE)) == [Closed("peer close")]
    assert pair.client.state is State.CLOSED


# -- the transition table ---------------------------------------------------------------------

# (state, built through an upgrade?) for every State; CLOSING/CLOSED both ways.
_ROUTES: list[tuple[State, bool]] = [
    (State.OPENING, False), (State.OPEN, False), (State.UPGRADING, False),
    (State.CLOSING, False), (State.CLOSING, True), (State.CLOSED, False), (State.CLOSED, True),
]


def _route_id(route: tuple[State, bool]) -> str:
    return route[0].value + ("-from-upgrading" if route[1] else "")


def _pair_in(state: State, *, via_upgrading: bool = False) -> Pair:
    """A polling pair whose two sides are both in ``state`` (no packet in flight)."""
    pair = Pair("polling")
    if state is State.OPENING:
        return pair
    pair.handshake()
    if state is State.UPGRADING or via_upgrading:
        pair.start_upgrade()
    if state is State.CLOSING:
        pair.server.close()
        pair.client.close()
    elif state is State.CLOSED:
        pair.server.transport_closed("gone")
        pair.client.transport_closed("gone")
    assert pair.server.state is pair.client.state is state
    return pair


# Every local action of TRANSITIONS: the sides it is meaningful for, and the call.
_LOCAL: dict[str, tuple[tuple[Side, ...], Callable[[EngineSession], object]]] = {
    "open": ((SERVER,), lambda s: s.open()),
    "probe": ((CLIENT,), lambda s: s.probe("websocket")),
    "upgrade": ((CLIENT,), lambda s: s.upgrade()),
    "message": ((SERVER, CLIENT), lambda s: s.send_message("x")),
    "ping": ((SERVER, CLIENT), lambda s: s.ping(0.0)),
    "close": ((SERVER, CLIENT), lambda s: s.close()),
    "transport_closed": ((SERVER, CLIENT), lambda s: s.transport_closed("gone")),
    "abandon_upgrade": ((SERVER, CLIENT), lambda s: s.abandon_upgrade()),
}


def test_local_action_table_covers_transitions() -> None:
    actions = {action for _, action in TRANSITIONS}
    assert {a for a in actions if not a.startswith("recv_")} == set(_LOCAL)
    assert {a for a in actions if a.startswith("recv_")} == set(_REMOTE)
    assert all(isinstance(s, State) and isinstance(n, State)
               for (s, _), n in TRANSITIONS.items())


def _local_cases(allowed: bool) -> list[Any]:
    return [
        pytest.param(route, action, side,
                     id=f"{_route_id(route)}-{action}-{side.value}")
        for route in _ROUTES
        for action, (sides, _) in _LOCAL.items()
        if ((route[0], action) in TRANSITIONS) is allowed
        for side in sides
    ]


@pytest.mark.parametrize(("route", "action", "side"), _local_cases(allowed=False))
def test_forbidden_local_action_raises(route: tuple[State, bool], action: str,
                                       side: Side) -> None:
    session = _pair_in(route[0], via_upgrading=route[1]).session(side)
    before = _snapshot(session)
    with pytest.raises(LocalProtocolError):
        _LOCAL[action][1](session)
    assert _snapshot(session) == before


@pytest.mark.parametrize(("route", "action", "side"), _local_cases(allowed=True))
def test_allowed_local_action_follows_the_table(route: tuple[State, bool], action: str,
                                                side: Side) -> None:
    session = _pair_in(route[0], via_upgrading=route[1]).session(side)
    _LOCAL[action][1](session)
    assert session.state is TRANSITIONS[(route[0], action)]


# Every remote action: the side that receives it, the packet, the transport it comes on
# (None: the session's current one).
_REMOTE: dict[str, tuple[tuple[Side, ...], Packet, Transport | None]] = {
    "recv_open": ((CLIENT,), Packet(PacketType.OPEN, _open_json()), None),
    "recv_probe": ((SERVER,), Packet(PacketType.PING, "probe"), "websocket"),
    "recv_upgrade": ((SERVER,), Packet(PacketType.UPGRADE), "websocket"),
    "recv_close": ((SERVER, CLIENT), Packet(PacketType.CLOSE), None),
}

def _remote_cases() -> list[Any]:
    return [
        pytest.param(route, action, side, id=f"{_route_id(route)}-{action}-{side.value}")
        for route in _ROUTES
        for action, (sides, _, _) in _REMOTE.items()
        for side in sides
    ]


@pytest.mark.parametrize(("route", "action", "side"), _remote_cases())
def test_remote_action_follows_the_table(route: tuple[State, bool], action: str,
                                         side: Side) -> None:
    """Allowed: the table's next state. CLOSING: dropped (rule 4). CLOSED: a local
    error. Otherwise: RemoteProtocolError and the state unchanged."""
    state = route[0]
    session = _pair_in(state, via_upgrading=route[1]).session(side)
    _, packet, via = _REMOTE[action]
    before = _snapshot(session)
    if state is State.CLOSED:
        with pytest.raises(LocalProtocolError):
            session.receive(packet, via)
    elif (state, action) in TRANSITIONS:
        assert session.receive(packet, via) is not None
        assert session.state is TRANSITIONS[(state, action)]
    elif state is State.CLOSING:
        assert session.receive(packet, via) is None
        assert _snapshot(session) == before
    else:
        with pytest.raises(RemoteProtocolError):
            session.receive(packet, via)
        assert _snapshot(session) == before


# -- property: order is kept both ways, across transports and an upgrade ----------------------

_text = st.text(alphabet=st.characters(exclude_characters="\x1e"))  # the payload separator
_data = st.one_of(_text, st.binary())
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(SIDES), _data),
        st.tuples(st.just("flush"), st.sampled_from(SIDES)),
        st.tuples(st.just("probe")),
        st.tuples(st.just("upgrade")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(start=st.sampled_from(TRANSPORTS), ops=_ops)
def test_messages_arrive_in_order_in_any_interleaving(
        start: Transport, ops: list[tuple[Any, ...]]) -> None:
    pair = Pair(start)
    pair.handshake()
    sent: dict[Side, list[str | bytes]] = {SERVER: [], CLIENT: []}
    for op in ops:
        if op[0] == "send":
            _, side, data = op
            pair.queue(side, pair.session(side).send_message(data))
            sent[side].append(data)
        elif op[0] == "flush":
            pair.flush(op[1])
        elif op[0] == "probe":
            if pair.client.state is State.OPEN and pair.client.transport == "polling":
                pair.start_upgrade()
        elif pair.client.state is State.UPGRADING:
            pair.finish_upgrade()
        pair.assert_agree()
    event(f"ended on {pair.server.transport}, {pair.server.state.value}")
    pair.flush(SERVER)
    pair.flush(CLIENT)
    assert pair.messages(CLIENT) == sent[SERVER]
    assert pair.messages(SERVER) == sent[CLIENT]
    assert all(type(a) is type(b) for a, b in zip(pair.messages(CLIENT), sent[SERVER],
                                                   strict=True))
    assert all(type(a) is type(b) for a, b in zip(pair.messages(SERVER), sent[CLIENT],
                                                   strict=True))
