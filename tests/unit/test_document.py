"""Tests for collabtrio.rooms.document: the room document model (PROTOCOL section 5).

Covered: ``merge_patch`` against the RFC 7396 appendix A examples (and its properties:
inputs untouched, idempotent), ``set_path`` (intermediate objects, non-objects in the
way), ``Document.get``/``apply``, every ``plan_op`` kind with its error codes, that a
refused operation plans nothing, ``plan_replace`` and ``plan_field``, and the
:class:`Overlay` contract: planning leaves the committed document alone until the
writes are applied, and operations planned in one batch see each other's effects
(checked as a property: one batch gives the same document as one batch per operation).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collabtrio.errors import CollabError, ErrorCode
from collabtrio.rooms.document import (
    Document,
    Entities,
    Overlay,
    merge_patch,
    plan_field,
    plan_op,
    plan_replace,
    set_path,
)
from collabtrio.storage.base import EntityWrite

# -- helpers ---------------------------------------------------------------------------


def make_doc() -> Document:
    """A small committed document with nested values (a fresh copy every time)."""
    return Document(
        {
            "shapes": {
                "s1": {"kind": "rect", "style": {"color": "red", "width": 2}, "tags": ["a"]},
                "s2": {"kind": "circle", "position": {"x": 1, "y": 2}},
            },
            "notes": {"n1": {"text": "hello"}},
        }
    )


def refused(call: Any, *args: Any) -> ErrorCode:
    """The error code of the CollabError ``call(*args)`` raises."""
    with pytest.raises(CollabError) as excinfo:
        call(*args)
    return excinfo.value.code


def assert_nothing_planned(overlay: Overlay) -> None:
    assert overlay.writes == []
    assert overlay.pending == {}
    assert overlay.replace_all is False


# -- merge_patch: RFC 7396 -------------------------------------------------------------

# RFC 7396 appendix A, in order: (original, patch, result)
RFC7396_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(
    ("original", "patch", "expected"),
    RFC7396_EXAMPLES,
    ids=[f"rfc7396-A-{i}" for i in range(1, len(RFC7396_EXAMPLES) + 1)],
)
def test_merge_patch_rfc7396_appendix_a(original: Any, patch: Any, expected: Any) -> None:
    original_before = copy.deepcopy(original)
    patch_before = copy.deepcopy(patch)
    assert merge_patch(original, patch) == expected
    assert original == original_before
    assert patch == patch_before


def test_merge_patch_result_does_not_alias_the_patch() -> None:
    patch: dict[str, Any] = {"style": {"dash": [1, 2]}, "tags": ["x"]}
    result = merge_patch({"style": {"color": "red"}}, patch)
    patch["style"]["dash"].append(3)
    patch["tags"].append("y")
    assert result == {"style": {"color": "red", "dash": [1, 2]}, "tags": ["x"]}


def test_merge_patch_null_for_an_absent_member_is_a_no_op() -> None:
    assert merge_patch({"a": 1}, {"missing": None}) == {"a": 1}


JSON_SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", "s", "t"])
JSON_KEYS = st.sampled_from(["a", "b", "c", "position", "style"])
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_KEYS, inner, max_size=4),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=4)


@given(target=JSON_VALUES, patch=JSON_VALUES)
def test_merge_patch_leaves_its_inputs_alone(target: Any, patch: Any) -> None:
    target_before, patch_before = copy.deepcopy(target), copy.deepcopy(patch)
    merge_patch(target, patch)
    assert target == target_before
    assert patch == patch_before


@given(target=JSON_VALUES, patch=JSON_VALUES)
def test_merge_patch_applied_twice_equals_applied_once(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@given(target=JSON_OBJECTS, patch=JSON_OBJECTS)
def test_merge_patch_members_follow_the_patch(
    target: dict[str, Any], patch: dict[str, Any]
) -> None:
    result = merge_patch(target, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in result
        elif not isinstance(value, dict):
            assert result[key] == value
    for key, value in target.items():
        if key not in patch:
            assert result[key] == value


# -- set_path --------------------------------------------------------------------------


def test_set_path_creates_intermediate_objects() -> None:
    assert set_path({"kind": "rect"}, ["style", "stroke", "color"], "blue") == {
        "kind": "rect",
        "style": {"stroke": {"color": "blue"}},
    }


def test_set_path_keeps_sibling_members() -> None:
    entity = {"style": {"color": "red", "width": 2}, "kind": "rect"}
    assert set_path(entity, ["style", "width"], 5) == {
        "style": {"color": "red", "width": 5},
        "kind": "rect",
    }


def test_set_path_single_key_writes_a_top_level_member() -> None:
    assert set_path({"a": 1}, ["b"], [1, 2]) == {"a": 1, "b": [1, 2]}


def test_set_path_null_value_is_stored_not_deleted() -> None:
    # unlike a merge patch, a field write of null stores null
    assert set_path({"a": 1}, ["a"], None) == {"a": None}


@pytest.mark.parametrize("in_the_way", [5, "text", [1, 2], None, True])
def test_set_path_replaces_a_non_object_in_the_way(in_the_way: Any) -> None:
    # the module does not refuse: the non-object becomes an object holding the path
    entity = {"a": in_the_way, "keep": 1}
    assert set_path(entity, ["a", "b", "c"], "v") == {"a": {"b": {"c": "v"}}, "keep": 1}


def test_set_path_does_not_modify_the_entity_or_alias_the_value() -> None:
    entity: dict[str, Any] = {"style": {"color": "red"}, "tags": ["a"]}
    before = copy.deepcopy(entity)
    value: dict[str, Any] = {"dash": [1]}
    result = set_path(entity, ["style", "stroke"], value)
    value["dash"].append(2)
    assert entity == before
    assert result == {"style": {"color": "red", "stroke": {"dash": [1]}}, "tags": ["a"]}


# -- Document ----------------------------------------------------------------------------


def test_document_get() -> None:
    doc = make_doc()
    assert doc.get("notes", "n1") == {"text": "hello"}
    assert doc.get("notes", "missing") is None
    assert doc.get("no-such-collection", "n1") is None


def test_new_documents_do_not_share_state() -> None:
    first, second = Document(), Document()
    first.apply([EntityWrite("c", "a", {"v": 1})])
    assert second.entities == {}


def test_document_apply_sets_and_deletes_in_order() -> None:
    doc = make_doc()
    doc.apply(
        [
            EntityWrite("notes", "n2", {"text": "new"}),
            EntityWrite("shapes", "s1", None),
            EntityWrite("notes", "n1", {"text": "changed"}),
            EntityWrite("notes", "n2", None),
        ]
    )
    assert doc.entities == {
        "shapes": {"s2": {"kind": "circle", "position": {"x": 1, "y": 2}}},
        "notes": {"n1": {"text": "changed"}},
    }


def test_document_apply_drops_a_collection_once_empty() -> None:
    doc = make_doc()
    doc.apply([EntityWrite("notes", "n1", None)])
    assert "notes" not in doc.entities


def test_document_apply_deleting_a_missing_entity_is_a_no_op() -> None:
    doc = make_doc()
    expected = copy.deepcopy(doc.entities)
    doc.apply([EntityWrite("notes", "missing", None), EntityWrite("nothing", "x", None)])
    assert doc.entities == expected


def test_document_apply_replace_all_starts_from_empty() -> None:
    doc = make_doc()
    doc.apply([EntityWrite("layers", "l1", {"name": "top"})], replace_all=True)
    assert doc.entities == {"layers": {"l1": {"name": "top"}}}


# -- plan_op: add ------------------------------------------------------------------------


def test_add_plans_a_new_entity() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    result = plan_op(overlay, "add", "shapes", "s3", {"kind": "line"})
    assert result == {"kind": "line"}
    assert overlay.get("shapes", "s3") == {"kind": "line"}
    assert overlay.writes == [EntityWrite("shapes", "s3", {"kind": "line"})]


def test_add_into_a_new_collection() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "add", "layers", "l1", {})
    assert overlay.get("layers", "l1") == {}


def test_add_stores_a_copy_of_the_data() -> None:
    overlay = Overlay(make_doc())
    data: dict[str, Any] = {"style": {"color": "red"}}
    plan_op(overlay, "add", "shapes", "s3", data)
    data["style"]["color"] = "blue"
    assert overlay.get("shapes", "s3") == {"style": {"color": "red"}}


def test_add_existing_id_is_duplicate() -> None:
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "add", "shapes", "s1", {"kind": "x"}) == ErrorCode.DUPLICATE


def test_add_same_id_twice_in_one_batch_is_duplicate() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "add", "shapes", "s3", {"v": 1})
    assert refused(plan_op, overlay, "add", "shapes", "s3", {"v": 2}) == ErrorCode.DUPLICATE
    assert overlay.get("shapes", "s3") == {"v": 1}
    assert overlay.writes == [EntityWrite("shapes", "s3", {"v": 1})]


@pytest.mark.parametrize("data", [None, [1], "x", 3, True])
def test_add_non_object_data_is_validation(data: Any) -> None:
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "add", "shapes", "s3", data) == ErrorCode.VALIDATION


def test_add_non_object_data_on_an_existing_id_is_validation_first() -> None:
    # the shape of data is checked before existence
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "add", "shapes", "s1", None) == ErrorCode.VALIDATION


# -- plan_op: update ---------------------------------------------------------------------


def test_update_is_a_merge_patch() -> None:
    overlay = Overlay(make_doc())
    result = plan_op(
        overlay, "update", "shapes", "s1",
        {"style": {"color": "blue", "width": None}, "tags": None, "label": "box"},
    )
    expected = {"kind": "rect", "style": {"color": "blue"}, "label": "box"}
    assert result == expected
    assert overlay.get("shapes", "s1") == expected
    assert overlay.writes == [EntityWrite("shapes", "s1", expected)]


def test_update_with_an_empty_patch_still_plans_a_write() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "update", "notes", "n1", {})
    assert overlay.writes == [EntityWrite("notes", "n1", {"text": "hello"})]


def test_update_missing_is_not_found() -> None:
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "update", "shapes", "nope", {"a": 1}) == ErrorCode.NOT_FOUND
    assert refused(plan_op, overlay, "update", "nope", "s1", {"a": 1}) == ErrorCode.NOT_FOUND


@pytest.mark.parametrize("data", [None, [1], "x", 3])
def test_update_non_object_data_is_validation(data: Any) -> None:
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "update", "shapes", "s1", data) == ErrorCode.VALIDATION


def test_update_missing_with_bad_data_is_not_found() -> None:
    # existence is checked before the shape of data for every op but add
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "update", "shapes", "nope", None) == ErrorCode.NOT_FOUND


# -- plan_op: remove ---------------------------------------------------------------------


def test_remove_plans_a_delete() -> None:
    overlay = Overlay(make_doc())
    assert plan_op(overlay, "remove", "shapes", "s1", None) is None
    assert overlay.get("shapes", "s1") is None
    assert overlay.writes == [EntityWrite("shapes", "s1", None)]


def test_remove_ignores_data() -> None:
    overlay = Overlay(make_doc())
    assert plan_op(overlay, "remove", "shapes", "s1", {"anything": 1}) is None
    assert overlay.writes == [EntityWrite("shapes", "s1", None)]


def test_remove_missing_is_not_found() -> None:
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "remove", "shapes", "nope", None) == ErrorCode.NOT_FOUND


def test_remove_twice_in_one_batch_is_not_found() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "remove", "shapes", "s1", None)
    assert refused(plan_op, overlay, "remove", "shapes", "s1", None) == ErrorCode.NOT_FOUND
    assert overlay.writes == [EntityWrite("shapes", "s1", None)]


# -- plan_op: duplicate ------------------------------------------------------------------


def test_duplicate_copies_under_new_id() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    result = plan_op(overlay, "duplicate", "shapes", "s1", {"newId": "s9"})
    original = {"kind": "rect", "style": {"color": "red", "width": 2}, "tags": ["a"]}
    assert result == original
    assert overlay.get("shapes", "s9") == original
    assert overlay.get("shapes", "s1") == original
    assert overlay.writes == [EntityWrite("shapes", "s9", original)]


def test_duplicate_is_a_deep_copy() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    plan_op(overlay, "duplicate", "shapes", "s1", {"newId": "s9"})
    copied = overlay.get("shapes", "s9")
    assert copied is not None
    copied["style"]["color"] = "green"
    copied["tags"].append("b")
    assert doc.get("shapes", "s1") == {
        "kind": "rect", "style": {"color": "red", "width": 2}, "tags": ["a"],
    }


def test_duplicate_keeps_the_collection() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "duplicate", "notes", "n1", {"newId": "s1"})
    assert overlay.get("notes", "s1") == {"text": "hello"}
    assert overlay.get("shapes", "s1") == {
        "kind": "rect", "style": {"color": "red", "width": 2}, "tags": ["a"],
    }


def test_duplicate_onto_an_existing_id_is_duplicate() -> None:
    overlay = Overlay(make_doc())
    assert (
        refused(plan_op, overlay, "duplicate", "shapes", "s1", {"newId": "s2"})
        == ErrorCode.DUPLICATE
    )
    assert (
        refused(plan_op, overlay, "duplicate", "shapes", "s1", {"newId": "s1"})
        == ErrorCode.DUPLICATE
    )


def test_duplicate_onto_an_id_removed_in_the_same_batch() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "remove", "shapes", "s2", None)
    plan_op(overlay, "duplicate", "shapes", "s1", {"newId": "s2"})
    assert overlay.get("shapes", "s2") == {
        "kind": "rect", "style": {"color": "red", "width": 2}, "tags": ["a"],
    }


def test_duplicate_missing_source_is_not_found() -> None:
    overlay = Overlay(make_doc())
    assert (
        refused(plan_op, overlay, "duplicate", "shapes", "nope", {"newId": "s9"})
        == ErrorCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    "data",
    [{}, {"newId": None}, {"newId": 7}, {"newId": ""}, {"newId": "x" * 257}, None, ["s9"]],
    ids=["no-newId", "null", "int", "empty", "257-chars", "data-null", "data-list"],
)
def test_duplicate_bad_new_id_is_validation(data: Any) -> None:
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "duplicate", "shapes", "s1", data) == ErrorCode.VALIDATION


def test_duplicate_new_id_of_256_chars_is_accepted() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "duplicate", "notes", "n1", {"newId": "x" * 256})
    assert overlay.get("notes", "x" * 256) == {"text": "hello"}


# -- plan_op: move -----------------------------------------------------------------------


def test_move_stores_the_position() -> None:
    overlay = Overlay(make_doc())
    result = plan_op(overlay, "move", "notes", "n1", {"position": {"x": 10, "y": 20}})
    assert result == {"text": "hello", "position": {"x": 10, "y": 20}}
    assert overlay.writes == [
        EntityWrite("notes", "n1", {"text": "hello", "position": {"x": 10, "y": 20}})
    ]


def test_move_replaces_the_position_whole_and_stores_nothing_else() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "move", "shapes", "s2", {"position": {"x": 5}, "commit": True})
    assert overlay.get("shapes", "s2") == {"kind": "circle", "position": {"x": 5}}


def test_move_position_is_copied() -> None:
    overlay = Overlay(make_doc())
    position: dict[str, Any] = {"x": 1}
    plan_op(overlay, "move", "notes", "n1", {"position": position})
    position["x"] = 99
    assert overlay.get("notes", "n1") == {"text": "hello", "position": {"x": 1}}


def test_move_null_position_is_stored() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "move", "notes", "n1", {"position": None})
    assert overlay.get("notes", "n1") == {"text": "hello", "position": None}


@pytest.mark.parametrize("data", [{}, {"commit": True}, None, [1, 2]])
def test_move_without_position_is_validation(data: Any) -> None:
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "move", "notes", "n1", data) == ErrorCode.VALIDATION


def test_move_missing_is_not_found() -> None:
    overlay = Overlay(make_doc())
    assert (
        refused(plan_op, overlay, "move", "notes", "nope", {"position": 1}) == ErrorCode.NOT_FOUND
    )


# -- plan_op: unknown kinds ------------------------------------------------------------


@pytest.mark.parametrize("op", ["frobnicate", "replace", "field", ""])
def test_unknown_op_on_existing_entity_is_validation(op: str) -> None:
    # replace is planned with plan_replace, field with plan_field
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, op, "notes", "n1", {}) == ErrorCode.VALIDATION


def test_unknown_op_on_missing_entity_is_not_found() -> None:
    # existence is checked before the op kind (the wire model restricts op to OpKind)
    overlay = Overlay(make_doc())
    assert refused(plan_op, overlay, "frobnicate", "notes", "nope", {}) == ErrorCode.NOT_FOUND


# -- refusals plan nothing --------------------------------------------------------------

REFUSALS: list[tuple[str, str, str, Any, ErrorCode]] = [
    ("add", "shapes", "s1", {"a": 1}, ErrorCode.DUPLICATE),
    ("add", "shapes", "s9", "not-an-object", ErrorCode.VALIDATION),
    ("update", "shapes", "nope", {"a": 1}, ErrorCode.NOT_FOUND),
    ("update", "shapes", "s1", [1], ErrorCode.VALIDATION),
    ("remove", "shapes", "nope", None, ErrorCode.NOT_FOUND),
    ("duplicate", "shapes", "s1", {"newId": "s2"}, ErrorCode.DUPLICATE),
    ("duplicate", "shapes", "s1", {"newId": 3}, ErrorCode.VALIDATION),
    ("duplicate", "shapes", "nope", {"newId": "s9"}, ErrorCode.NOT_FOUND),
    ("move", "shapes", "s1", {}, ErrorCode.VALIDATION),
    ("move", "shapes", "nope", {"position": 1}, ErrorCode.NOT_FOUND),
    ("frobnicate", "shapes", "s1", {}, ErrorCode.VALIDATION),
]


@pytest.mark.parametrize(
    ("op", "collection", "entity_id", "data", "code"),
    REFUSALS,
    ids=[f"{r[0]}-{r[4].value}-{i}" for i, r in enumerate(REFUSALS)],
)
def test_a_refused_op_plans_nothing(
    op: str, collection: str, entity_id: str, data: Any, code: ErrorCode
) -> None:
    doc = make_doc()
    before = copy.deepcopy(doc.entities)
    overlay = Overlay(doc)
    assert refused(plan_op, overlay, op, collection, entity_id, data) == code
    assert_nothing_planned(overlay)
    assert doc.entities == before


def test_a_refusal_keeps_what_the_batch_planned_before_it() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "add", "shapes", "s3", {"v": 1})
    refused(plan_op, overlay, "update", "shapes", "nope", {"a": 1})
    assert overlay.writes == [EntityWrite("shapes", "s3", {"v": 1})]
    assert overlay.pending == {("shapes", "s3"): {"v": 1}}


# -- the overlay: planned, not committed -----------------------------------------------


def test_planning_does_not_change_the_committed_document_until_applied() -> None:
    doc = make_doc()
    before = copy.deepcopy(doc.entities)
    overlay = Overlay(doc)
    plan_op(overlay, "update", "shapes", "s1", {"style": {"color": "blue"}, "tags": None})
    plan_field(overlay, "shapes", "s2", ["position", "x"], 50)
    plan_op(overlay, "move", "shapes", "s2", {"position": {"x": 7, "y": 8}})
    plan_op(overlay, "duplicate", "notes", "n1", {"newId": "n2"})
    plan_op(overlay, "remove", "notes", "n1", None)
    plan_op(overlay, "add", "layers", "l1", {"name": "top"})
    assert doc.entities == before
    assert overlay.get("notes", "n1") is None
    assert doc.get("notes", "n1") == {"text": "hello"}

    doc.apply(overlay.writes, replace_all=overlay.replace_all)
    assert doc.entities == {
        "shapes": {
            "s1": {"kind": "rect", "style": {"color": "blue", "width": 2}},
            "s2": {"kind": "circle", "position": {"x": 7, "y": 8}},
        },
        "notes": {"n2": {"text": "hello"}},
        "layers": {"l1": {"name": "top"}},
    }


def test_a_nested_update_does_not_touch_the_committed_nested_object() -> None:
    doc = make_doc()
    committed_style = doc.entities["shapes"]["s1"]["style"]
    overlay = Overlay(doc)
    plan_op(overlay, "update", "shapes", "s1", {"style": {"color": "blue"}})
    plan_field(overlay, "shapes", "s1", ["style", "width"], 9)
    assert committed_style == {"color": "red", "width": 2}
    assert overlay.get("shapes", "s1") == {
        "kind": "rect", "style": {"color": "blue", "width": 9}, "tags": ["a"],
    }


def test_a_discarded_overlay_leaves_the_document_as_it_was() -> None:
    # a failed commit: the overlay is dropped and a new batch starts from the document
    doc = make_doc()
    overlay = Overlay(doc)
    plan_op(overlay, "remove", "shapes", "s1", None)
    plan_replace(overlay, {})
    fresh = Overlay(doc)
    assert fresh.get("shapes", "s1") == {
        "kind": "rect", "style": {"color": "red", "width": 2}, "tags": ["a"],
    }


def test_add_then_update_in_one_batch() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    plan_op(overlay, "add", "shapes", "s3", {"kind": "line", "style": {"color": "red"}})
    plan_op(overlay, "update", "shapes", "s3", {"style": {"color": "blue"}})
    assert overlay.get("shapes", "s3") == {"kind": "line", "style": {"color": "blue"}}
    assert doc.get("shapes", "s3") is None
    doc.apply(overlay.writes)
    assert doc.get("shapes", "s3") == {"kind": "line", "style": {"color": "blue"}}


def test_remove_then_add_in_one_batch() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    plan_op(overlay, "remove", "shapes", "s1", None)
    plan_op(overlay, "add", "shapes", "s1", {"kind": "new"})
    assert overlay.writes == [
        EntityWrite("shapes", "s1", None),
        EntityWrite("shapes", "s1", {"kind": "new"}),
    ]
    doc.apply(overlay.writes)
    assert doc.get("shapes", "s1") == {"kind": "new"}


def test_add_then_remove_in_one_batch() -> None:
    doc = Document()
    overlay = Overlay(doc)
    plan_op(overlay, "add", "layers", "l1", {"name": "top"})
    plan_op(overlay, "remove", "layers", "l1", None)
    assert overlay.get("layers", "l1") is None
    doc.apply(overlay.writes)
    assert doc.entities == {}


def test_duplicate_then_update_the_copy_in_one_batch() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "duplicate", "notes", "n1", {"newId": "n2"})
    plan_op(overlay, "update", "notes", "n2", {"text": "copy"})
    assert overlay.get("notes", "n1") == {"text": "hello"}
    assert overlay.get("notes", "n2") == {"text": "copy"}


def test_update_after_remove_in_one_batch_is_not_found() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "remove", "notes", "n1", None)
    assert refused(plan_op, overlay, "update", "notes", "n1", {"a": 1}) == ErrorCode.NOT_FOUND


# -- replace -----------------------------------------------------------------------------


def test_replace_makes_the_document_exactly_the_data() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    new: Entities = {"layers": {"l1": {"name": "top"}}, "shapes": {"s7": {"kind": "dot"}}}
    plan_replace(overlay, new)
    assert overlay.replace_all is True
    assert overlay.get("shapes", "s1") is None  # an old entity not in the data is gone
    assert overlay.get("shapes", "s7") == {"kind": "dot"}
    assert sorted(overlay.writes, key=lambda w: (w.collection, w.id)) == [
        EntityWrite("layers", "l1", {"name": "top"}),
        EntityWrite("shapes", "s7", {"kind": "dot"}),
    ]
    assert doc.get("shapes", "s1") is not None  # not until applied
    doc.apply(overlay.writes, replace_all=overlay.replace_all)
    assert doc.entities == new


def test_replace_with_empty_document_empties_it() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    plan_replace(overlay, {})
    assert overlay.writes == []
    doc.apply(overlay.writes, replace_all=overlay.replace_all)
    assert doc.entities == {}


def test_replace_drops_empty_collections() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    plan_replace(overlay, {"empty": {}, "notes": {"n5": {}}})
    doc.apply(overlay.writes, replace_all=overlay.replace_all)
    assert doc.entities == {"notes": {"n5": {}}}


def test_replace_discards_writes_planned_before_it() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    plan_op(overlay, "add", "shapes", "s3", {"kind": "line"})
    plan_op(overlay, "update", "notes", "n1", {"text": "bye"})
    plan_replace(overlay, {"notes": {"n1": {"text": "replaced"}}})
    assert overlay.get("shapes", "s3") is None
    assert overlay.writes == [EntityWrite("notes", "n1", {"text": "replaced"})]
    doc.apply(overlay.writes, replace_all=overlay.replace_all)
    assert doc.entities == {"notes": {"n1": {"text": "replaced"}}}


def test_ops_after_replace_see_the_new_document() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    plan_replace(overlay, {"notes": {"n1": {"text": "replaced"}}})
    # s1 was committed but is not in the replacement
    assert refused(plan_op, overlay, "update", "shapes", "s1", {"a": 1}) == ErrorCode.NOT_FOUND
    assert refused(plan_field, overlay, "shapes", "s1", ["a"], 1) == ErrorCode.NOT_FOUND
    plan_op(overlay, "add", "shapes", "s1", {"kind": "fresh"})
    plan_op(overlay, "update", "notes", "n1", {"done": True})
    doc.apply(overlay.writes, replace_all=overlay.replace_all)
    assert doc.entities == {
        "notes": {"n1": {"text": "replaced", "done": True}},
        "shapes": {"s1": {"kind": "fresh"}},
    }


def test_replace_copies_the_data() -> None:
    overlay = Overlay(Document())
    data: dict[str, Any] = {"notes": {"n1": {"tags": ["a"]}}}
    plan_replace(overlay, data)
    data["notes"]["n1"]["tags"].append("b")
    data["notes"]["n2"] = {}
    assert overlay.get("notes", "n1") == {"tags": ["a"]}
    assert overlay.get("notes", "n2") is None


@pytest.mark.parametrize(
    "data",
    [None, [], "doc", {"notes": []}, {"notes": "x"}, {"notes": {"n1": 1}},
     {"notes": {"n1": {}, "n2": None}}],
    ids=["null", "list", "str", "collection-list", "collection-str", "entity-int",
         "second-entity-null"],
)
def test_replace_bad_shape_is_validation_and_plans_nothing(data: Any) -> None:
    doc = make_doc()
    before = copy.deepcopy(doc.entities)
    overlay = Overlay(doc)
    plan_op(overlay, "add", "shapes", "s3", {"v": 1})
    assert refused(plan_replace, overlay, data) == ErrorCode.VALIDATION
    assert overlay.replace_all is False
    assert overlay.writes == [EntityWrite("shapes", "s3", {"v": 1})]
    assert overlay.get("shapes", "s1") is not None
    assert doc.entities == before


# -- plan_field --------------------------------------------------------------------------


def test_field_writes_at_the_path_creating_objects() -> None:
    doc = make_doc()
    overlay = Overlay(doc)
    result = plan_field(overlay, "notes", "n1", ["meta", "author", "name"], "ann")
    expected = {"text": "hello", "meta": {"author": {"name": "ann"}}}
    assert result == expected
    assert overlay.get("notes", "n1") == expected
    assert overlay.writes == [EntityWrite("notes", "n1", expected)]
    assert doc.get("notes", "n1") == {"text": "hello"}
    doc.apply(overlay.writes)
    assert doc.get("notes", "n1") == expected


def test_field_through_a_non_object_replaces_it() -> None:
    # no error: "text" held a string and becomes an object (the string is lost)
    overlay = Overlay(make_doc())
    plan_field(overlay, "notes", "n1", ["text", "bold"], True)
    assert overlay.get("notes", "n1") == {"text": {"bold": True}}


def test_field_through_a_list_replaces_it_with_an_object() -> None:
    overlay = Overlay(make_doc())
    plan_field(overlay, "shapes", "s1", ["tags", "0"], "b")
    assert overlay.get("shapes", "s1") == {
        "kind": "rect", "style": {"color": "red", "width": 2}, "tags": {"0": "b"},
    }


def test_field_null_value_is_stored() -> None:
    overlay = Overlay(make_doc())
    plan_field(overlay, "notes", "n1", ["text"], None)
    assert overlay.get("notes", "n1") == {"text": None}


def test_field_missing_entity_is_not_found() -> None:
    overlay = Overlay(make_doc())
    assert refused(plan_field, overlay, "notes", "nope", ["a"], 1) == ErrorCode.NOT_FOUND
    assert refused(plan_field, overlay, "nope", "n1", ["a"], 1) == ErrorCode.NOT_FOUND
    assert_nothing_planned(overlay)


def test_field_on_an_entity_removed_in_the_batch_is_not_found() -> None:
    overlay = Overlay(make_doc())
    plan_op(overlay, "remove", "notes", "n1", None)
    assert refused(plan_field, overlay, "notes", "n1", ["a"], 1) == ErrorCode.NOT_FOUND


def test_field_on_an_entity_added_in_the_batch() -> None:
    overlay = Overlay(Document())
    plan_op(overlay, "add", "notes", "n1", {"text": "new"})
    plan_field(overlay, "notes", "n1", ["style", "bold"], True)
    assert overlay.get("notes", "n1") == {"text": "new", "style": {"bold": True}}


# -- property: one batch == one batch per operation -------------------------------------

COLLECTIONS = st.sampled_from(["shapes", "notes"])
IDS = st.sampled_from(["a", "b", "c"])
ENTITIES = st.dictionaries(COLLECTIONS, st.dictionaries(IDS, JSON_OBJECTS, max_size=3), max_size=2)
PATHS = st.lists(JSON_KEYS, min_size=1, max_size=3)

Step = tuple[str, str, str, Any]
STEPS: st.SearchStrategy[Step] = st.one_of(
    st.tuples(st.just("add"), COLLECTIONS, IDS, JSON_OBJECTS),
    st.tuples(st.just("update"), COLLECTIONS, IDS, JSON_OBJECTS),
    st.tuples(st.just("remove"), COLLECTIONS, IDS, st.none()),
    st.tuples(st.just("duplicate"), COLLECTIONS, IDS, st.fixed_dictionaries({"newId": IDS})),
    st.tuples(st.just("move"), COLLECTIONS, IDS, st.fixed_dictionaries({"position": JSON_VALUES})),
    st.tuples(st.just("field"), COLLECTIONS, IDS, st.tuples(PATHS, JSON_VALUES)),
    st.tuples(st.just("replace"), st.just("*"), st.just("*"), ENTITIES),
)


def run_step(overlay: Overlay, step: Step) -> ErrorCode | None:
    """Plan one step; its error code, or None if it was planned."""
    op, collection, entity_id, data = step
    try:
        if op == "replace":
            plan_replace(overlay, data)
        elif op == "field":
            path, value = data
            plan_field(overlay, collection, entity_id, path, value)
        else:
            plan_op(overlay, op, collection, entity_id, data)
    except CollabError as err:
        return err.code
    return None


@given(initial=ENTITIES, steps=st.lists(STEPS, max_size=12))
def test_one_batch_equals_one_batch_per_operation(initial: Entities, steps: list[Step]) -> None:
    batched = Document(copy.deepcopy(initial))
    overlay = Overlay(batched)
    batched_codes = [run_step(overlay, step) for step in steps]
    assert batched.entities == initial  # nothing committed yet
    # the overlay's view is what the document becomes
    keys = {(c, i) for c in ["shapes", "notes"] for i in ["a", "b", "c"]}
    view = {key: overlay.get(*key) for key in keys}
    batched.apply(overlay.writes, replace_all=overlay.replace_all)
    assert {key: batched.get(*key) for key in keys} == view

    single = Document(copy.deepcopy(initial))
    single_codes = []
    for step in steps:
        one = Overlay(single)
        single_codes.append(run_step(one, step))
        single.apply(one.writes, replace_all=one.replace_all)

    assert batched_codes == single_codes
    assert batched.entities == single.entities


@given(initial=ENTITIES, step=STEPS)
def test_a_step_planned_twice_from_scratch_gives_the_same_result(
    initial: Entities, step: Step
) -> None:
    # planning reads the document without changing it, so it can be repeated
    doc = Document(copy.deepcopy(initial))
    first, second = Overlay(doc), Overlay(doc)
    assert run_step(first, step) == run_step(second, step)
    assert first.writes == second.writes
    assert doc.entities == initial
