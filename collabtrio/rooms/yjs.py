"""A room's Yjs document: one ``pycrdt.Doc``, its durable update log, and awareness.

Theory of operation: the Yjs component is a room component (see ``room.py``), like the
document keeper. It costs nothing until a member sends a Yjs event: the document is
loaded (snapshot, then the log after it) by the component's task when the first
``yjs-update`` or ``yjs-sync`` arrives. Updates and syncs queue in the component's
inbox; the task takes every command waiting and, in order:

- a ``yjs-sync`` is answered at once with ``doc.get_update(state_vector)``: exactly
  what the client is missing, updates of this batch included;
- a ``yjs-update`` is applied to the document (a malformed one is refused with
  ``VALIDATION`` and changes nothing) and relayed to the other members at once: a
  CRDT update commutes with every other, so relaying before storing cannot reorder
  anything, and a relayed update that storage then loses is sent again by its author
  (it is not acknowledged) and merged by everyone as a no-op.

Then the batch's updates are appended to the room's log through the group commit (one
transaction for many rooms) and each sender gets ``{ok: true}`` only after the commit:
an acknowledged update is durable. A failed commit answers ``STORAGE_UNAVAILABLE``
(retryable) and keeps the updates for the next commit, with new log ids (ids are
never reused, so a commit whose answer was lost cannot collide with its retry; a
duplicate in the log is a no-op when merged).

Compaction: once the log since the snapshot holds ``yjs_compact_updates`` updates or
``yjs_compact_bytes`` bytes, and when the room closes, the commit carries a snapshot
instead of the new entries: ``pycrdt.merge_updates`` of the old snapshot and every
entry, which keeps updates whose dependencies have not arrived yet (a ``Doc`` parks
those and leaves them out of ``get_update()``; the merge does not), written in the
same transaction that deletes the entries it covers.

Epoch: the Yjs document carries an epoch (the store creates it with the room; the
component reads it when the room opens, so join acks carry it as ``yjsEpoch``).
:class:`~collabtrio.rooms.commands.YjsResetCmd` (an admin's replace or delete, from
the embedding API) starts a new timeline: the stored snapshot becomes the new document,
the log is cleared and the epoch renewed in one commit, then every member is told
(``yjs-reset``; a y-websocket peer is closed with 4409) and must drop its document.
An update from an old document must never be merged into the new one (it would
duplicate its content), so each membership records the epoch it joined or last
synced (``yjs-sync``) with, and an update is refused with ``EPOCH_MISMATCH`` when its
``epoch`` (or, if it names none, its membership's recorded epoch) is not the
document's. A sync naming another epoch is refused too. A reset is a batch of its
own: what was queued before it is committed first, what comes after sees the new
document.

Awareness (``yjs-awareness``) needs no storage and no document: the room task reads
each update (y-protocols encoding) to learn which Yjs client ids each connection
announced and their clocks, relays it to the others (volatile), and when a connection
leaves the room or drops sends the others the update that removes its client ids. A
joiner gets the current states as one ``yjs-awareness`` event before its join ack.
"""

from __future__ import annotations

import logging
from typing import Any

import pycrdt
import trio

from ..errors import CollabError, ErrorCode
from ..protocol import yprotocol
from ..protocol.outgoing import Outgoing
from ..storage.base import StorageError, YjsChanges, new_epoch
from ..storage.errors import storage_unavailable
from .commands import (
    Command,
    Join,
    YjsAwarenessCmd,
    YjsHelloCmd,
    YjsReadCmd,
    YjsResetCmd,
    YjsSyncCmd,
    YjsUpdateCmd,
)
from .peer import Peer
from .presence import Member
from .room import Room

log = logging.getLogger(__name__)

__all__ = ["YjsComponent", "doc_json", "doc_text"]

_UNAVAILABLE = storage_unavailable(
    "storage is unavailable; the Yjs update was applied but not stored: send it again")

# an update with no structs and no deletions (what a sync step 2 of an up-to-date peer holds)
_EMPTY_UPDATE = b"\x00\x00"

YjsCommand = YjsUpdateCmd | YjsSyncCmd | YjsHelloCmd | YjsReadCmd | YjsResetCmd


def _mismatch(epoch: str) -> CollabError:
    return CollabError(
        ErrorCode.EPOCH_MISMATCH,
        f"the room's Yjs document is another one now (epoch {epoch}): drop your document "
        "and yjs-sync again", retryable=False)


def _echoes_awareness(peer: Peer) -> bool:
    # y-websocket peers count on hearing their own awareness renewals back
    return bool(getattr(peer, "echo_awareness", False))


class YjsComponent:
    """The Yjs component of a room (see the module docstring)."""

    name = "yjs"
    commands: tuple[type[Command], ...] = (YjsUpdateCmd, YjsSyncCmd, YjsAwarenessCmd,
                                           YjsHelloCmd, YjsReadCmd, YjsResetCmd)

    def __init__(self, room: Room) -> None:
        host = room.registry
        self.room = room
        self.room_id = room.id
        self.config = room.config
        self.store = host.store
        self.queue = host.commits
        self.doc: pycrdt.Doc[Any] | None = None  # loaded on first use
        self._snapshot: bytes | None = None
        self._covers = 0
        self._log: list[bytes] = []  # stored entries after the snapshot
        self._log_bytes = 0
        self._next_id = 1
        self._unstored: list[bytes] = []  # applied, their commit failed: write them next
        self._inbox: list[YjsCommand] = []
        self._wakeup = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self._lock = trio.Lock()
        # awareness: client id -> (clock, state JSON, owner); owner -> its client ids
        self._aware: dict[int, tuple[int, str, Peer]] = {}
        self._owned: dict[Peer, set[int]] = {}
        self.epoch = ""  # read when the room opens (run)
        # the epoch each member joined or last synced with (see the module docstring)
        self._synced: dict[Peer, str] = {}
        self.commits = 0

    # -- the room task's side ----------------------------------------------------------

    def handle(self, cmd: Command) -> None:
        """Take a command from a member allowed to send it (room task)."""
        if isinstance(cmd, YjsAwarenessCmd):
            self._awareness(cmd)
            return
        assert isinstance(cmd, YjsUpdateCmd | YjsSyncCmd | YjsHelloCmd | YjsReadCmd
                          | YjsResetCmd)
        self._inbox.append(cmd)
        self._wakeup.unpark()

    def _awareness(self, cmd: YjsAwarenessCmd) -> None:
        try:
            entries = yprotocol.decode_awareness(cmd.update)
        except yprotocol.YProtocolError as exc:
            cmd.refuse(CollabError(ErrorCode.VALIDATION, f"malformed awareness update: {exc}"))
            return
        conn = cmd.conn
        for entry in entries:
            known = self._aware.get(entry.client_id)
            if known is not None and known[2] is not conn:
                if entry.clock <= known[0]:
                    continue  # stale, or another connection's client id: not this one's
                self._owned.get(known[2], set()).discard(entry.client_id)
            if entry.state == "null":
                self._aware.pop(entry.client_id, None)
                self._owned.get(conn, set()).discard(entry.client_id)
            else:
                self._aware[entry.client_id] = (entry.clock, entry.state, conn)
                self._owned.setdefault(conn, set()).add(entry.client_id)
        out = self._relay("yjs-awareness", cmd.update, conn, volatile=True)
        if _echoes_awareness(conn):
            conn.send(out, True)
        if cmd.ack_id is not None:
            conn.ack(cmd.ack_id, {"ok": True})

    def _relay(self, event: str, update: bytes, sender: Peer, *, volatile: bool) -> Outgoing:
        ident = sender.identity
        message = (yprotocol.SyncUpdate(update) if event == "yjs-update"
                   else yprotocol.AwarenessMessage(update))
        out = Outgoing.event(event, {
            "room": self.room_id, "userId": ident.user_id, "userName": ident.name,
            "socketId": sender.sid, "update": update,
        }).with_yws(yprotocol.encode_message(message))
        self.room.broadcast(out, exclude=sender, volatile=volatile)
        return out

    def _awareness_states(self) -> Outgoing | None:
        if not self._aware:
            return None
        states = yprotocol.encode_awareness([
            yprotocol.AwarenessEntry(cid, clock, state)
            for cid, (clock, state, _) in self._aware.items()])
        return Outgoing.event("yjs-awareness", {
            "room": self.room_id, "userId": None, "userName": None, "socketId": None,
            "update": states}).with_yws(yprotocol.encode_message(
                yprotocol.AwarenessMessage(states)))

    def join_reply(self, member: Member, join: Join, reply: dict[str, Any]) -> None:
        """The ack carries the Yjs epoch (``yjsEpoch``), and the joiner gets the current
        awareness states (one event, before its ack). A joiner that names another epoch
        (a y-websocket peer's ``?epoch=``) is refused with ``EPOCH_MISMATCH`` instead,
        and its updates will be."""
        conn = member.conn
        reply["yjsEpoch"] = self.epoch
        if join.yjs_epoch is not None and join.yjs_epoch != self.epoch:
            self._synced[conn] = join.yjs_epoch
            conn.reply_error(None, _mismatch(self.epoch), "join")
            return
        # a new membership starts at the current epoch; joining again changes nothing
        self._synced.setdefault(conn, self.epoch)
        out = self._awareness_states()
        if out is not None:
            member.conn.send(out)

    def on_leave(self, conn: Peer) -> None:
        """The others learn that the leaver's Yjs clients are gone."""
        self._synced.pop(conn, None)
        owned = self._owned.pop(conn, None)
        if not owned:
            return
        gone = [(cid, self._aware.pop(cid)[0]) for cid in sorted(owned) if cid in self._aware]
        if gone:
            self._relay("yjs-awareness", yprotocol.removal_update(gone), conn, volatile=False)

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing unstored, no commit running."""
        return not self._inbox and not self._unstored and not self._lock.locked()

    @property
    def full(self) -> bool:
        """``room_inbox_size`` Yjs commands are waiting."""
        return len(self._inbox) >= self.config.room_inbox_size

    async def wait_for_space(self, timeout: float) -> bool:
        """Wait up to ``timeout`` while the queue is full; False if it still is."""
        with trio.move_on_after(timeout):
            while self.full:
                await self._space.park()
        return not self.full

    def refuse_pending(self, err: CollabError) -> None:
        """Answer every queued command with ``err``."""
        commands, self._inbox = self._inbox, []
        for cmd in commands:
            cmd.refuse(err)
        self._space.unpark_all()

    # -- the task ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Read the room's Yjs epoch (raising :class:`StorageError` if impossible), then
        serve batches until cancelled; the document loads on first use."""
        self.epoch = (await self.store.load_epochs(self.room_id)).yjs
        task_status.started()
        while True:
            if not self._inbox:
                await self._wakeup.park()
            await self.process()

    async def flush(self) -> None:
        """Apply and commit what is queued now."""
        while self._inbox or self._unstored:
            if not await self.process():
                return

    async def close(self) -> None:
        """The final flush, with a compaction (call shielded, with a deadline)."""
        await self.flush()
        if self.doc is not None and self._log:
            async with self._lock:
                await self._commit([], compact=True)

    async def _load(self) -> bool:
        try:
            with trio.CancelScope(shield=True):
                state = await self.store.load_yjs(self.room_id)
        except StorageError as exc:
            log.warning("room %s: cannot load the Yjs document: %s", self.room_id, exc)
            self.refuse_pending(storage_unavailable(
                "storage is unavailable; the Yjs document cannot be loaded: try again"))
            return False
        doc: pycrdt.Doc[Any] = pycrdt.Doc()
        try:
            if state.snapshot is not None:
                doc.apply_update(state.snapshot)
            for _, update in state.log:
                doc.apply_update(update)
        except ValueError:
            log.exception("room %s: the stored Yjs document does not decode", self.room_id)
            self.refuse_pending(CollabError(ErrorCode.INTERNAL,
                                            "the stored Yjs document does not decode"))
            return False
        self.doc = doc
        if state.epoch is not None and state.epoch != self.epoch:
            # a reset whose commit failed had landed after all
            self._adopt(state.epoch)
        self._snapshot, self._covers = state.snapshot, state.covers
        self._log = [update for _, update in state.log]
        self._log_bytes = sum(len(u) for u in self._log)
        self._next_id = max([state.covers, *(uid for uid, _ in state.log)]) + 1
        return True

    @property
    def size(self) -> int:
        """Bytes of the stored document (snapshot plus log; a merge may shrink it)."""
        return (len(self._snapshot or b"") + self._log_bytes
                + sum(len(u) for u in self._unstored))

    async def process(self) -> bool:
        """One batch: apply and answer syncs and updates, commit, acknowledge.
        False if the document could not be loaded (the batch was refused)."""
        async with self._lock:
            if self.doc is None and not await self._load():
                return False
            doc = self.doc
            assert doc is not None
            commands, self._inbox = self._inbox, []
            self._space.unpark_all()
            # a reset is a batch of its own: what came before it is committed first
            if commands and isinstance(commands[0], YjsResetCmd):
                self._inbox = commands[1:]
                await self._reset(commands[0])
                return True
            for i, cmd in enumerate(commands):
                if isinstance(cmd, YjsResetCmd):
                    commands, self._inbox = commands[:i], commands[i:]
                    break
            limit = self.config.max_document_bytes
            size = self.size
            applied: list[YjsUpdateCmd] = []
            updates: list[bytes] = []
            for cmd in commands:
                if isinstance(cmd, YjsReadCmd):
                    try:
                        value = cmd.read(doc)
                    except Exception:
                        log.exception("room %s: reading the Yjs document failed", self.room_id)
                        cmd.refuse(CollabError(ErrorCode.INTERNAL, "internal error"))
                    else:
                        cmd.conn.ack(0, value)
                    continue
                if isinstance(cmd, YjsHelloCmd):
                    cmd.conn.send(Outgoing.yws_only(yprotocol.encode_message(
                        yprotocol.SyncStep1(doc.get_state()))))
                    continue
                if isinstance(cmd, YjsSyncCmd):
                    if cmd.epoch is not None and cmd.epoch != self.epoch:
                        cmd.refuse(_mismatch(self.epoch))
                        continue
                    try:
                        missing = doc.get_update(cmd.state_vector)
                    except ValueError as exc:
                        cmd.refuse(CollabError(ErrorCode.VALIDATION,
                                               f"malformed state vector: {exc}"))
                        continue
                    if cmd.step2:
                        cmd.conn.send(Outgoing.yws_only(yprotocol.encode_message(
                            yprotocol.SyncStep2(missing))))
                        continue
                    if cmd.conn in self.room.members:
                        # a Socket.IO member that synced has this epoch's document now
                        # (a y-websocket peer's step 1 proves nothing: its document
                        # comes with it; after a reset it is closed instead)
                        self._synced[cmd.conn] = self.epoch
                    if cmd.ack_id is not None:
                        cmd.conn.ack(cmd.ack_id, {"ok": True, "update": missing,
                                                  "epoch": self.epoch})
                    continue
                assert isinstance(cmd, YjsUpdateCmd)  # resets were split off above
                claimed = cmd.epoch if cmd.epoch is not None else self._synced.get(cmd.conn)
                if claimed != self.epoch:
                    cmd.refuse(_mismatch(self.epoch))
                    continue
                if cmd.update == _EMPTY_UPDATE:
                    # a sync step 2 with nothing in it: nothing to apply, relay or store
                    if cmd.ack_id is not None:
                        cmd.conn.ack(cmd.ack_id, {"ok": True})
                    continue
                if size + len(cmd.update) > limit:
                    cmd.refuse(CollabError(
                        ErrorCode.TOO_LARGE, f"the Yjs document would grow past "
                        f"{limit} bytes (max_document_bytes)"))
                    continue
                try:
                    doc.apply_update(cmd.update)
                except ValueError as exc:
                    cmd.refuse(CollabError(ErrorCode.VALIDATION, f"malformed Yjs update: {exc}"))
                    continue
                size += len(cmd.update)
                self._relay("yjs-update", cmd.update, cmd.conn, volatile=False)
                applied.append(cmd)
                updates.append(cmd.update)
            if updates:
                self.room.metrics.yjs_applied(len(updates))
            if not updates and not self._unstored:
                return True
            pending = self._unstored + updates
            compact = (len(self._log) + len(pending) >= self.config.yjs_compact_updates
                       or self._log_bytes + sum(map(len, pending))
                       >= self.config.yjs_compact_bytes)
            # once handed to the writer the transaction finishes: wait for its outcome
            with trio.CancelScope(shield=True):
                stored = await self._commit(pending, compact=compact)
            if not stored:
                self._unstored = pending
                for cmd in applied:
                    cmd.refuse(_UNAVAILABLE)
                return True
            self._unstored = []
            for cmd in applied:
                if cmd.ack_id is not None:
                    cmd.conn.ack(cmd.ack_id, {"ok": True})
            return True

    async def _reset(self, cmd: YjsResetCmd) -> None:
        """Replace (or delete) the document: a new epoch, committed, then announced."""
        fresh: pycrdt.Doc[Any] = pycrdt.Doc()
        if cmd.update is not None:
            limit = self.config.max_document_bytes
            if len(cmd.update) > limit:
                cmd.refuse(CollabError(ErrorCode.TOO_LARGE, f"the Yjs document is "
                                       f"{len(cmd.update)} bytes, past {limit} "
                                       "(max_document_bytes)"))
                return
            try:
                fresh.apply_update(cmd.update)
            except ValueError as exc:
                cmd.refuse(CollabError(ErrorCode.VALIDATION, f"malformed Yjs update: {exc}"))
                return
        # the raw update, not fresh.get_update(): it keeps what waits for dependencies
        snapshot = cmd.update if cmd.update is not None else fresh.get_update()
        epoch = new_epoch()
        covers = self._next_id - 1  # log ids are never reused, across resets too
        changes = YjsChanges(self.room_id, snapshot=snapshot, covers=covers, epoch=epoch)
        with trio.CancelScope(shield=True):
            try:
                await self.queue.commit([changes])
            except StorageError as exc:
                log.warning("room %s: Yjs reset failed: %s", self.room_id, exc)
                # the outcome is unknown: reload (and adopt the epoch that is stored)
                # before the next command; unstored updates were never acknowledged
                self.doc = None
                self._unstored = []
                cmd.refuse(storage_unavailable(
                    "storage is unavailable; the Yjs document may not have been replaced"))
                return
        self.commits += 1
        self.doc = fresh
        self._snapshot, self._covers = snapshot, covers
        self._log, self._log_bytes, self._unstored = [], 0, []
        self._adopt(epoch)
        cmd.conn.ack(0, epoch)

    def _adopt(self, epoch: str) -> None:
        """The document is another one: every member must drop its own."""
        self.epoch = epoch
        payload = {"room": self.room_id, "epoch": epoch}
        for conn in list(self.room.members):
            conn.emit("yjs-reset", payload)

    async def _commit(self, updates: list[bytes], *, compact: bool) -> bool:
        """Append ``updates`` to the log (or merge everything into a new snapshot)."""
        first = self._next_id
        self._next_id += len(updates)  # never reused, even if the commit fails
        if compact:
            parts = ([self._snapshot] if self._snapshot is not None else []) + self._log + updates
            snapshot = pycrdt.merge_updates(*parts)
            covers = self._next_id - 1
            changes = YjsChanges(self.room_id, snapshot=snapshot, covers=covers)
        else:
            changes = YjsChanges(self.room_id,
                                 [(first + i, u) for i, u in enumerate(updates)])
        try:
            await self.queue.commit([changes])
        except StorageError as exc:
            log.warning("room %s: Yjs commit failed: %s", self.room_id, exc)
            return False
        self.commits += 1
        if compact:
            self._snapshot, self._covers = changes.snapshot, changes.covers
            self._log, self._log_bytes = [], 0
        else:
            self._log.extend(updates)
            self._log_bytes += sum(len(u) for u in updates)
        return True

    # -- for back-end code ----------------------------------------------------------------

    def text(self, name: str) -> str | None:
        """The content of the document's ``Y.Text`` called ``name`` (None if not loaded)."""
        if self.doc is None:
            return None
        return doc_text(self.doc, name)


# -- reading a document as JSON (the embedding API) --------------------------------------

_XML = (pycrdt.XmlFragment, pycrdt.XmlElement, pycrdt.XmlText)


def _scratch(update: bytes) -> pycrdt.Doc[Any]:
    # a root read with a type keeps that type in its document: guesses and reads go
    # to a copy, so the room's own document is never changed by being read
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(update)
    return doc


def _value(value: Any) -> Any:
    if isinstance(value, pycrdt.Text):
        return str(value)
    if isinstance(value, _XML):
        return str(value)
    if isinstance(value, pycrdt.Array | list):
        return [_value(v) for v in value]
    if isinstance(value, pycrdt.Map):
        return {k: _value(v) for k, v in value.items()}
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def _root(update: bytes, name: str) -> Any:
    """A root type whose type the document does not know (a received document's roots
    carry none): read as what its content says it is."""
    as_map = _scratch(update).get(name, type=pycrdt.Map)
    if len(as_map):
        return _value(as_map)
    items = list(_scratch(update).get(name, type=pycrdt.Array))
    if any(isinstance(item, _XML) for item in items):
        return str(_scratch(update).get(name, type=pycrdt.XmlFragment))
    text = str(_scratch(update).get(name, type=pycrdt.Text))
    if text:
        return text
    if items:
        return _value(items)
    return None  # empty: nothing says what it is


def doc_json(doc: pycrdt.Doc[Any]) -> dict[str, Any]:
    """The document's root types as ``{name: value}``: a ``Y.Text`` is its plain text
    (formatting dropped), a ``Y.Array`` a list, a ``Y.Map`` a dict (nested types
    likewise), an ``Y.XmlFragment`` (and nested XML types) its XML as a string; an empty
    root of unknown type is None. Numbers are floats (Yjs numbers are JavaScript
    numbers) and ``Uint8Array`` values bytes; everything else is JSON as stored."""
    update = doc.get_update()
    out: dict[str, Any] = {}
    for name, root in doc.items():
        out[name] = _root(update, name) if root is None else _value(root)
    return out


def doc_text(doc: pycrdt.Doc[Any], name: str) -> str:
    """The plain text of the document's ``Y.Text`` called ``name`` ("" if none)."""
    if name not in set(doc.keys()):
        return ""
    return str(_scratch(doc.get_update()).get(name, type=pycrdt.Text))
