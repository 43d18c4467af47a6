"""A room's document and the operations on it, as pure functions (no I/O, no trio).

The document is ``{collection: {id: entity}}`` with JSON-object entities. Operations
are planned against an :class:`Overlay` (the document plus the not-yet-committed
writes of the current batch), so several operations in one batch see each other's
effects; only after the batch has committed are its writes applied to the
:class:`Document` itself. A refused operation changes nothing.

``update`` is a JSON merge patch (RFC 7396): ``null`` deletes a member, objects merge
recursively, anything else replaces. ``field`` writes one value at a path inside an
entity, creating intermediate objects.

Size: every entity written is encoded once, as it will be stored (the encoding travels
to storage in the :class:`EntityWrite`), and the document keeps the stored size of each
entity, so a write that would grow the document past ``max_bytes`` is refused with
``TOO_LARGE`` before anything is planned. Removing never is.
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import CollabError, ErrorCode
from ..protocol import jsonsafe
from ..storage.base import EntityWrite

Entities = dict[str, dict[str, dict[str, Any]]]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: the result of applying ``patch`` to ``target`` (inputs not modified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def set_path(entity: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """A copy of ``entity`` with ``value`` at ``path`` (intermediate objects created;
    a non-object in the way is replaced by one)."""
    result = dict(entity)
    node = result
    for key in path[:-1]:
        child = node.get(key)
        child = dict(child) if isinstance(child, dict) else {}
        node[key] = child
        node = child
    node[path[-1]] = copy.deepcopy(value)
    return result


def _encode(value: dict[str, Any]) -> tuple[str, int]:
    """The stored JSON of an entity and its size in UTF-8 bytes."""
    try:
        text = jsonsafe.dumps(value)
    except (TypeError, ValueError) as exc:
        raise CollabError(ErrorCode.VALIDATION, f"not storable JSON: {exc}") from None
    return text, len(text) if text.isascii() else len(text.encode("utf-8"))


class Document:
    """The committed state of one room's document, and its stored size."""

    __slots__ = ("entities", "size", "sizes")

    def __init__(self, entities: Entities | None = None) -> None:
        self.entities: Entities = entities if entities is not None else {}
        self.sizes: dict[tuple[str, str], int] = {}
        for collection, items in self.entities.items():
            for entity_id, data in items.items():
                self.sizes[(collection, entity_id)] = _encode(data)[1]
        self.size = sum(self.sizes.values())
        """Bytes of every entity as stored JSON."""

    def get(self, collection: str, entity_id: str) -> dict[str, Any] | None:
        """One entity, or None."""
        return self.entities.get(collection, {}).get(entity_id)

    def apply(self, writes: list[EntityWrite], *, replace_all: bool = False) -> None:
        """Install committed writes (the overlay's, after its transaction committed)."""
        if replace_all:
            self.entities = {}
            self.sizes = {}
            self.size = 0
        sizes = self.sizes
        for w in writes:
            key = (w.collection, w.id)
            self.size -= sizes.pop(key, 0)
            if w.data is None:
                coll = self.entities.get(w.collection)
                if coll is not None:
                    coll.pop(w.id, None)
                    if not coll:
                        del self.entities[w.collection]
            else:
                self.entities.setdefault(w.collection, {})[w.id] = w.data
                text = w.encoded if w.encoded is not None else _encode(w.data)[0]
                size = len(text) if text.isascii() else len(text.encode("utf-8"))
                sizes[key] = size
                self.size += size


class Overlay:
    """The document as the current batch sees it: committed state plus pending writes."""

    def __init__(self, doc: Document, max_bytes: float = float("inf")) -> None:
        self.doc = doc
        self.max_bytes = max_bytes
        self.pending: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.pending_sizes: dict[tuple[str, str], int] = {}
        self.writes: list[EntityWrite] = []
        self.replace_all = False
        self.size = doc.size
        """Bytes of the document as stored JSON once the planned writes are applied."""

    def get(self, collection: str, entity_id: str) -> dict[str, Any] | None:
        """The entity as it stands after the writes planned so far."""
        key = (collection, entity_id)
        if key in self.pending:
            return self.pending[key]
        if self.replace_all:
            return None
        return self.doc.get(collection, entity_id)

    def _size_of(self, key: tuple[str, str]) -> int:
        if key in self.pending_sizes:
            return self.pending_sizes[key]
        return 0 if self.replace_all else self.doc.sizes.get(key, 0)

    def put(self, collection: str, entity_id: str, data: dict[str, Any] | None) -> None:
        """Plan a write (``None`` deletes); ``TOO_LARGE`` (nothing planned) if it would
        grow the document past ``max_bytes``, ``VALIDATION`` if it is not storable."""
        key = (collection, entity_id)
        old = self._size_of(key)
        encoded: str | None = None
        new = 0
        if data is not None:
            encoded, new = _encode(data)
            if new > old and self.size - old + new > self.max_bytes:
                raise CollabError(
                    ErrorCode.TOO_LARGE,
                    f"the document would grow to {self.size - old + new} bytes; the limit "
                    f"is {self.max_bytes:.0f} (max_document_bytes)")
        self.size += new - old
        self.pending[key] = data
        self.pending_sizes[key] = new
        self.writes.append(EntityWrite(collection, entity_id, data, encoded))

    def replace(self, entities: Entities) -> None:
        """Plan ``replace``: the whole document becomes ``entities`` (``TOO_LARGE``,
        nothing planned, if they are bigger than ``max_bytes``)."""
        saved = (self.pending, self.pending_sizes, self.writes, self.replace_all, self.size)
        self.pending, self.pending_sizes, self.writes = {}, {}, []
        self.replace_all = True
        self.size = 0
        try:
            for collection, items in entities.items():
                for entity_id, data in items.items():
                    self.put(collection, entity_id, data)
        except CollabError:
            (self.pending, self.pending_sizes, self.writes, self.replace_all,
             self.size) = saved
            raise


def _need_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CollabError(ErrorCode.VALIDATION, f"{what} must be a JSON object")
    return value


def plan_op(
    overlay: Overlay, op: str, collection: str, entity_id: str, data: Any
) -> dict[str, Any] | None:
    """Plan one ``op`` in ``overlay``; return the resulting entity (None if removed).

    Raises :class:`CollabError` (``VALIDATION``, ``NOT_FOUND``, ``DUPLICATE``) and
    then plans nothing. ``replace`` is planned with :func:`plan_replace`.
    """
    current = overlay.get(collection, entity_id)
    if op == "add":
        entity = _need_object(data, "add: data")
        if current is not None:
            raise CollabError(ErrorCode.DUPLICATE, f"{collection}/{entity_id} already exists")
        overlay.put(collection, entity_id, copy.deepcopy(entity))
        return entity
    if current is None:
        raise CollabError(ErrorCode.NOT_FOUND, f"{collection}/{entity_id} does not exist")
    if op == "update":
        patched = merge_patch(current, _need_object(data, "update: data"))
        overlay.put(collection, entity_id, patched)
        return patched  # type: ignore[no-any-return]
    if op == "remove":
        overlay.put(collection, entity_id, None)
        return None
    if op == "duplicate":
        args = _need_object(data, "duplicate: data")
        new_id = args.get("newId")
        if not isinstance(new_id, str) or not (1 <= len(new_id) <= 256):
            raise CollabError(ErrorCode.VALIDATION, "duplicate: data.newId must be a string")
        if overlay.get(collection, new_id) is not None:
            raise CollabError(ErrorCode.DUPLICATE, f"{collection}/{new_id} already exists")
        copied = copy.deepcopy(current)
        overlay.put(collection, new_id, copied)
        return copied
    if op == "move":
        args = _need_object(data, "move: data")
        if "position" not in args:
            raise CollabError(ErrorCode.VALIDATION, "move: data.position is required")
        moved = dict(current)
        moved["position"] = copy.deepcopy(args["position"])
        overlay.put(collection, entity_id, moved)
        return moved
    raise CollabError(ErrorCode.VALIDATION, f"unknown op {op!r}")


def plan_replace(overlay: Overlay, data: Any) -> None:
    """Plan ``replace``: ``data`` is the whole document ``{collection: {id: entity}}``."""
    doc = _need_object(data, "replace: data")
    clean: Entities = {}
    for collection, items in doc.items():
        if not 1 <= len(collection) <= 256:
            raise CollabError(ErrorCode.VALIDATION,
                              "replace: collection names must be 1-256 characters")
        items = _need_object(items, f"replace: data[{collection!r}]")
        clean[collection] = {}
        for entity_id, entity in items.items():
            if not 1 <= len(entity_id) <= 256:
                raise CollabError(ErrorCode.VALIDATION,
                                  f"replace: ids in {collection!r} must be 1-256 characters")
            clean[collection][entity_id] = copy.deepcopy(
                _need_object(entity, f"replace: data[{collection!r}][{entity_id!r}]")
            )
    overlay.replace(clean)


def plan_field(
    overlay: Overlay, collection: str, entity_id: str, path: list[str], value: Any
) -> dict[str, Any]:
    """Plan a field write; ``NOT_FOUND`` if the entity does not exist."""
    current = overlay.get(collection, entity_id)
    if current is None:
        raise CollabError(ErrorCode.NOT_FOUND, f"{collection}/{entity_id} does not exist")
    updated = set_path(current, path, value)
    overlay.put(collection, entity_id, updated)
    return updated
