"""Storable JSON only: every value a client sends, and every value the server sends.

JSON text can spell two things that are not data every peer can hold: a lone UTF-16
surrogate (``"\\ud800"``: Python's :mod:`json` decodes it into a ``str`` that cannot be
encoded as UTF-8, so SQLite, PostgreSQL and every UTF-8 frame refuse it later, far from
the sender) and a number out of the double range (``1e400`` decodes as infinity, which
JavaScript's ``JSON.parse`` cannot read back). :func:`loads` refuses both at the edge,
so they never reach a room; :func:`dumps` refuses them on the way out, so the server
never sends invalid JSON whatever got in.

Cost: numbers with a fraction or exponent go through one small Python call each; the
surrogate check walks the decoded value only when the text holds a ``\\uD800``-
``\\uDFFF`` escape at all (a valid pair is decoded into one code point, so anything
left in the range after decoding is lone).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

__all__ = ["RawJSON", "UnsafeJSON", "check", "dumps", "dumps_message", "loads", "resolve_raw"]


class UnsafeJSON(ValueError):
    """JSON that is not storable: a lone surrogate, a non-finite number, NaN."""


_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnsafeJSON(f"number {text[:40]!r} is out of range (not a finite double)")
    return value


def _no_constant(name: str) -> Any:
    raise UnsafeJSON(f"{name} is not JSON")


_decoder: Final = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)
_encoder: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string (key or value) in decoded JSON holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            for key, sub in item.items():
                if _SURROGATE.search(key):
                    return True
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads(text: str) -> Any:
    """Decode JSON text, refusing what is not storable (:class:`UnsafeJSON`).

    Other malformed input raises :class:`ValueError` (``json.JSONDecodeError``), and
    nesting too deep for the decoder :class:`RecursionError`, as :func:`json.loads`.
    """
    value = _decoder.decode(text)
    if not text.isascii() and _SURROGATE.search(text):
        # a raw one (no UTF-8 wire path gives one, but a caller's str can)
        raise UnsafeJSON("text holds a lone UTF-16 surrogate: not valid Unicode")
    if _SURROGATE_ESCAPE.search(text) is not None and _has_lone_surrogate(value):
        raise UnsafeJSON("string holds a lone UTF-16 surrogate (\\ud800-\\udfff escape "
                         "without its pair): not valid Unicode")
    return value


def check(value: Any) -> None:
    """Raise :class:`UnsafeJSON` if ``value`` (decoded JSON, or built by the server)
    holds a lone surrogate or a non-finite number. Walks the whole value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise UnsafeJSON("string holds a lone UTF-16 surrogate: not valid Unicode")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnsafeJSON(f"{item} is not a finite number")
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    raise UnsafeJSON("key holds a lone UTF-16 surrogate: not valid Unicode")
                stack.append(sub)
        elif isinstance(item, list | tuple):
            stack.extend(item)


class RawJSON:
    """A value already encoded as JSON text (by :func:`dumps`, so storable), that
    :func:`dumps_message` embeds as it is: in place of a message's payload, or of one
    of the values of a payload that is a ``dict``. For a value sent many times that is
    dear to encode (a room's presence list)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text
        """The JSON text."""

    def value(self) -> Any:
        """The value, decoded again."""
        return _decoder.decode(self.text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawJSON) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return f"RawJSON({shown!r})"


def dumps_message(value: Any) -> str:
    """:func:`dumps` for a message's payload, which may be a :class:`RawJSON` or a
    ``dict`` with :class:`RawJSON` values (spliced in as they are, after the others)."""
    if type(value) is RawJSON:
        return value.text
    if type(value) is dict and RawJSON in map(type, value.values()):
        raw = [(k, v) for k, v in value.items() if type(v) is RawJSON]
        rest = dumps({k: v for k, v in value.items() if type(v) is not RawJSON})
        spliced = ",".join(f"{dumps(k)}:{v.text}" for k, v in raw)
        return f"{rest[:-1]}{',' if len(rest) > 2 else ''}{spliced}}}"
    return dumps(value)


def resolve_raw(value: Any) -> Any:
    """``value`` with :class:`RawJSON` (itself, or its ``dict``'s values) decoded, for
    encoders that cannot splice text (a message with binary attachments)."""
    if type(value) is RawJSON:
        return value.value()
    if type(value) is dict and RawJSON in map(type, value.values()):
        return {k: v.value() if type(v) is RawJSON else v for k, v in value.items()}
    return value


def dumps(value: Any, default: Any = None) -> str:
    """Compact JSON (non-ASCII kept) that is valid UTF-8 JSON, or :class:`UnsafeJSON`.

    ``TypeError`` for a value that is not JSON at all (bytes, objects), as
    :func:`json.dumps`, unless ``default`` turns it into JSON.
    """
    try:
        if default is None:
            text = _encoder.encode(value)
        else:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False, default=default)
    except ValueError as exc:  # allow_nan=False
        raise UnsafeJSON(str(exc)) from None
    if not text.isascii() and _SURROGATE.search(text):
        raise UnsafeJSON("string holds a lone UTF-16 surrogate: not valid Unicode")
    return text
