"""The fuzz properties, one per codec and state machine, and their byte-level drivers.

Each ``check_*`` function takes one structured input and asserts the property: the
codec raises nothing but its own documented error type, and, where it applies, what
it decoded encodes back to the same thing. ``tests/fuzz/test_codecs.py`` feeds them
hypothesis inputs (valid values with mutations); ``bench/fuzz.py`` feeds the same
functions from raw bytes through :data:`TARGETS` (``from_bytes`` turns a fuzzer's
bytes into the structured input, ``seeds`` start its corpus from valid encodings).

A bug found but not fixed yet is recognised by :func:`known_bug` (with a strict-xfail
test in ``tests/fuzz/test_regressions.py``) so the properties stay green in CI while it
is open; ``bench/fuzz.py`` counts such hits apart from new crashes.
"""

from __future__ import annotations

import logging
import math
import re
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, cast

import trio
import trio.testing

from collabtrio.errors import CollabError, ErrorCode
from collabtrio.protocol import engineio, jsonsafe, messages, socketio
from collabtrio.protocol import engineio_session as es
from collabtrio.transport import frontdoor
from collabtrio.transport.outbox import Outbox
from collabtrio.transport.websocket import HandshakeError, ServerWebSocket

# -- mutations -----------------------------------------------------------------------

TOKENS: Final[tuple[bytes, ...]] = (
    b"\x1e", b"b", b"-", b",", b"/", b"[", b"]", b"{", b"}", b'"', b":", b"\\", b"0", b"9",
    b"probe", b"\\ud800", b"\\udc00", b"1e400", b"-1e999", b"NaN", b"Infinity", b"null",
    b"true", b'{"_placeholder":true,"num":0}', b'{"_placeholder":true,"num":99}',
    b"99999999999999999", b"\r\n", b"\r\n\r\n", b": ", b" ", b"\x00", b"\xff", b"\xc3\xa9",
    b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"HEAD", b"POST",
)
"""Fragments worth inserting: separators and the values each codec treats specially."""

Mutation = tuple[int, int, int]
"""``(kind, where, value)``; see :func:`mutate`."""


def mutate(data: bytes, ops: Sequence[Mutation]) -> bytes:
    """Apply ``ops`` to ``data`` in order: bit flip, byte set, insert, delete, truncate,
    token insert, slice duplication (``kind % 7``), at ``where`` (modulo the length)."""
    buf = bytearray(data)
    for kind, where, value in ops:
        pos = where % (len(buf) + 1)
        op = kind % 7
        if op == 0 and pos < len(buf):
            buf[pos] ^= 1 << (value % 8)
        elif op == 1 and pos < len(buf):
            buf[pos] = value % 256
        elif op == 2:
            buf.insert(pos, value % 256)
        elif op == 3 and pos < len(buf):
            del buf[pos]
        elif op == 4:
            del buf[pos:]
        elif op == 5:
            buf[pos:pos] = TOKENS[value % len(TOKENS)]
        elif op == 6:
            buf[pos:pos] = buf[pos:pos + value % 32 + 1]
    return bytes(buf)


def mutate_text(text: str, ops: Sequence[Mutation]) -> str:
    """:func:`mutate` on the UTF-8 of ``text``, decoded back as the wire would let it in
    (invalid UTF-8 becomes U+FFFD: a WebSocket text frame is always valid UTF-8)."""
    return mutate(text.encode("utf-8"), ops).decode("utf-8", "replace")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# -- known bugs ----------------------------------------------------------------------


def raised_in(exc: BaseException, path_end: str) -> bool:
    """Whether a frame of ``exc``'s traceback is in a file whose path ends ``path_end``."""
    return any(f.filename.endswith(path_end) for f in traceback.extract_tb(exc.__traceback__))


KNOWN_BUGS: Final[list[tuple[str, str, Callable[[BaseException], bool]]]] = []
"""``(name, target, matches)`` of each open bug. None are open: the bugs the fuzzers
found are fixed and kept in ``test_regressions.py``. One that cannot be fixed at once is
added here, e.g. ``("body-error", "frontdoor", lambda e: raised_in(e, "h11/_readers.py"))``."""

KNOWN_HITS: Final[Counter[str]] = Counter()
"""How often each known bug was met (``bench/fuzz.py`` reports it)."""


def known_bug(exc: BaseException, where: str) -> str | None:
    """The name of the open bug ``exc`` (raised in target ``where``) is, else None."""
    for name, target, matches in KNOWN_BUGS:
        if target == where and matches(exc):
            KNOWN_HITS[name] += 1
            return name
    return None


# -- Engine.IO packets and payloads --------------------------------------------------


def check_engineio_frame(frame: str | bytes) -> None:
    """A WebSocket message decodes to a packet or ``EngineIOProtocolError``; a decoded
    packet encodes back to the very same message."""
    try:
        packet = engineio.decode_ws(frame)
    except engineio.EngineIOProtocolError:
        assert isinstance(frame, str), "a binary frame is always a MESSAGE"
        return
    assert engineio.encode_ws(packet) == frame


def check_engineio_payload(body: str) -> None:
    """A polling body decodes to packets or ``EngineIOProtocolError``; one packet per
    ``\\x1e`` record, text records kept verbatim, and encoding the packets decodes back
    to the same packets (base64 may come back spelt canonically)."""
    try:
        packets = engineio.decode_payload(body)
    except engineio.EngineIOProtocolError:
        return
    records = body.split(engineio.RECORD_SEPARATOR)
    assert len(packets) == len(records)
    for record, packet in zip(records, packets, strict=True):
        if record.startswith("b"):
            assert packet.type is engineio.PacketType.MESSAGE
            assert isinstance(packet.data, bytes)
        else:
            assert engineio.encode_ws(packet) == record
    assert engineio.decode_payload(engineio.encode_payload(packets)) == packets


def check_engineio_roundtrip(packets: Sequence[engineio.Packet]) -> None:
    """Encoding then decoding gives the same packets, on both transports."""
    for packet in packets:
        assert engineio.decode_ws(engineio.encode_ws(packet)) == packet
    assert engineio.decode_payload(engineio.encode_payload(packets)) == list(packets)


def engineio_from_bytes(data: bytes) -> None:
    """Byte driver: first byte odd, a binary frame; else text, as a frame and a body."""
    if not data:
        return
    rest = data[1:]
    if data[0] & 1:
        check_engineio_frame(rest)
        return
    text = _text(rest)
    check_engineio_frame(text)
    check_engineio_payload(text)


ENGINEIO_SEEDS: Final[tuple[str, ...]] = (
    "4hello", "2", "3", "2probe", "3probe", "5", "6", "1", '0{"sid":"a","upgrades":[]}',
    "4hello\x1e2\x1e4world", "bAQIDBA==", "4x\x1ebAQID\x1e6", "b", "4\x1e\x1e4",
    '42["op",{"room":"doc"}]\x1e451-["a",{"_placeholder":true,"num":0}]\x1ebAQ==',
)


def _engineio_seeds() -> list[bytes]:
    return [b"\x00" + s.encode() for s in ENGINEIO_SEEDS] + [b"\x01\x00\x01\xff", b"\x01"]


# -- the Engine.IO session state machine ---------------------------------------------

OPEN_JSON: Final = ('{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,'
                    '"pingTimeout":20000,"maxPayload":1000000}')
SESSION_DATA: Final[tuple[str | bytes, ...]] = (
    "", "probe", "x", OPEN_JSON, '{"sid":"","pingInterval":1,"pingTimeout":1}', "[]", "{}",
    '{"sid":"a","upgrades":"websocket","pingInterval":1,"pingTimeout":1}',
    '{"sid":"a","pingInterval":true,"pingTimeout":1}', "null", "1e400", b"\x00\x01",
)
"""Packet data worth sending: probes, OPEN handshakes good and bad, bytes."""
LOCAL_ACTIONS: Final = ("open", "send_message", "ping", "pong", "probe", "probe_pong", "noop",
                        "upgrade", "abandon_upgrade", "close", "transport_closed")
TRANSPORTS: Final[tuple[es.Transport, es.Transport]] = ("polling", "websocket")

Step = tuple[str, Any, Any, Any]
"""``("recv", PacketType, data, transport | None)`` or ``("local", action, transport, now)``."""

_NEXT_STATES: Final = {
    state: {state} | {new for (old, _), new in es.TRANSITIONS.items() if old is state}
    for state in es.State
}


def _local(session: es.EngineSession, action: str, transport: es.Transport,
           now: float) -> engineio.Packet | es.Closed | None:
    if action == "open":
        return session.open()
    if action == "send_message":
        return session.send_message("x")
    if action == "ping":
        return session.ping(now)
    if action == "pong":
        return session.pong()
    if action == "probe":
        return session.probe(transport)
    if action == "probe_pong":
        return session.probe_pong()
    if action == "noop":
        return session.noop()
    if action == "upgrade":
        return session.upgrade()
    if action == "abandon_upgrade":
        session.abandon_upgrade()
        return None
    if action == "close":
        return session.close()
    return session.transport_closed("gone")


def _check_event(session: es.EngineSession, event: es.Event | None, packet: engineio.Packet,
                 before: es.State) -> None:
    server = session.side is es.Side.SERVER
    if event is None:
        assert before is es.State.CLOSING
        return
    if isinstance(event, es.Opened):
        assert not server
        assert before is es.State.OPENING
        assert session.state is es.State.OPEN
        assert event.sid
        assert min(event.ping_interval_ms, event.ping_timeout_ms, event.max_payload) > 0
    elif isinstance(event, es.Message):
        assert event.data == packet.data
    elif isinstance(event, es.UpgradeProbe | es.Upgraded):
        assert server
        if isinstance(event, es.Upgraded):
            assert session.transport == event.transport
    elif isinstance(event, es.ProbeAnswered):
        assert not server
    elif isinstance(event, es.Closed):
        assert session.state is es.State.CLOSED


def check_session(side: es.Side, transport: es.Transport, upgrades: Sequence[str],
                  steps: Sequence[Step]) -> None:
    """Any packet on any transport in any state: an event, or ``RemoteProtocolError``
    (``LocalProtocolError`` only once CLOSED), and a refused packet or action changes
    nothing. After every step the state is one the table allows from the last one, an
    upgrade is in progress exactly in UPGRADING, and only on another transport."""
    session = es.EngineSession(side, transport, sid="sid1" if side is es.Side.SERVER else "",
                               upgrades=upgrades, ping_interval_ms=1000, ping_timeout_ms=500)
    for kind, a, b, c in steps:
        before = (session.state, session.transport, session.probing)
        if kind == "recv":
            packet = engineio.Packet(a, b)
            try:
                event = session.receive(packet, c)
            except es.LocalProtocolError:
                assert before[0] is es.State.CLOSED, "LocalProtocolError before CLOSED"
                assert (session.state, session.transport, session.probing) == before
                continue
            except es.RemoteProtocolError:
                assert (session.state, session.transport, session.probing) == before
                continue
            except RecursionError as exc:
                if known_bug(exc, "engineio_session") is None:
                    raise
                continue
            _check_event(session, event, packet, before[0])
        else:
            try:
                out = _local(session, a, b, c)
            except es.LocalProtocolError:
                assert (session.state, session.transport, session.probing) == before
                continue
            if isinstance(out, engineio.Packet):
                engineio.encode_ws(out)
        state = session.state
        assert state in _NEXT_STATES[before[0]], f"{before[0]} -> {state}"
        assert session.transport in TRANSPORTS
        if state in (es.State.OPENING, es.State.OPEN, es.State.CLOSED):
            assert session.probing is None
        if state is es.State.UPGRADING:
            assert session.probing is not None
            assert session.probing != session.transport
        session.pong_overdue(c if kind == "local" else 0.0)
        session.next_ping_at()


def session_from_bytes(data: bytes) -> None:
    """Byte driver: byte 0 picks side, transport and upgrades; then two bytes per step
    (``< 128``: a received packet, type in bits 0-2, transport in 3-4; else a local
    action); data byte 255 takes the rest of
    the input as the packet's text."""
    if not data:
        return
    head = data[0]
    side = es.Side.CLIENT if head & 1 else es.Side.SERVER
    transport = TRANSPORTS[(head >> 1) & 1]
    upgrades = (((), ("websocket",), ("polling",), TRANSPORTS)[(head >> 2) & 3])
    steps: list[Step] = []
    i = 1
    now = 0.0
    while i + 1 < len(data):
        a, b = data[i], data[i + 1]
        i += 2
        now += 0.25
        if a >= 128:
            steps.append(("local", LOCAL_ACTIONS[(a - 128) % len(LOCAL_ACTIONS)],
                          TRANSPORTS[b & 1], now))
            continue
        ptype = engineio.PacketType((a & 7) % 7)
        via = (None, "polling", "websocket")[(a >> 3) % 3]
        payload: str | bytes
        if b == 255:
            payload, i = _text(data[i:]), len(data)
        else:
            payload = SESSION_DATA[b % len(SESSION_DATA)]
        if isinstance(payload, bytes) and ptype is not engineio.PacketType.MESSAGE:
            payload = ""  # only MESSAGE carries bytes on the wire
        steps.append(("recv", ptype, payload, via))
    check_session(side, transport, upgrades, steps)


def _session_seeds() -> list[bytes]:
    open_, probe_pong, upgrade = 0x80, 0x85, 0x87  # LOCAL_ACTIONS indices 0, 5, 7 (+128)
    ping, pong, message, upgrade_pkt = 2, 3, 4, 5
    ws_via = 2 << 3
    return [
        # server on polling: open, a message, probe and upgrade on websocket, close
        bytes([0b1100, open_, 0, message, 2, ping | ws_via, 1, probe_pong, 0,
               upgrade_pkt | ws_via, 0, 1, 0]),
        # client: OPEN handshake, ping, probe websocket, probe answered, upgrade
        bytes([0b0101, 0, 3, ping, 0, 0x84, 1, pong | ws_via, 1, upgrade, 0, pong, 0]),
        # client with a handshake given in full
        bytes([0b0001, 0, 255]) + OPEN_JSON.encode(),
    ]


# -- the Socket.IO decoder -----------------------------------------------------------


def _has_bytes(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            return True
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


def _has_placeholder(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("_placeholder") is True:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_PLAIN: Final = {socketio.PacketType.BINARY_EVENT: socketio.PacketType.EVENT,
                 socketio.PacketType.BINARY_ACK: socketio.PacketType.ACK}
_BINARY: Final = {plain: binary for binary, plain in _PLAIN.items()}


def _normal_type(packet: socketio.Packet) -> socketio.PacketType:
    """The type :func:`socketio.encode` writes for ``packet``."""
    plain = _PLAIN.get(packet.type, packet.type)
    return _BINARY.get(plain, plain) if _has_bytes(packet.data) else plain


def decode_all(frames: Sequence[str | bytes], max_attachments: int = 1000) -> socketio.Packet:
    """Feed ``frames`` to a fresh decoder; the one packet they make."""
    decoder = socketio.Decoder(max_attachments=max_attachments)
    out = [p for p in map(decoder.feed, frames) if p is not None]
    assert len(out) == 1
    assert not decoder.pending
    return out[0]


def check_socketio_roundtrip(packet: socketio.Packet) -> None:
    """A packet the encoder accepts decodes to itself (bytes where it had bytes; the
    type binary exactly when there are bytes)."""
    back = decode_all(socketio.encode(packet))
    assert back == socketio.Packet(_normal_type(packet), packet.namespace, packet.data,
                                   packet.id)


def check_decoder(frames: Sequence[str | bytes], max_attachments: int = 10) -> None:
    """Text and binary frames in any order: each gives a packet, ``None`` (a binary
    packet waits for attachments) or ``SocketIOProtocolError``, after which nothing is
    pending. A packet is well-formed: its placeholders all replaced, its ack id in range,
    and it encodes back to frames that decode to itself."""
    decoder = socketio.Decoder(max_attachments=max_attachments)
    for frame in frames:
        try:
            packet = decoder.feed(frame)
        except socketio.SocketIOProtocolError as exc:
            assert not decoder.pending
            _check_ack_id(exc.ack_id)
            continue
        if packet is None:
            assert decoder.pending
            continue
        assert not decoder.pending
        if packet.type in _PLAIN:
            assert not _has_placeholder(packet.data), "a placeholder was left unreplaced"
        _check_ack_id(packet.id)
        check_socketio_roundtrip(packet)


def _check_ack_id(ack_id: int | None) -> None:
    assert ack_id is None or 0 <= ack_id <= socketio.MAX_ACK_ID


FRAME_SEP: Final = b"\xfe\xfe"  # never in UTF-8, so text frames stay whole
BINARY_MARK: Final = b"\xff"

SOCKETIO_SEEDS: Final[tuple[tuple[str | bytes, ...], ...]] = (
    ("0",), ('0{"token":"t"}',), ('2["join",{"room":"doc"}]',),
    ('21["op",{"room":"doc","operationId":"o1","op":"add","collection":"c","id":"1",'
     '"data":{"x":1}}]',),
    ("31[{\"ok\":true}]",), ("1",), ("0/admin,{}",), ('2/ns,5["e",1]',), ('4{"message":"no"}',),
    ('51-["e",{"_placeholder":true,"num":0}]', b"\x01\x02"),
    ('62-/x,7[{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]', b"a", b"b"),
    ('51-["e",{"_placeholder":true,"num":0}]', '2["x"]'), (b"\x00",),
    ('52-9["e",{"_placeholder":true,"num":0},[{"k":{"_placeholder":true,"num":1}}]]', b"", b"z"),
)


def decoder_from_bytes(data: bytes) -> None:
    """Byte driver: byte 0 is ``max_attachments`` (mod 12); frames are separated by
    ``\\xfe\\xfe``, a frame starting ``\\xff`` is binary (the rest), else UTF-8 text."""
    if not data:
        return
    frames: list[str | bytes] = []
    for raw in data[1:].split(FRAME_SEP):
        if raw.startswith(BINARY_MARK):
            frames.append(raw[1:])
        else:
            frames.append(_text(raw))
    check_decoder(frames, data[0] % 12)


def _decoder_seeds() -> list[bytes]:
    out = []
    for frames in SOCKETIO_SEEDS:
        parts = [BINARY_MARK + f if isinstance(f, bytes) else f.encode() for f in frames]
        out.append(b"\x0a" + FRAME_SEP.join(parts))
    return out


# -- message payloads (pydantic) -----------------------------------------------------

DEEP: Final = 1500
"""Nesting depth of the deep values (past the JSON decoder's recursion limit)."""


def deep_list(depth: int = DEEP) -> list[Any]:
    """``[[[...]]]``, ``depth`` lists deep, built without recursion."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


SPECIALS: Final[dict[str, Callable[[], Any]]] = {
    "~s": lambda: "\ud800",
    "~S": lambda: "a\udfffb",
    "~i": lambda: math.inf,
    "~n": lambda: math.nan,
    "~h": lambda: 10**400,
    "~H": lambda: -(2**64),
    "~b": lambda: b"\x00bytes",
    "~d": deep_list,
    "~t": lambda: True,
}
"""Strings in seeds that :func:`with_specials` replaces by values JSON cannot spell
(or that are awkward): lone surrogates, non-finite floats, huge ints, bytes, deep lists."""


def with_specials(value: Any) -> Any:
    """``value`` (decoded JSON) with every :data:`SPECIALS` string (value or key) replaced."""
    if isinstance(value, str):
        make = SPECIALS.get(value)
        return make() if make is not None else value
    if isinstance(value, list):
        return [with_specials(v) for v in value]
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = with_specials(k) if k in ("~s", "~S") else k
            out[key] = with_specials(v)
        return out
    return value


def check_message(event: Any, payload: Any) -> None:
    """``parse_payload`` returns the event's model or raises ``CollabError``, whatever
    the name and payload; the refusal is JSON-safe (it goes back to the client) and its
    code fits (``UNKNOWN_EVENT`` exactly for unknown names, ``INVALID_ROOM`` only with a
    ``room`` key)."""
    known = isinstance(event, str) and event in messages.EVENT_MODELS
    try:
        model = messages.parse_payload(event, payload)
    except CollabError as err:
        _check_refusal(err, known, payload)
        return
    assert known
    assert isinstance(model, messages.EVENT_MODELS[event])
    assert isinstance(payload, dict)


def _check_refusal(err: CollabError, known: bool, payload: Any) -> None:
    jsonsafe.dumps(err.to_wire())
    assert (err.code is ErrorCode.UNKNOWN_EVENT) is (not known), err
    if err.code is ErrorCode.INVALID_ROOM:
        assert isinstance(payload, dict)
        assert "room" in payload
    else:
        assert err.code in (ErrorCode.UNKNOWN_EVENT, ErrorCode.VALIDATION), err


def message_from_bytes(data: bytes) -> None:
    """Byte driver: ``<event>\\x00<payload JSON>``; the JSON's :data:`SPECIALS` strings
    are replaced; a payload that is not JSON is passed as the string it is."""
    event, _, rest = _text(data).partition("\x00")
    try:
        payload: Any = with_specials(jsonsafe.loads(rest))
    except (ValueError, RecursionError):
        payload = rest
    check_message(event, payload)


MESSAGE_SEEDS: Final[tuple[tuple[str, str], ...]] = (
    ("join", '{"room":"doc","since":3}'), ("leave", '{"room":"doc"}'),
    ("op", '{"room":"doc","operationId":"o1","op":"add","collection":"c","id":"1",'
           '"data":{"x":["~s",1]},"timestamp":1.5}'),
    ("field", '{"room":"doc","operationId":"o","collection":"c","id":"1","path":["a","b"],'
              '"value":"~i","timestamp":"~h"}'),
    ("cursor", '{"room":"doc","cursor":{"x":1}}'), ("selection", '{"room":"d","selection":"~d"}'),
    ("typing", '{"room":"doc","typing":true}'),
    ("broadcast", '{"room":"doc","event":"e","data":"~n"}'),
    ("chat", '{"room":"doc","text":"hi","clientId":"~S"}'),
    ("chat-history", '{"room":"doc","before":"~H","limit":50}'),
    ("yjs-update", '{"room":"doc","update":"~b"}'),
    ("yjs-sync", '{"room":"doc","stateVector":"~b"}'),
    ("yjs-awareness", '{"room":"~s","update":"~b"}'), ("refresh-token", '{"token":"abc"}'),
    ("nope", '{"room":"doc"}'), ("join", '["doc"]'),
)


def _message_seeds() -> list[bytes]:
    return [f"{event}\x00{payload}".encode() for event, payload in MESSAGE_SEEDS]


# -- storable JSON (jsonsafe) --------------------------------------------------------


def _is_unsafe(value: Any) -> bool:
    try:
        jsonsafe.check(value)
    except jsonsafe.UnsafeJSON:
        return True
    return False


def check_json_text(text: str) -> None:
    """``loads`` decodes or raises ``UnsafeJSON``/``ValueError``/``RecursionError``; what
    it accepts is storable (``check`` passes) and ``dumps`` then ``loads`` gives it back."""
    try:
        value = jsonsafe.loads(text)
    except (ValueError, RecursionError):  # UnsafeJSON is a ValueError
        return
    jsonsafe.check(value)
    assert jsonsafe.loads(jsonsafe.dumps(value)) == value


def check_json_value(value: Any) -> None:
    """``dumps`` writes JSON or raises ``UnsafeJSON``/``ValueError``/``TypeError``/
    ``RecursionError``; it refuses every value ``check`` calls unsafe, and what it writes
    ``loads`` reads back equal."""
    unsafe = _is_unsafe(value)
    try:
        text = jsonsafe.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return
    assert not unsafe, f"dumps wrote unsafe JSON {text[:80]!r}"
    assert jsonsafe.loads(text) == value


def json_from_bytes(data: bytes) -> None:
    """Byte driver: the text through :func:`check_json_text`; the decoded value with
    :data:`SPECIALS`, and the raw string (lone surrogates kept), through
    :func:`check_json_value`."""
    text = _text(data)
    check_json_text(text)
    try:
        value = with_specials(jsonsafe.loads(text))
    except (ValueError, RecursionError):
        value = None
    check_json_value(value)
    raw = data.decode("utf-8", "surrogatepass") if _decodes(data) else text
    check_json_value({"k": raw, raw: [raw, 1.5]})


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


JSON_SEEDS: Final[tuple[str, ...]] = (
    '{"a":[1,2.5,-0.0,1e308,"x",null,true,false,{}]}', '"\\ud83d\\ude00"', '"\\ud800"',
    '"\\udc00\\ud800"', "1e400", "-1e400", "NaN", "[Infinity]", '{"\\udfff":1}', "[" * 50,
    "123456789012345678901234567890", '["~s","~i","~n","~h","~b",{"~s":"~d"}]', '"é\\u00e9"',
)


def _json_seeds() -> list[bytes]:
    return [s.encode() for s in JSON_SEEDS] + [b'"\xed\xa0\x80"']


# -- the front door's HTTP reader ----------------------------------------------------

MAX_BODY: Final = 64
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.1 [1-5]\d\d ")


class _Held:
    """A long poll that is never ready: held until the client goes away."""

    def ready(self) -> bool:
        return False

    def set_waker(self, wake: Callable[[], None] | None) -> None:
        pass

    def respond(self) -> frontdoor.HttpResponse:
        raise AssertionError("never ready")

    def abandon(self) -> None:
        pass


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def logged_exceptions(name: str = "collabtrio") -> Iterator[list[logging.LogRecord]]:
    """The log records with an exception that ``name``'s loggers emit meanwhile."""
    handler = _Records()
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.ERROR:
        logger.setLevel(logging.ERROR)  # log.exception is ERROR: it must get through
    found: list[logging.LogRecord] = []
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        found.extend(r for r in handler.records if r.exc_info)


@dataclass
class FrontdoorRun:
    """What one connection to the front door did."""

    output: bytes = b""
    http: list[str] = field(default_factory=list)  # methods the HTTP handlers saw
    # the requests handed to the WebSocket handler
    upgrades: list[frontdoor.HttpRequest] = field(default_factory=list)


def _router(run: FrontdoorRun) -> frontdoor.Router:
    router = frontdoor.Router()

    async def ok(request: frontdoor.HttpRequest) -> frontdoor.HttpResponse:
        run.http.append(request.method)
        return frontdoor.HttpResponse(200, b"ok:" + request.body)

    async def held(request: frontdoor.HttpRequest) -> _Held:
        run.http.append(request.method)
        return _Held()

    async def websocket(stream: trio.abc.Stream, request: frontdoor.HttpRequest,
                        rest: bytes) -> None:
        run.upgrades.append(request)
        # the handshake as the real endpoint starts it (no outbox needed for that)
        ws = ServerWebSocket(stream, cast(Outbox, None), max_message_size=1000)
        try:
            ws.start_handshake(request.method, request.headers, rest)
        except HandshakeError:
            pass
        await stream.aclose()

    router.http("/h", ok)
    router.http("/p/", ok, prefix=True)
    router.http("/hold", held)
    router.websocket("/ws", websocket)
    return router


async def serve_chunks(chunks: Sequence[bytes]) -> FrontdoorRun:
    """Serve one in-memory connection that sends ``chunks`` (one read each) then EOF;
    return what the server wrote. Run under a ``MockClock`` so timeouts pass at once."""
    run = FrontdoorRun()
    client, server = trio.testing.memory_stream_pair()
    out = bytearray()

    async def read_all() -> None:
        while True:
            try:
                data = await client.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            out.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: frontdoor.serve_stream(server, _router(run),
                                                          max_body_bytes=MAX_BODY,
                                                          keep_alive_s=1.0))
        nursery.start_soon(read_all)
        try:
            for chunk in chunks:
                await client.send_all(chunk)
                await trio.testing.wait_all_tasks_blocked()
            await client.send_stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    run.output = bytes(out)
    return run


class _InstantStream(trio.abc.Stream):
    """A stream that never blocks: each read returns the next chunk (then EOF), writes
    are kept. The front door over it runs to its end in one coroutine step."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = [c for c in reversed(chunks) if c]  # an empty read would be EOF
        self.out = bytearray()
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise trio.ClosedResourceError
        self.out += data

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.closed:
            raise trio.ClosedResourceError
        return self._chunks.pop() if self._chunks else b""

    async def aclose(self) -> None:
        self.closed = True


def serve_instantly(chunks: Sequence[bytes]) -> FrontdoorRun:
    """Like :func:`serve_chunks` but synchronous, for the long runs (about ten times
    faster): the connection is stepped by hand inside the caller's trio task, so the
    front door's timeouts exist but never fire (content only, no timing)."""
    run = FrontdoorRun()
    stream = _InstantStream(chunks)
    coro = frontdoor.serve_stream(stream, _router(run), max_body_bytes=MAX_BODY,
                                  keep_alive_s=1.0)
    try:
        coro.send(None)
    except StopIteration:
        pass
    else:
        coro.close()
        raise AssertionError("the front door waited on something other than its stream")
    run.output = bytes(stream.out)
    return run


def check_frontdoor(chunks: Sequence[bytes], *, tolerate_known: bool = True) -> None:
    """Any bytes on a connection: the front door never raises and logs no exception;
    it writes nothing or HTTP/1.1 responses; an upgrade hands over its request head.
    ``tolerate_known=False``: a known bug fails too (for the regression tests). Called
    from a trio task (``bench/fuzz.py``), it uses :func:`serve_instantly`."""
    with logged_exceptions() as records:
        if trio.lowlevel.in_trio_task():
            run = serve_instantly(chunks)
        else:
            run = trio.run(serve_chunks, chunks,
                           clock=trio.testing.MockClock(autojump_threshold=0))
    for record in records:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not tolerate_known or known_bug(exc, "frontdoor") is None:
            raise AssertionError(f"logged: {record.getMessage()}") from exc
    if run.output:
        assert _STATUS_LINE.match(run.output), run.output[:200]
    for request in run.upgrades:
        assert request.is_websocket_upgrade, request


CHUNK_SEP: Final = b"\xfe\xfe"

HTTP_SEEDS: Final[tuple[bytes, ...]] = (
    b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: x\r\n\r\nGET /p/a?x=1&y HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\nGET /h HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x00",
    b"GET /h HTTP/1.0\r\n\r\n",
    b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 999\r\n\r\n",
    b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
)


def frontdoor_from_bytes(data: bytes) -> None:
    """Byte driver: the bytes to send, cut into separate reads at ``\\xfe\\xfe``."""
    check_frontdoor(data.split(CHUNK_SEP))


def _http_seeds() -> list[bytes]:
    out = list(HTTP_SEEDS)
    out.append(CHUNK_SEP.join([b"GET /h HT", b"TP/1.1\r\nHost: x\r\n", b"\r\n"]))
    return out


# -- the table the long-run harness uses ---------------------------------------------


@dataclass(frozen=True)
class Target:
    """One fuzz target: a byte driver and the seeds of its corpus."""

    name: str
    from_bytes: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    instrument: tuple[str, ...] = ("collabtrio",)
    in_trio: bool = False  # run the fuzzer inside a trio task (see serve_instantly)


TARGETS: Final[dict[str, Target]] = {t.name: t for t in (
    Target("engineio", engineio_from_bytes, _engineio_seeds),
    Target("engineio_session", session_from_bytes, _session_seeds),
    Target("socketio", decoder_from_bytes, _decoder_seeds),
    Target("messages", message_from_bytes, _message_seeds),
    Target("jsonsafe", json_from_bytes, _json_seeds),
    Target("frontdoor", frontdoor_from_bytes, _http_seeds, ("collabtrio", "h11"), in_trio=True),
)}
"""Every codec target, by the name ``bench/fuzz.py --target`` takes."""
