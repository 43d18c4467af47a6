"""Presence lists: the encoded list the wire gets is the list, whatever changed since
the last one (each member's entry is cached as text and must never go stale)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from collabtrio.auth.tokens import Identity
from collabtrio.protocol.jsonsafe import RawJSON
from collabtrio.rooms.presence import Member, presence_json, presence_payload


@dataclasses.dataclass
class _Conn:
    sid: str
    identity: Identity


def _members(n: int) -> list[Member]:
    return [
        Member(_Conn(f"sid-{i}", Identity(f"user-{i % 3}", f"User {i}", None, None)),
               "write", 1000 + i, 1000 + i)
        for i in range(n)
    ]


def _same(members: list[Member]) -> dict[str, Any]:
    raw = presence_json("r", members)
    assert isinstance(raw, RawJSON)
    listed: dict[str, Any] = json.loads(raw.text)
    assert listed == presence_payload("r", members)
    return listed


def test_the_encoded_list_is_the_list() -> None:
    members = _members(5)
    listed = _same(members)
    assert listed["connections"] == 5
    assert listed["uniqueUsers"] == 3
    assert [u["socketId"] for u in listed["users"]] == [f"sid-{i}" for i in range(5)]
    assert _same([])["users"] == []


def test_every_change_to_what_an_entry_shows_reaches_the_next_list() -> None:
    members = _members(3)
    _same(members)
    m = members[1]
    m.update_presence("cursor", {"cursor": {"x": 1, "y": 2}})
    assert _same(members)["users"][1]["cursor"] == {"x": 1, "y": 2}
    m.update_presence("selection", {"selection": {"from": 3, "to": 4}})
    m.update_presence("typing", {"typing": True})
    entry = _same(members)["users"][1]
    assert entry["selection"] == {"from": 3, "to": 4}
    assert entry["typing"] is True
    m.role = "admin"
    m.last_activity = 9999
    entry = _same(members)["users"][1]
    assert (entry["role"], entry["lastActivity"]) == ("admin", 9999)
    # a refreshed token may rename the user: a new identity is a new entry
    m.conn.identity = Identity("user-1", "Renamed", None, "https://example.test/a.png")  # type: ignore[misc]
    entry = _same(members)["users"][1]
    assert (entry["userName"], entry["avatarUrl"]) == ("Renamed", "https://example.test/a.png")
    # a new cursor equal to the old one keeps the encoded entry (compared by value)
    before = m.entry_json()
    m.update_presence("cursor", {"cursor": {"x": 1, "y": 2}})
    m.update_presence("cursor", {"cursor": {"x": 1, "y": 2}})
    assert m.entry_json() is before


def test_a_binary_cursor_makes_the_list_an_object_again() -> None:
    """Bytes cannot be JSON text: the list is then the object itself (a binary event)."""
    members = _members(2)
    members[0].update_presence("cursor", {"cursor": {"blob": b"\x01"}})
    listed = presence_json("r", members)
    assert listed == presence_payload("r", members)
    members[0].update_presence("cursor", {"cursor": None})
    assert isinstance(presence_json("r", members), RawJSON)
