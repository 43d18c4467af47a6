"""Unit tests for the y-protocols codec (collabtrio.protocol.yprotocol).

The byte vectors here are written by hand from lib0's encoding.js and y-protocols'
sync.js, awareness.js and auth.js; tests/interop/test_yprotocol_vectors.py checks the
codec against bytes the real packages produce.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collabtrio.protocol import yprotocol as yp
from collabtrio.protocol.yprotocol import (
    AuthMessage,
    AwarenessEntry,
    AwarenessMessage,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    YProtocolError,
)

# --- varUint -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (16383, "ff7f"),
        (16384, "808001"),
        (2**32 - 1, "ffffffff0f"),
        (2**53 - 1, "ffffffffffffff0f"),
    ],
)
def test_var_uint_vectors(value: int, encoded: str) -> None:
    data = bytes.fromhex(encoded)
    assert yp.write_var_uint(value) == data
    assert yp.read_var_uint(data, 0) == (value, len(data))
    # at an offset, with bytes after it
    assert yp.read_var_uint(b"\xaa" + data + b"\x01", 1) == (value, len(data) + 1)


def test_var_uint_accepts_non_minimal_forms_like_lib0() -> None:
    assert yp.read_var_uint(b"\x80\x00", 0) == (0, 2)
    assert yp.read_var_uint(b"\x81\x80\x80\x00", 0) == (1, 4)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (b"\x80", "truncated"),
        (b"\xff\xff\xff", "truncated"),
        (b"\xff" * 7, "truncated"),
        (b"\xff" * 8, "longer than 8"),
        (b"\x80" * 8 + b"\x00", "longer than 8"),
        (b"\x80" * 7 + b"\x10", "above"),  # 2**53
        (b"\xff" * 7 + b"\x7f", "above"),  # 2**56 - 1
    ],
)
def test_var_uint_rejects(data: bytes, match: str) -> None:
    with pytest.raises(YProtocolError, match=match):
        yp.read_var_uint(data, 0)


def test_var_uint_past_the_end_and_negative_position() -> None:
    with pytest.raises(YProtocolError, match="truncated"):
        yp.read_var_uint(b"\x01", 1)
    with pytest.raises(YProtocolError, match="truncated"):
        yp.read_var_uint(b"\x01", 5)
    with pytest.raises(ValueError, match="negative"):
        yp.read_var_uint(b"\x01", -1)


@pytest.mark.parametrize("value", [-1, 2**53, 2**64])
def test_write_var_uint_range(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        yp.write_var_uint(value)


@given(st.integers(min_value=0, max_value=yp.MAX_VAR_UINT))
def test_var_uint_round_trip(value: int) -> None:
    data = yp.write_var_uint(value)
    assert len(data) <= yp.MAX_VAR_UINT_BYTES
    assert yp.read_var_uint(data, 0) == (value, len(data))


# --- varUint8Array and varString -------------------------------------------------------


def test_var_bytes() -> None:
    assert yp.write_var_bytes(b"") == b"\x00"
    assert yp.write_var_bytes(b"abc") == b"\x03abc"
    assert yp.read_var_bytes(b"\x03abcd", 0) == (b"abc", 4)
    assert yp.read_var_bytes(b"x\x00", 1) == (b"", 2)
    big = bytes(range(256)) * 2
    assert yp.write_var_bytes(big) == b"\x80\x04" + big
    assert yp.read_var_bytes(b"\x80\x04" + big, 0) == (big, 514)


@pytest.mark.parametrize("data", [b"", b"\x04abc", b"\x01", b"\xff\xff\xff\xff\x0f", b"\x80"])
def test_var_bytes_rejects(data: bytes) -> None:
    with pytest.raises(YProtocolError):
        yp.read_var_bytes(data, 0)


def test_var_string() -> None:
    assert yp.write_var_string("") == b"\x00"
    assert yp.write_var_string("h\u00e9\U0001f600") == b"\x07h\xc3\xa9\xf0\x9f\x98\x80"
    assert yp.read_var_string(b"\x07h\xc3\xa9\xf0\x9f\x98\x80", 0) == ("h\u00e9\U0001f600", 8)
    # lib0's TextDecoder has ignoreBOM: true, so a BOM stays in the text
    assert yp.read_var_string(b"\x03\xef\xbb\xbf", 0) == ("\ufeff", 4)


@pytest.mark.parametrize(
    "data",
    [
        b"\x02\xc3\x28",  # bad continuation byte
        b"\x01\xc3",  # truncated sequence
        b"\x03\xed\xa0\x80",  # an encoded lone surrogate
        b"\x02\xc0\x80",  # overlong NUL
        b"\x01\xff",
        b"\x05abc",  # length past the end
    ],
)
def test_var_string_rejects(data: bytes) -> None:
    with pytest.raises(YProtocolError):
        yp.read_var_string(data, 0)


def test_write_var_string_refuses_lone_surrogates() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        yp.write_var_string("a\ud800")


# --- messages --------------------------------------------------------------------------

MESSAGE_VECTORS: list[tuple[Message, str]] = [
    # y-websocket: writeVarUint(messageSync) then syncProtocol.writeSyncStep1 (empty doc: sv [0])
    (SyncStep1(b"\x00"), "00000100"),
    (SyncStep2(b"\x00\x00"), "0001020000"),
    (SyncUpdate(b"\x01\x02\x03"), "000203010203"),
    (AwarenessMessage(b"\x00"), "010100"),
    # auth.js writePermissionDenied: sub-type 0, then the reason as a varString
    (AuthMessage("no"), "0200026e6f"),
    (AuthMessage(""), "020000"),
    (QueryAwareness(), "03"),
]


@pytest.mark.parametrize(("msg", "encoded"), MESSAGE_VECTORS)
def test_message_vectors(msg: Message, encoded: str) -> None:
    data = bytes.fromhex(encoded)
    assert yp.encode_message(msg) == data
    assert yp.decode_message(data) == msg


def test_long_payload_gets_a_multi_byte_length() -> None:
    update = b"u" * 200
    data = yp.encode_message(SyncUpdate(update))
    assert data[:4] == b"\x00\x02\xc8\x01"
    assert yp.decode_message(data) == SyncUpdate(update)


def test_decode_message_accepts_other_bytes_likes_and_returns_bytes() -> None:
    for data in (bytearray(b"\x00\x02\x01z"), memoryview(b"\x00\x02\x01z")):
        msg = yp.decode_message(data)  # type: ignore[arg-type]
        assert isinstance(msg, SyncUpdate)
        assert msg == SyncUpdate(b"z")
        assert type(msg.update) is bytes


def test_message_type_numbers_are_y_websockets() -> None:
    assert (yp.MESSAGE_SYNC, yp.MESSAGE_AWARENESS, yp.MESSAGE_AUTH,
            yp.MESSAGE_QUERY_AWARENESS) == (0, 1, 2, 3)
    assert (yp.SYNC_STEP1, yp.SYNC_STEP2, yp.SYNC_UPDATE) == (0, 1, 2)
    assert yp.AUTH_PERMISSION_DENIED == 0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x04", "unknown message type 4"),
        (b"\x80\x01", "unknown message type 128"),
        (b"\x80" * 7 + b"\x10", "above"),
        (b"\xff" * 9, "longer than 8"),
        (b"\x00", "truncated"),
        (b"\x00\x03\x00", "unknown sync message type 3"),
        (b"\x00\x00", "truncated"),
        (b"\x00\x00\x05ab", "past the end"),
        (b"\x00\x02\xff\xff\xff\xff\x0f", "past the end"),
        (b"\x00\x00\x01\x00\x00", "trailing"),
        (b"\x01", "truncated"),
        (b"\x01\x00\x00", "trailing"),
        (b"\x02", "truncated"),
        (b"\x02\x01\x00", "unknown auth message type 1"),
        (b"\x02\x00", "truncated"),
        (b"\x02\x00\x01\xff", "UTF-8"),
        (b"\x02\x00\x01a!", "trailing"),
        (b"\x03\x00", "trailing"),
    ],
)
def test_decode_message_rejects(data: bytes, match: str) -> None:
    with pytest.raises(YProtocolError, match=match):
        yp.decode_message(data)


def test_encode_message_refuses_other_objects() -> None:
    with pytest.raises(TypeError):
        yp.encode_message("hello")  # type: ignore[arg-type]


def test_messages_are_frozen_value_objects() -> None:
    msg = SyncUpdate(b"x")
    with pytest.raises(AttributeError):
        msg.update = b"y"  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")
    assert QueryAwareness() == QueryAwareness()


# --- awareness -------------------------------------------------------------------------


def test_awareness_vector() -> None:
    # encodeAwarenessUpdate: count, then per client: id, clock, JSON.stringify(state)
    entries = [AwarenessEntry(1, 0, "{}"), AwarenessEntry(300, 128, "null")]
    data = bytes.fromhex("02" "01" "00" "02" "7b7d" "ac02" "8001" "04" "6e756c6c")
    assert yp.encode_awareness(entries) == data
    assert yp.decode_awareness(data) == entries
    assert yp.encode_awareness([]) == b"\x00"
    assert yp.decode_awareness(b"\x00") == []


def test_awareness_state_text_is_kept_verbatim() -> None:
    state = '{ "b" : 1,\n "a":[1e2, -0.0, "\\u00e9"]}'
    data = yp.encode_awareness([AwarenessEntry(5, 1, state)])
    assert yp.decode_awareness(data) == [AwarenessEntry(5, 1, state)]


@pytest.mark.parametrize(
    "state", ["0", '"s"', "[]", "true", "-1.5e300", "1" * 5000, '"\\ud800"', " null "]
)
def test_any_json_value_is_a_state(state: str) -> None:
    # JSON.parse reads all of these (a lone surrogate escape, a huge number included)
    data = yp.encode_awareness([AwarenessEntry(1, 1, state)])
    assert yp.decode_awareness(data)[0].state == state


def _entry(state: bytes) -> bytes:
    return b"\x01\x01\x00" + yp.write_var_bytes(state)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (b"\x01", "cannot fit"),
        (b"\xff\xff\xff\xff\x0f", "cannot fit"),
        (b"\x02\x01\x00\x01", "cannot fit"),
        (b"\x01\x01\x00\x05nul", "past the end"),
        (b"\x01\x01\x00\x80", "truncated"),
        (b"\x01\x80\x80\x80", "truncated"),
        (_entry(b""), "not JSON"),
        (_entry(b"abc"), "not JSON"),
        (_entry(b"NaN"), "not JSON"),
        (_entry(b"Infinity"), "not JSON"),
        (_entry(b"-Infinity"), "not JSON"),
        (_entry(b"{'a': 1}"), "not JSON"),
        (_entry(b"[1,]"), "not JSON"),
        (_entry(b"null null"), "not JSON"),
        (_entry(b'"\x01"'), "not JSON"),  # a raw control character in a string
        (_entry(b"\xef\xbb\xbfnull"), "not JSON"),  # JSON.parse refuses a BOM too
        (_entry(b"\xc3\x28"), "UTF-8"),
        (_entry(b"null") + b"\x00", "trailing"),
        (b"\x00\x00", "trailing"),
    ],
)
def test_decode_awareness_rejects(data: bytes, match: str) -> None:
    with pytest.raises(YProtocolError, match=match):
        yp.decode_awareness(data)


def test_nesting_too_deep_for_python_is_rejected_not_a_crash() -> None:
    with pytest.raises(YProtocolError, match="not JSON"):
        yp.decode_awareness(_entry(b"[" * 100_000 + b"]" * 100_000))


@pytest.mark.parametrize("state", ["", "undefined", "NaN", "{", "'x'"])
def test_encode_awareness_refuses_a_state_that_is_not_json(state: str) -> None:
    with pytest.raises(ValueError, match="not JSON"):
        yp.encode_awareness([AwarenessEntry(1, 1, state)])


def test_encode_awareness_refuses_out_of_range_numbers() -> None:
    with pytest.raises(ValueError, match="out of range"):
        yp.encode_awareness([AwarenessEntry(-1, 0, "null")])
    with pytest.raises(ValueError, match="out of range"):
        yp.encode_awareness([AwarenessEntry(1, 2**53, "null")])


def test_removal_update_keeps_the_clock_and_sends_null() -> None:
    # removeAwarenessStates leaves a remote client's clock as it is; receivers take a
    # null state at an equal clock as a removal
    data = yp.removal_update([(1, 5), (300, 0)])
    assert data == bytes.fromhex("02" "0105046e756c6c" "ac0200046e756c6c")
    assert yp.decode_awareness(data) == [
        AwarenessEntry(1, 5, "null"), AwarenessEntry(300, 0, "null")
    ]
    assert yp.removal_update(iter([])) == b"\x00"


# --- properties ------------------------------------------------------------------------

_uints = st.one_of(
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=0, max_value=yp.MAX_VAR_UINT),
    st.sampled_from([127, 128, 2**32 - 1, 2**53 - 1]),
)
_json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_states = st.builds(
    lambda value, ascii_only, indent: json.dumps(value, ensure_ascii=ascii_only, indent=indent),
    _json_values, st.booleans(), st.sampled_from([None, 0, 2]),
)
_entries = st.builds(AwarenessEntry, _uints, _uints, _states)
_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(SyncStep1, st.binary()),
    st.builds(SyncStep2, st.binary()),
    st.builds(SyncUpdate, st.binary(max_size=300)),
    st.builds(AwarenessMessage, st.binary()),
    st.builds(AuthMessage, st.text()),
    st.just(QueryAwareness()),
)


@given(_messages)
def test_message_round_trip(msg: Message) -> None:
    assert yp.decode_message(yp.encode_message(msg)) == msg


@given(st.lists(_entries, max_size=6))
def test_awareness_round_trip(entries: list[AwarenessEntry]) -> None:
    data = yp.encode_awareness(entries)
    assert yp.decode_awareness(data) == entries
    # an AwarenessMessage carries the update untouched
    assert yp.decode_message(yp.encode_message(AwarenessMessage(data))) == AwarenessMessage(data)


@given(_messages, st.data())
def test_every_strict_prefix_and_extension_of_a_message_is_rejected(
    msg: Message, data: st.DataObject
) -> None:
    encoded = yp.encode_message(msg)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(YProtocolError):
        yp.decode_message(encoded[:cut])
    with pytest.raises(YProtocolError, match="trailing"):
        yp.decode_message(encoded + data.draw(st.binary(min_size=1, max_size=4)))


@given(st.lists(_entries, max_size=4), st.data())
def test_every_strict_prefix_and_extension_of_an_awareness_update_is_rejected(
    entries: list[AwarenessEntry], data: st.DataObject
) -> None:
    encoded = yp.encode_awareness(entries)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(YProtocolError):
        yp.decode_awareness(encoded[:cut])
    with pytest.raises(YProtocolError, match="trailing"):
        yp.decode_awareness(encoded + data.draw(st.binary(min_size=1, max_size=4)))


_prefixes = st.sampled_from([b"", b"\x00", b"\x00\x00", b"\x00\x01", b"\x00\x02", b"\x01",
                             b"\x02\x00", b"\x03", b"\x01\x01", b"\x02", b"\xff"])
_noise = st.one_of(st.binary(max_size=64), st.builds(bytes.__add__, _prefixes, st.binary()))


@given(_noise)
def test_arbitrary_bytes_into_decode_message_raise_only_yprotocolerror(data: bytes) -> None:
    try:
        msg = yp.decode_message(data)
    except YProtocolError:
        return
    # whatever decoded encodes back to a message that decodes the same
    assert yp.decode_message(yp.encode_message(msg)) == msg


_awareness_noise = st.one_of(
    st.binary(max_size=64),
    st.builds(bytes.__add__, st.sampled_from([b"\x01\x01\x00", b"\x01\x00\x00\x04", b"\x02"]),
              st.binary(max_size=32)),
    st.builds(lambda n, body: yp.write_var_uint(n) + body, _uints, st.binary(max_size=64)),
)


@given(_awareness_noise)
def test_arbitrary_bytes_into_decode_awareness_raise_only_yprotocolerror(data: bytes) -> None:
    try:
        entries = yp.decode_awareness(data)
    except YProtocolError:
        return
    assert yp.decode_awareness(yp.encode_awareness(entries)) == entries


def test_decode_state_vector_reads_pycrdt_state() -> None:
    """pycrdt's state vector decodes to each client's clock (characters inserted)."""
    import pycrdt

    doc: pycrdt.Doc[object] = pycrdt.Doc(client_id=7)
    doc.get("text", type=pycrdt.Text).insert(0, "hello")
    assert yp.decode_state_vector(doc.get_state()) == {7: 5}
    assert yp.decode_state_vector(pycrdt.Doc().get_state()) == {}


@pytest.mark.parametrize("data", [b"\x05\x01", b"\x01\x07\x05\x00", b"\x01\x80"])
def test_decode_state_vector_rejects(data: bytes) -> None:
    with pytest.raises(yp.YProtocolError):
        yp.decode_state_vector(data)
