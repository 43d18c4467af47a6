"""Tests for collabtrio.rooms.debounce: coalescing of ``field`` writes (PROTOCOL section 5).

Covered: what a pending key records (last value wins, every waiter kept, first and
last write times), ``next_deadline`` (trailing window, capped by the maximum hold,
the earliest key, ``inf`` when idle), a value written every 10 ms still being flushed
by the maximum hold, ``take_entity`` taking only that entity's keys, ``take_all`` in
first-write order, and the ``by_operation`` index. Times are passed in, so the
expected deadlines are exact floats (binary fractions, or sums the float type holds
exactly).
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from collabtrio.rooms.debounce import FieldDebouncer, FieldKey, FieldWaiter, PendingField

WINDOW = 0.25
HOLD = 1.0

COLOR: FieldKey = ("shapes", "s1", ("style", "color"))
WIDTH: FieldKey = ("shapes", "s1", ("style", "width"))
OTHER_ID: FieldKey = ("shapes", "s2", ("style", "color"))
OTHER_COLLECTION: FieldKey = ("notes", "s1", ("style", "color"))


def waiter(operation_id: str, conn: str = "conn-1", ack_id: int | None = None) -> FieldWaiter:
    # the debouncer only stores the connection, so a string stands in for one
    return FieldWaiter(conn, operation_id, ack_id)


def debouncer() -> FieldDebouncer:
    return FieldDebouncer(WINDOW, HOLD)


# -- the empty debouncer -----------------------------------------------------------------


def test_empty_debouncer() -> None:
    d = debouncer()
    assert len(d) == 0
    assert d.next_deadline() == math.inf
    assert d.take_all() == []
    assert d.take_entity("shapes", "s1") == []
    assert d.by_operation == {}


# -- what a key records ----------------------------------------------------------------


def test_first_write_records_everything() -> None:
    d = debouncer()
    w = waiter("op-1", "conn-1", 7)
    d.add(COLOR, "red", w, 1234.5, now=2.0)
    assert len(d) == 1
    assert d.pending == {
        COLOR: PendingField(
            key=COLOR, value="red", conn="conn-1", operation_id="op-1", timestamp=1234.5,
            first_at=2.0, last_at=2.0, waiters=[w],
        )
    }
    assert d.next_deadline() == 2.25


def test_last_value_wins_and_every_waiter_is_kept() -> None:
    d = debouncer()
    w1 = waiter("op-1", "conn-1", 1)
    w2 = waiter("op-2", "conn-2", None)
    w3 = waiter("op-3", "conn-2", 3)
    d.add(COLOR, "red", w1, 100.0, now=2.0)
    d.add(COLOR, "green", w2, 200.0, now=2.125)
    d.add(COLOR, "blue", w3, None, now=2.25)
    assert len(d) == 1
    entry = d.pending[COLOR]
    assert entry.value == "blue"
    assert entry.conn == "conn-2"  # who sent the newest value, not the first
    assert entry.operation_id == "op-3"
    assert entry.timestamp is None  # the newest write's timestamp, even when absent
    assert entry.first_at == 2.0
    assert entry.last_at == 2.25
    assert entry.waiters == [w1, w2, w3]


def test_null_value_is_a_value() -> None:
    d = debouncer()
    d.add(COLOR, "red", waiter("op-1"), None, now=0.0)
    d.add(COLOR, None, waiter("op-2"), None, now=0.125)
    assert d.pending[COLOR].value is None
    assert len(d) == 1


def test_keys_differ_by_collection_id_and_path() -> None:
    d = debouncer()
    for i, key in enumerate([COLOR, WIDTH, OTHER_ID, OTHER_COLLECTION]):
        d.add(key, i, waiter(f"op-{i}"), None, now=0.0)
    assert len(d) == 4
    assert [e.value for e in d.pending.values()] == [0, 1, 2, 3]
    assert ("shapes", "s1", ("style",)) not in d.pending


# -- next_deadline ------------------------------------------------------------------------


def test_trailing_window_moves_with_each_write() -> None:
    d = debouncer()
    d.add(COLOR, 1, waiter("op-1"), None, now=2.0)
    assert d.next_deadline() == 2.25
    d.add(COLOR, 2, waiter("op-2"), None, now=2.125)
    assert d.next_deadline() == 2.375
    d.add(COLOR, 3, waiter("op-3"), None, now=2.5)
    assert d.next_deadline() == 2.75


def test_max_hold_caps_the_trailing_window() -> None:
    d = debouncer()
    d.add(COLOR, 1, waiter("op-1"), None, now=2.0)
    d.add(COLOR, 2, waiter("op-2"), None, now=2.5)
    assert d.next_deadline() == 2.75  # trailing: 2.5 + 0.25 < 2.0 + 1.0
    d.add(COLOR, 3, waiter("op-3"), None, now=2.875)
    assert d.next_deadline() == 3.0  # 2.875 + 0.25 would pass 2.0 + 1.0
    d.add(COLOR, 4, waiter("op-4"), None, now=3.5)  # late write: already overdue
    assert d.next_deadline() == 3.0


def test_hold_shorter_than_window_wins_from_the_first_write() -> None:
    d = FieldDebouncer(window_s=1.0, max_hold_s=0.25)
    d.add(COLOR, 1, waiter("op-1"), None, now=4.0)
    assert d.next_deadline() == 4.25


def test_zero_window_is_due_at_once() -> None:
    d = FieldDebouncer(window_s=0.0, max_hold_s=0.25)
    d.add(COLOR, 1, waiter("op-1"), None, now=4.0)
    assert d.next_deadline() == 4.0


def test_next_deadline_is_the_earliest_key() -> None:
    d = debouncer()
    d.add(COLOR, 1, waiter("op-1"), None, now=1.0)  # alone: 1.25
    d.add(WIDTH, 1, waiter("op-2"), None, now=1.125)  # 1.375
    assert d.next_deadline() == 1.25
    d.add(COLOR, 2, waiter("op-3"), None, now=1.5)  # COLOR now 1.75, WIDTH earliest
    assert d.next_deadline() == 1.375
    d.take_entity("shapes", "s1")
    assert d.next_deadline() == math.inf


def test_a_value_written_every_10ms_is_flushed_by_the_max_hold() -> None:
    # the default config: trailing window 25 ms, held at most 250 ms
    d = FieldDebouncer(window_s=0.025, max_hold_s=0.25)
    flushes: list[tuple[float, int, int, str]] = []
    for ms in range(0, 800, 10):
        now = ms / 1000
        # what the keeper does: flush everything once the deadline has passed
        if now >= d.next_deadline():
            for entry in d.take_all():
                flushes.append((now, entry.value, len(entry.waiters), entry.operation_id))
        d.add(COLOR, ms, waiter(f"op-{ms}"), None, now)
    # the trailing deadline alone (last write + 25 ms) would never come
    assert flushes == [
        (0.25, 240, 25, "op-240"),
        (0.5, 490, 25, "op-490"),
        (0.75, 740, 25, "op-740"),
    ]
    entry = d.pending[COLOR]
    assert (entry.first_at, entry.last_at, entry.value) == (0.75, 0.79, 790)
    # the writes stopped at 0.79: now the trailing window comes before the hold (1.0)
    assert d.next_deadline() == 0.79 + 0.025


# -- take_entity / take_all --------------------------------------------------------------


def test_take_entity_takes_only_that_entitys_keys() -> None:
    d = debouncer()
    d.add(COLOR, "red", waiter("op-1"), None, now=0.0)
    d.add(OTHER_ID, "x", waiter("op-2"), None, now=0.0)
    d.add(WIDTH, 3, waiter("op-3"), None, now=0.125)
    d.add(OTHER_COLLECTION, "y", waiter("op-4"), None, now=0.25)
    d.add(COLOR, "blue", waiter("op-5"), None, now=0.375)

    taken = d.take_entity("shapes", "s1")
    assert [(e.key, e.value) for e in taken] == [(COLOR, "blue"), (WIDTH, 3)]
    assert [w.operation_id for w in taken[0].waiters] == ["op-1", "op-5"]
    assert list(d.pending) == [OTHER_ID, OTHER_COLLECTION]
    assert len(d) == 2
    assert sorted(d.by_operation) == ["op-2", "op-4"]
    assert d.next_deadline() == 0.25  # OTHER_ID, written at 0.0


def test_take_entity_with_nothing_pending_for_it() -> None:
    d = debouncer()
    d.add(COLOR, "red", waiter("op-1"), None, now=0.0)
    assert d.take_entity("shapes", "s2") == []
    assert d.take_entity("notes", "s1") == []
    assert list(d.pending) == [COLOR]
    assert list(d.by_operation) == ["op-1"]


def test_take_all_is_in_first_write_order() -> None:
    d = debouncer()
    d.add(WIDTH, 1, waiter("op-1"), None, now=0.0)
    d.add(OTHER_ID, 2, waiter("op-2"), None, now=0.125)
    d.add(COLOR, 3, waiter("op-3"), None, now=0.25)
    d.add(WIDTH, 4, waiter("op-4"), None, now=0.375)  # a rewrite does not move WIDTH
    taken = d.take_all()
    assert [(e.key, e.value) for e in taken] == [(WIDTH, 4), (OTHER_ID, 2), (COLOR, 3)]
    assert len(d) == 0
    assert d.by_operation == {}
    assert d.next_deadline() == math.inf


def test_a_key_written_after_a_flush_starts_afresh() -> None:
    d = debouncer()
    d.add(COLOR, "red", waiter("op-1"), None, now=0.0)
    d.add(COLOR, "green", waiter("op-2"), None, now=0.5)
    d.take_all()
    d.add(COLOR, "blue", waiter("op-3"), None, now=2.0)
    entry = d.pending[COLOR]
    assert (entry.value, entry.first_at, entry.last_at) == ("blue", 2.0, 2.0)
    assert [w.operation_id for w in entry.waiters] == ["op-3"]
    assert d.next_deadline() == 2.25


# -- by_operation ---------------------------------------------------------------------


def test_by_operation_finds_the_entry_of_every_coalesced_write() -> None:
    d = debouncer()
    d.add(COLOR, "red", waiter("op-1"), None, now=0.0)
    d.add(COLOR, "blue", waiter("op-2"), None, now=0.125)
    d.add(WIDTH, 2, waiter("op-3"), None, now=0.125)
    assert d.by_operation["op-1"] is d.pending[COLOR]
    assert d.by_operation["op-2"] is d.pending[COLOR]
    assert d.by_operation["op-3"] is d.pending[WIDTH]
    assert "op-4" not in d.by_operation


def test_by_operation_forgets_taken_entries() -> None:
    d = debouncer()
    d.add(COLOR, "red", waiter("op-1"), None, now=0.0)
    d.add(COLOR, "blue", waiter("op-2"), None, now=0.125)
    d.add(OTHER_ID, "x", waiter("op-3"), None, now=0.125)
    d.take_entity("shapes", "s1")
    assert list(d.by_operation) == ["op-3"]
    d.take_all()
    assert d.by_operation == {}


# -- property: the deadline of one key ------------------------------------------------


@given(gaps=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=40))
def test_deadline_is_trailing_window_capped_by_hold(gaps: list[int]) -> None:
    # times in 1/1024 s steps are exact, so the model can use ==
    window, hold = 32 / 1024, 256 / 1024
    d = FieldDebouncer(window, hold)
    now = 0.0
    first: float | None = None
    written: list[int] = []
    for i, gap in enumerate(gaps):
        now += gap / 1024
        if now >= d.next_deadline():
            (entry,) = d.take_all()
            assert entry.value == written[-1]
            assert [w.operation_id for w in entry.waiters] == [f"op-{j}" for j in written]
            first, written = None, []
        d.add(COLOR, i, waiter(f"op-{i}"), None, now)
        first = now if first is None else first
        written.append(i)
        assert d.next_deadline() == min(now + window, first + hold)
        assert d.next_deadline() <= first + hold
