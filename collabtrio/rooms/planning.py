"""Planning one batch of a room's document commands (synchronous, no I/O).

Theory of operation: the :class:`~collabtrio.rooms.keeper.DocumentKeeper` takes every
command waiting and plans them, in order, into one :class:`Batch`: each operation is
checked against an :class:`~collabtrio.rooms.document.Overlay` of the committed
document (so later operations of the batch see earlier ones), given the room's next
seq, and recorded with what to do once the batch has committed (``deliveries``:
broadcast and confirm) and what to do if it fails (``failures``). Refusals are
answered at once and take no seq. Nothing here changes the committed state: the
keeper installs the batch only after storage confirmed it.

Idempotency: an ``operationId`` (``clientId`` for chat) already committed *by the same
user* is answered with its first result; one already planned in this batch is answered
when the batch is (``late_answers``), never applied twice. Records are keyed by
:func:`operation_key` (kind, user id, id), so users' ids never collide: operation ids
are broadcast to the room, and a member must not be able to claim another's next ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import CollabError, ErrorCode
from ..storage.base import ChatMessage, HistoryEntry, OperationRecord, RoomChanges, new_epoch
from .commands import ChatCmd, FieldCmd, OpCmd
from .debounce import FieldDebouncer, FieldWaiter, PendingField
from .document import Document, Overlay, plan_field, plan_op, plan_replace
from .peer import Peer

log = logging.getLogger(__name__)

__all__ = ["Batch", "Broadcast", "chat_wire", "operation_key"]

Broadcast = Callable[..., None]
"""``broadcast(event, payload, *, exclude)``: send a committed event to the room."""

_INTERNAL = CollabError(ErrorCode.INTERNAL, "internal error; the operation was not applied")


def _identity(conn: Peer) -> tuple[str, str]:
    ident = conn.identity
    return ident.user_id, ident.name


def operation_key(kind: str, user_id: str, operation_id: str) -> str:
    """The stored key of one user's operation (``kind`` ``u``) or chat ``clientId``
    (``c``): the user id is length-prefixed, so no two (user, id) pairs share a key."""
    return f"{kind}{len(user_id)}:{user_id}:{operation_id}"


def chat_wire(room: str, message: ChatMessage) -> dict[str, Any]:
    """A stored chat message as clients see it (join ack and ``chat-history``)."""
    return {
        "room": room,
        "seq": message.seq,
        "userId": message.user_id,
        "userName": message.user_name,
        "text": message.text,
        "clientId": message.client_id,
        "createdAt": message.created_at,
    }


class Batch:
    """What one commit carries, and what to do once it has committed."""

    def __init__(
        self,
        doc: Document,
        seq: int,
        committed: Mapping[str, OperationRecord],
        debouncer: FieldDebouncer,
        room_id: str,
        wall_clock: Callable[[], float],
        broadcast: Broadcast,
        *,
        max_document_bytes: float = float("inf"),
    ) -> None:
        self.overlay = Overlay(doc, max_document_bytes)
        self.base_seq = seq  # what storage must still hold: compare-and-set
        self.seq = seq
        self.committed = committed
        self.debouncer = debouncer
        self.room_id = room_id
        self.wall_clock = wall_clock
        self.broadcast = broadcast
        self.history: list[HistoryEntry] = []
        self.operations: dict[str, OperationRecord] = {}
        self.chat: list[ChatMessage] = []
        self.deliveries: list[Callable[[], None]] = []
        self.failures: list[Callable[[CollabError], None]] = []
        self.late_answers: dict[str, list[tuple[Peer, int | None]]] = {}
        self.epoch: str | None = None  # set by a replace: the document's new epoch

    def changes(self, history_limit: int) -> RoomChanges:
        """What storage must write for this batch (one :class:`RoomChanges`)."""
        return RoomChanges(
            room=self.room_id,
            seq=self.seq,
            base_seq=self.base_seq,
            history_limit=history_limit,
            entities=self.overlay.writes,
            replace_all=self.overlay.replace_all,
            history=self.history,
            operations=list(self.operations.values()),
            chat=self.chat,
            epoch=self.epoch,
        )

    def plan_field_safely(self, entry: PendingField) -> None:
        try:
            self.plan_field(entry)
        except Exception:
            log.exception("room %s: planning a field write failed", self.room_id)
            for w in entry.waiters:
                w.conn.reply_error(w.ack_id, _INTERNAL, "field", w.operation_id)

    def _answer_repeat(self, key: str, conn: Peer, ack_id: int | None) -> bool:
        """A repeated operation (same user, same id: ``key``) gets the first result,
        never a second application."""
        record = self.committed.get(key)
        if record is not None:
            conn.confirm(ack_id, record.result)
            return True
        if key in self.operations or key in self.late_answers:
            self.late_answers.setdefault(key, []).append((conn, ack_id))
            return True
        return False

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def plan_op(self, cmd: OpCmd) -> None:
        msg, conn = cmd.msg, cmd.conn
        op_id = msg.operation_id
        user_id, user_name = _identity(conn)
        key = operation_key("u", user_id, op_id)
        if self._answer_repeat(key, conn, cmd.ack_id):
            return
        # field writes that arrived before this operation are applied before it: those
        # of every entity it reads or writes (a duplicate's copy too)
        if self.debouncer.pending:
            if msg.op == "replace":
                settled = self.debouncer.take_all()
            else:
                settled = self.debouncer.take_entity(msg.collection, msg.id)
                target = msg.data.get("newId") if isinstance(msg.data, dict) else None
                if msg.op == "duplicate" and isinstance(target, str) and target != msg.id:
                    settled += self.debouncer.take_entity(msg.collection, target)
            for entry in settled:
                self.plan_field_safely(entry)
        try:
            if msg.op == "replace":
                if msg.collection != "*" or msg.id != "*":
                    raise CollabError(ErrorCode.VALIDATION,
                                      "replace: collection and id must be '*'")
                plan_replace(self.overlay, msg.data)
            else:
                plan_op(self.overlay, msg.op, msg.collection, msg.id, msg.data)
        except CollabError as err:
            conn.reply_error(cmd.ack_id, err, "op", op_id)
            return
        seq = self._next_seq()
        now_ms = int(self.wall_clock() * 1000)
        payload = {
            "room": self.room_id,
            "seq": seq,
            "userId": user_id,
            "userName": user_name,
            "socketId": conn.sid,
            "operationId": op_id,
            "op": msg.op,
            "collection": msg.collection,
            "id": msg.id,
            "data": msg.data,
            "timestamp": msg.timestamp,
            "serverTimestamp": now_ms,
        }
        result = {"ok": True, "operationId": op_id, "seq": seq, "serverTimestamp": now_ms}
        if msg.op == "replace":
            # a new timeline: members learn its epoch from the op, the sender from its ack
            self.epoch = payload["epoch"] = result["epoch"] = new_epoch()
        self._record("op", payload, OperationRecord(key, seq, result))
        ack_id = cmd.ack_id

        def deliver() -> None:
            self.broadcast("op", payload, exclude=conn)
            conn.confirm(ack_id, result)
            for other, other_ack in self.late_answers.get(key, ()):
                other.confirm(other_ack, result)

        def fail(err: CollabError) -> None:
            conn.reply_error(ack_id, err, "op", op_id)
            for other, other_ack in self.late_answers.get(key, ()):
                other.reply_error(other_ack, err, "op", op_id)

        self.deliveries.append(deliver)
        self.failures.append(fail)

    def add_field(self, cmd: FieldCmd, now: float) -> None:
        msg, conn = cmd.msg, cmd.conn
        op_id = msg.operation_id
        record_key = operation_key("u", conn.identity.user_id, op_id)
        if self._answer_repeat(record_key, conn, cmd.ack_id):
            return
        waiter = FieldWaiter(conn, op_id, cmd.ack_id, record_key)
        pending = self.debouncer.by_operation.get(record_key)
        if pending is not None:
            # a retry of a write still waiting: one more confirmation, same write
            pending.waiters.append(waiter)
            return
        key = (msg.collection, msg.id, tuple(msg.path))
        self.debouncer.add(key, msg.value, waiter, msg.timestamp, now)

    def plan_field(self, entry: PendingField) -> None:
        collection, entity_id, path = entry.key
        try:
            plan_field(self.overlay, collection, entity_id, list(path), entry.value)
        except CollabError as err:
            for w in entry.waiters:
                w.conn.reply_error(w.ack_id, err, "field", w.operation_id)
            return
        seq = self._next_seq()
        now_ms = int(self.wall_clock() * 1000)
        writer: Peer = entry.conn
        user_id, user_name = _identity(writer)
        payload = {
            "room": self.room_id,
            "seq": seq,
            "userId": user_id,
            "userName": user_name,
            "socketId": writer.sid,
            "operationId": entry.operation_id,
            "collection": collection,
            "id": entity_id,
            "path": list(path),
            "value": entry.value,
            "timestamp": entry.timestamp,
            "serverTimestamp": now_ms,
        }
        results: list[tuple[FieldWaiter, dict[str, Any]]] = []
        seen: dict[str, str] = {}  # record key -> operation id
        for w in entry.waiters:
            result = {"ok": True, "operationId": w.operation_id, "seq": seq,
                      "serverTimestamp": now_ms}
            results.append((w, result))
            rkey = w.record_key or operation_key("u", w.conn.identity.user_id, w.operation_id)
            if rkey not in seen:
                seen[rkey] = w.operation_id
                self.operations[rkey] = OperationRecord(rkey, seq, result)
        self.history.append(HistoryEntry(seq, "field", payload, now_ms / 1000))

        def deliver() -> None:
            # everyone but the sender of the winning value; a member whose own earlier
            # value lost gets the winner too
            self.broadcast("field", payload, exclude=writer)
            for w, result in results:
                w.conn.confirm(w.ack_id, result)
            for rkey in seen:  # retries that arrived after the write was planned
                first = self.operations[rkey].result
                for other, other_ack in self.late_answers.get(rkey, ()):
                    other.confirm(other_ack, first)

        def fail(err: CollabError) -> None:
            for w in entry.waiters:
                w.conn.reply_error(w.ack_id, err, "field", w.operation_id)
            for rkey, op_id in seen.items():
                for other, other_ack in self.late_answers.get(rkey, ()):
                    other.reply_error(other_ack, err, "field", op_id)

        self.deliveries.append(deliver)
        self.failures.append(fail)

    def plan_chat(self, cmd: ChatCmd) -> None:
        msg, conn = cmd.msg, cmd.conn
        # a clientId makes a chat message idempotent like an operationId
        key = operation_key("c", conn.identity.user_id, msg.client_id) if msg.client_id else None
        if key is not None:
            record = self.committed.get(key)
            if record is not None:  # a retry: the first answer, no second message
                if cmd.ack_id is not None:
                    conn.ack(cmd.ack_id, record.result)
                return
            if key in self.operations or key in self.late_answers:
                self.late_answers.setdefault(key, []).append((conn, cmd.ack_id))
                return
        seq = self._next_seq()
        created = self.wall_clock()
        user_id, user_name = _identity(conn)
        message = ChatMessage(seq, user_id, user_name, msg.text, msg.client_id, created)
        payload = chat_wire(self.room_id, message)
        payload["socketId"] = conn.sid
        self.chat.append(message)
        self.history.append(HistoryEntry(seq, "chat", payload, created))
        ack_id = cmd.ack_id
        result = {"ok": True, "seq": seq, "clientId": msg.client_id}
        if key is not None:
            self.operations[key] = OperationRecord(key, seq, result)

        def deliver() -> None:
            self.broadcast("chat", payload, exclude=None)
            if ack_id is not None:
                conn.ack(ack_id, result)
            for other, other_ack in self.late_answers.get(key or "", ()):
                if other_ack is not None:
                    other.ack(other_ack, result)

        def fail(err: CollabError) -> None:
            conn.reply_error(ack_id, err, "chat")
            for other, other_ack in self.late_answers.get(key or "", ()):
                other.reply_error(other_ack, err, "chat")

        self.deliveries.append(deliver)
        self.failures.append(fail)

    def _record(self, event: str, payload: dict[str, Any], record: OperationRecord
    ) -> None:
        self.history.append(HistoryEntry(record.seq, event, payload,
                                          payload["serverTimestamp"] / 1000))
        self.operations[record.operation_id] = record
