"""Property tests of every codec and state machine with hypothesis (run in CI).

Inputs are valid encodings under random mutations (bit flips, byte changes, inserts of
separators and special values, truncation, duplicated slices), plus raw random ones, so
the deep paths are reached. The properties are in :mod:`tests.fuzz.targets` and are
shared with ``bench/fuzz.py``. Each test is bounded (``max_examples``), with no
deadline and no timing assertion.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collabtrio.protocol import engineio, socketio
from collabtrio.protocol import engineio_session as es
from collabtrio.protocol.messages import EVENT_MODELS

from . import targets

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_SLOW = settings(FUZZ, max_examples=40)

mutations = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1 << 16), st.integers(0, 255)),
                     max_size=8)
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
                     max_size=3)

# -- Engine.IO ----------------------------------------------------------------------

_text_packet = st.builds(engineio.Packet, st.sampled_from(list(engineio.PacketType)),
                         st.text(st.characters(exclude_characters="\x1e", codec="utf-8")))
_binary_packet = st.builds(engineio.Packet, st.just(engineio.PacketType.MESSAGE), st.binary())
_packets = st.lists(st.one_of(_text_packet, _binary_packet), min_size=1, max_size=6)
_bodies = st.one_of(
    st.builds(lambda ps, ops: targets.mutate_text(engineio.encode_payload(ps), ops),
              _packets, mutations),
    st.builds(targets.mutate_text, st.sampled_from(targets.ENGINEIO_SEEDS), mutations),
    st.text(),
)


@FUZZ
@given(_packets)
def test_engineio_round_trip(packets: list[engineio.Packet]) -> None:
    targets.check_engineio_roundtrip(packets)


@FUZZ
@given(_bodies)
def test_engineio_payload_decoding(body: str) -> None:
    targets.check_engineio_payload(body)


@FUZZ
@given(st.one_of(_bodies, st.binary()))
def test_engineio_frame_decoding(frame: str | bytes) -> None:
    targets.check_engineio_frame(frame)


# -- the Engine.IO session ----------------------------------------------------------

_transports = st.sampled_from(targets.TRANSPORTS)
_open_data = st.builds(targets.mutate_text, st.just(targets.OPEN_JSON), mutations)
_recv = st.one_of(
    st.tuples(st.just("recv"), st.sampled_from(list(engineio.PacketType)),
              st.one_of(st.sampled_from([d for d in targets.SESSION_DATA
                                         if isinstance(d, str)]), _open_data, st.text()),
              st.none() | _transports),
    st.tuples(st.just("recv"), st.just(engineio.PacketType.MESSAGE), st.binary(),
              st.none() | _transports),
)
_local = st.tuples(st.just("local"), st.sampled_from(targets.LOCAL_ACTIONS), _transports,
                   st.floats(0, 100))


@FUZZ
@given(side=st.sampled_from(list(es.Side)), transport=_transports,
       upgrades=st.sampled_from([(), ("websocket",), ("polling",), targets.TRANSPORTS]),
       steps=st.lists(st.one_of(_recv, _local), max_size=30))
def test_engineio_session_any_packet_in_any_state(
    side: es.Side, transport: es.Transport, upgrades: tuple[str, ...],
    steps: list[targets.Step],
) -> None:
    targets.check_session(side, transport, upgrades, steps)


# -- the Socket.IO decoder ----------------------------------------------------------

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False,
                                                                       allow_infinity=False),
    st.text(max_size=10),
)
_data = st.recursive(_json_leaf | st.binary(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                     max_leaves=12)
_namespace = st.one_of(st.just("/"), st.text(st.characters(exclude_characters=",", codec="utf-8"),
                                             max_size=6).map(lambda s: "/" + s))
_ack_id = st.none() | st.integers(0, socketio.MAX_ACK_ID)
_event = st.builds(lambda name, args, ns, pid: socketio.Packet(
    socketio.PacketType.EVENT, ns, [name, *args], pid), st.text(max_size=8),
    st.lists(_data, max_size=3), _namespace, _ack_id)
_ack = st.builds(lambda args, ns, pid: socketio.Packet(socketio.PacketType.ACK, ns, args, pid),
                 st.lists(_data, max_size=3), _namespace, st.integers(0, socketio.MAX_ACK_ID))
_json_object = st.dictionaries(st.text(max_size=5), _json_leaf, max_size=3)
_control = st.one_of(
    st.builds(lambda ns, d: socketio.Packet(socketio.PacketType.CONNECT, ns, d), _namespace,
              st.none() | _json_object),
    st.builds(lambda ns: socketio.Packet(socketio.PacketType.DISCONNECT, ns), _namespace),
    st.builds(lambda ns, d: socketio.Packet(socketio.PacketType.CONNECT_ERROR, ns, d),
              _namespace, _json_object),
)
_sio_packets = st.one_of(_event, _ack, _control)


@st.composite
def _frame_sequences(draw: st.DrawFn) -> tuple[list[str | bytes], int]:
    """Several packets' frames, text mutated, frames dropped, repeated and reordered,
    stray binary frames added."""
    frames: list[str | bytes] = []
    for packet in draw(st.lists(_sio_packets, min_size=1, max_size=4)):
        frames.extend(socketio.encode(packet))
    for seed in draw(st.lists(st.sampled_from(targets.SOCKETIO_SEEDS), max_size=2)):
        frames.extend(seed)
    out: list[str | bytes] = []
    for frame in frames:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            continue  # dropped
        if isinstance(frame, str) and roll <= 3:
            frame = targets.mutate_text(frame, draw(mutations))
        out.append(frame)
        if roll == 9:
            out.append(frame)  # repeated
    if draw(st.booleans()):
        out = draw(st.permutations(out))
    for _ in range(draw(st.integers(0, 2))):
        out.insert(draw(st.integers(0, len(out))), draw(st.binary(max_size=4)))
    return out, draw(st.integers(0, 12))


@FUZZ
@given(_sio_packets)
def test_socketio_round_trip(packet: socketio.Packet) -> None:
    targets.check_socketio_roundtrip(packet)


@FUZZ
@given(_frame_sequences())
def test_socketio_decoder_frames_in_any_order(case: tuple[list[str | bytes], int]) -> None:
    frames, max_attachments = case
    targets.check_decoder(frames, max_attachments)


@FUZZ
@given(st.lists(st.one_of(st.text(), st.binary()), max_size=6), st.integers(0, 12))
def test_socketio_decoder_random_frames(frames: list[str | bytes], max_attachments: int) -> None:
    targets.check_decoder(frames, max_attachments)


# -- message payloads ---------------------------------------------------------------

_weird = st.one_of(
    surrogates, st.sampled_from([float("inf"), float("-inf"), float("nan"), 10**400, -(2**70),
                                 True, b"bytes", bytearray(b"ba"), memoryview(b"mv"), ""]),
    st.builds(targets.deep_list), st.text(max_size=300), _data,
)
_seed_payloads = st.sampled_from(targets.MESSAGE_SEEDS).map(
    lambda seed: (seed[0], targets.with_specials(json.loads(seed[1]))))


@st.composite
def _messages(draw: st.DrawFn) -> tuple[Any, Any]:
    """A seed payload of a known event with fields deleted, replaced by weird values and
    added; the event name sometimes another one, or any text."""
    event, payload = draw(_seed_payloads)
    if isinstance(payload, dict):
        payload = dict(payload)
        for _ in range(draw(st.integers(0, 3))):
            keys = sorted(payload, key=str)
            roll = draw(st.integers(0, 2))
            if roll == 0 and keys:
                del payload[draw(st.sampled_from(keys))]
            elif roll == 1 and keys:
                payload[draw(st.sampled_from(keys))] = draw(_weird)
            else:
                payload[draw(st.text(max_size=12) | surrogates)] = draw(_weird)
    name = draw(st.one_of(st.just(event), st.sampled_from(sorted(EVENT_MODELS)),
                          st.text(max_size=120), surrogates))
    return name, payload


@FUZZ
@given(_messages())
def test_message_parsing_mutated_payloads(case: tuple[Any, Any]) -> None:
    targets.check_message(*case)


@FUZZ
@given(st.one_of(st.sampled_from(sorted(EVENT_MODELS)), st.text(), st.integers(), st.none()),
       st.one_of(_weird, _data, st.dictionaries(st.text(max_size=10), _weird, max_size=5)))
def test_message_parsing_anything(event: Any, payload: Any) -> None:
    targets.check_message(event, payload)


# -- storable JSON ------------------------------------------------------------------

_json_values = st.recursive(
    _json_leaf | _weird.filter(lambda v: not isinstance(v, bytes | bytearray | memoryview)),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5) | surrogates, inner, max_size=4),
    max_leaves=12,
)
_json_texts = st.one_of(
    st.builds(targets.mutate_text, st.sampled_from(targets.JSON_SEEDS), mutations),
    st.builds(lambda v, ops: targets.mutate_text(json.dumps(v), ops),
              st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                           max_leaves=10), mutations),
    st.text(),
)


@FUZZ
@given(_json_texts)
def test_jsonsafe_loads(text: str) -> None:
    targets.check_json_text(text)


@FUZZ
@given(_json_values)
def test_jsonsafe_dumps(value: Any) -> None:
    targets.check_json_value(value)


# -- the front door's HTTP reader ---------------------------------------------------


@st.composite
def _http_chunks(draw: st.DrawFn) -> list[bytes]:
    """Seed requests (one or two, pipelined) mutated, cut into separate reads."""
    data = b"".join(draw(st.lists(st.sampled_from(targets.HTTP_SEEDS), min_size=1,
                                  max_size=2)))
    data = targets.mutate(data, draw(mutations))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@FUZZ_SLOW
@given(_http_chunks())
def test_frontdoor_mutated_requests(chunks: list[bytes]) -> None:
    targets.check_frontdoor(chunks)


@FUZZ_SLOW
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=3))
def test_frontdoor_random_bytes(chunks: list[bytes]) -> None:
    targets.check_frontdoor(chunks)


# -- the byte drivers of bench/fuzz.py ----------------------------------------------


def test_every_long_run_target_passes_its_seeds() -> None:
    """The harness's drivers stay in step with the properties: every seed passes."""
    for target in targets.TARGETS.values():
        for seed in target.seeds():
            target.from_bytes(seed)


@FUZZ_SLOW
@given(st.sampled_from(sorted(targets.TARGETS)), st.data())
def test_long_run_targets_on_mutated_seeds(name: str, data: st.DataObject) -> None:
    target = targets.TARGETS[name]
    seed = data.draw(st.sampled_from(target.seeds()))
    target.from_bytes(targets.mutate(seed, data.draw(mutations)))
