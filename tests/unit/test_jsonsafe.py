"""``jsonsafe``: the storable-JSON gate every client value passes and every server
message is built with."""

from __future__ import annotations

import json

import pytest

from collabtrio.protocol import jsonsafe


@pytest.mark.parametrize("text", [
    '"\\ud800"', '"\\uDBFF"', '"x\\udc00"', '{"\\ud800":1}', '["\\ud83d"]',
    '"\\ude00\\ud83d"',  # a pair in the wrong order is two lone halves
    '1e400', '-1e400', '[1.0e999]', '{"a":{"b":[1' + '0' * 400 + '.5]}}',
    'NaN', 'Infinity', '-Infinity', '[NaN]',
])
def test_loads_refuses_what_cannot_be_stored(text: str) -> None:
    with pytest.raises(jsonsafe.UnsafeJSON):
        jsonsafe.loads(text)


@pytest.mark.parametrize(("text", "value"), [
    ('"\\ud83d\\ude00"', "\U0001f600"),  # a valid pair is one code point
    ('"\\\\ud800"', "\\ud800"),  # an escaped backslash: six plain characters
    ('1e308', 1e308),
    ('-0.0', -0.0),
    ('123456789012345678901234567890', 123456789012345678901234567890),
    ('{"a":[1,2.5,"é",null,true]}', {"a": [1, 2.5, "é", None, True]}),
])
def test_loads_keeps_valid_json(text: str, value: object) -> None:
    assert jsonsafe.loads(text) == value


def test_malformed_json_is_still_a_value_error() -> None:
    with pytest.raises(ValueError, match="Expecting property name") as info:
        jsonsafe.loads("{")
    assert not isinstance(info.value, jsonsafe.UnsafeJSON)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "\ud800", {"\udc00": 1},
                                   [{"a": ["\udbff"]}]])
def test_dumps_and_check_refuse_what_cannot_be_sent(value: object) -> None:
    with pytest.raises(jsonsafe.UnsafeJSON):
        jsonsafe.dumps(value)
    with pytest.raises(jsonsafe.UnsafeJSON):
        jsonsafe.check(value)


def test_dumps_is_compact_and_keeps_non_ascii() -> None:
    value = {"t": "é 🎉", "n": [1, 2.5]}
    text = jsonsafe.dumps(value)
    assert text == '{"t":"é 🎉","n":[1,2.5]}'
    assert json.loads(text) == value
    jsonsafe.check(value)
