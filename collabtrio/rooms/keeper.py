"""A room's document task: validated operations, debounced fields and chat, persisted
first, then broadcast with the room's next seq and confirmed.

Theory of operation: the keeper is a room component (see ``room.py``). Its task loads
the room's document before the room serves anything. The room task checks membership
and roles and hands document commands to the keeper (:meth:`DocumentKeeper.handle`):
a ``move`` is relayed to the others at once, and the rest is queued. The keeper's task
takes every command waiting and plans them into one
:class:`~collabtrio.rooms.planning.Batch` (refusals are answered at once and take no
seq), adds field writes to the debouncer, and, when a field deadline has passed, takes
every pending field too. The batch becomes one
:class:`~collabtrio.storage.base.RoomChanges`, committed through the server's
group-commit queue, which compares and sets the room's seq. Only after the commit
does the keeper install the new state, broadcast the events and confirm each
operation; if the commit fails,
nothing is installed, every operation of the batch fails with ``STORAGE_UNAVAILABLE``
(retryable) and the seq does not move. Commands that arrive while a commit is running
form the next batch.

Ownership: the keeper alone changes the document, ``seq``, history, operation records
and chat tail; the room task alone changes membership and presence. Each change is
made without an ``await`` inside it, so a join sees the document at some committed
seq and receives every broadcast after it.

Epoch: the document and its seq and history carry an epoch (the store creates it
with the room). A ``replace`` starts a new timeline: its commit carries a new epoch,
installed with the batch. A join whose ``since`` comes with another epoch gets the
full state, never a replay from another timeline.

Metrics: once a batch has committed and been delivered, the keeper reports its
operations as acknowledged, with the time from the room handing over each ``op`` and
``chat`` to then (``field`` writes wait for their debounce by design and are counted
as flushes instead); the times are taken only when metrics are on.

Closing: :meth:`close` takes everything still pending (fields included) and commits
it; the room calls it shielded, with a deadline, however the room ends.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..errors import CollabError, ErrorCode
from ..protocol.outgoing import Outgoing
from ..storage.base import (
    ChatMessage,
    HistoryEntry,
    OperationRecord,
    RoomSnapshot,
    StorageError,
    UnstorableValue,
)
from ..storage.errors import storage_unavailable
from .commands import ChatCmd, Command, FieldCmd, Join, OpCmd
from .debounce import FieldDebouncer
from .document import Document
from .peer import Peer
from .planning import Batch, chat_wire
from .presence import Member
from .room import Room

log = logging.getLogger(__name__)

DocCommand = OpCmd | FieldCmd | ChatCmd

RESYNC_RETRY_S = 1.0

_INTERNAL = CollabError(ErrorCode.INTERNAL, "internal error; the operation was not applied")
_UNAVAILABLE = storage_unavailable(
    "storage is unavailable; the operation may not have been applied: retry it "
    "with the same operationId (clientId for chat)"
)


class DocumentKeeper:
    """The document component of a room (see the module docstring)."""

    name = "document"
    commands: tuple[type[Command], ...] = (OpCmd, FieldCmd, ChatCmd)

    def __init__(self, room: Room) -> None:
        host = room.registry
        config = room.config
        self.room = room
        self.room_id = room.id
        self.members = room.members
        self.store = host.store
        self.queue = host.commits
        self.config = config
        self.wall_clock: Callable[[], float] = host.wall_clock
        self.metrics = room.metrics
        self._timed = room.metrics.enabled
        self._install_snapshot(RoomSnapshot())
        self.debouncer = FieldDebouncer(
            config.field_debounce_ms / 1000, config.field_max_hold_ms / 1000
        )
        # after a failed commit the outcome is unknown (the commit may have landed and
        # only its answer been lost): reload from storage before the next batch
        self._stale = False
        self._inbox: list[DocCommand] = []
        self._received: list[float] = []  # when each of _inbox came (metrics on)
        self._batch_received: list[float] = []  # the ops and chats of the batch planned
        self._batch_flushed = False  # ... and whether it took the pending fields
        self._wakeup = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self._lock = trio.Lock()
        self.commits = 0

    async def _load(self) -> RoomSnapshot:
        cfg = self.config
        return await self.store.load_room(
            self.room_id, history_limit=cfg.history_limit, chat_limit=cfg.chat_history_limit
        )

    def _install_snapshot(self, snapshot: RoomSnapshot) -> None:
        limit = self.config.history_limit
        self.doc = Document(snapshot.entities)
        self.seq = snapshot.seq
        self.epoch = snapshot.epoch or ""  # a store always gives one once loaded
        self.history: deque[HistoryEntry] = deque(snapshot.history, maxlen=limit)
        self.operations: OrderedDict[str, OperationRecord] = OrderedDict(
            sorted(snapshot.operations.items(), key=lambda item: item[1].seq)
        )
        self.chat: deque[ChatMessage] = deque(
            snapshot.chat, maxlen=max(1, self.config.chat_history_limit)
        )

    # -- intake --------------------------------------------------------------------------

    def handle(self, cmd: Command) -> None:
        """Take a command from a member allowed to send it (room task).

        A ``move`` is relayed to the others at once, without a seq, and answered at
        once unless ``data.commit`` asks for it to be stored too; everything else is
        queued for the next batch.
        """
        assert isinstance(cmd, OpCmd | FieldCmd | ChatCmd)
        if isinstance(cmd, OpCmd) and cmd.msg.op == "move":
            data = cmd.msg.data
            if not isinstance(data, dict) or "position" not in data:
                cmd.refuse(CollabError(ErrorCode.VALIDATION, "move: data.position is required"))
                return
            self._relay_move(cmd)
            if data.get("commit") is not True:
                # relayed only: answered at once (ack, or operation-confirmed without one)
                cmd.conn.confirm(cmd.ack_id, {"ok": True, "operationId": cmd.msg.operation_id,
                                              "seq": None,
                                              "serverTimestamp": int(self.wall_clock() * 1000)})
                return
        self.submit(cmd)

    def _relay_move(self, cmd: OpCmd) -> None:
        """A move reaches the others at once, without a seq (volatile)."""
        msg, sender = cmd.msg, cmd.conn
        ident = sender.identity
        self.room.broadcast(Outgoing.event("op", {
            "room": self.room_id, "seq": None, "userId": ident.user_id, "userName": ident.name,
            "socketId": sender.sid, "operationId": msg.operation_id, "op": "move",
            "collection": msg.collection, "id": msg.id, "data": msg.data,
            "timestamp": msg.timestamp,
        }), exclude=sender, volatile=True)

    def submit(self, cmd: DocCommand) -> None:
        """Queue a command for the next batch (called by the room task)."""
        self._inbox.append(cmd)
        if self._timed:
            self._received.append(trio.current_time())
        self._wakeup.unpark()

    def join_reply(self, member: Member, join: Join, reply: dict[str, Any]) -> None:
        """The document's part of a join ack: seq, epoch, state or replay, chat.

        With a ``since`` still covered by history (and, if the join names one, from
        this epoch), the missed events are sent first, as ordinary events, and the ack
        carries no state (``recovered: true``).
        """
        conn = member.conn
        since = join.since
        if join.epoch is not None and join.epoch != self.epoch:
            since = None  # another timeline: its seqs mean nothing here
        missed = self.missed_since(since) if since is not None else None
        if missed is not None:
            # the events it missed, in order, as ordinary events before the ack
            for entry in missed:
                conn.send(Outgoing.event(entry.event, entry.payload))
        reply["seq"] = self.seq
        reply["epoch"] = self.epoch
        reply["state"] = None if missed is not None else self.doc.entities
        reply["chat"] = self.chat_tail()
        reply["recovered"] = missed is not None

    def on_leave(self, conn: Peer) -> None:
        """Nothing of the document belongs to a member."""

    @property
    def full(self) -> bool:
        """``room_inbox_size`` document commands are waiting."""
        return len(self._inbox) >= self.config.room_inbox_size

    async def wait_for_space(self, timeout: float) -> bool:
        """Wait up to ``timeout`` while the queue is full; False if it still is.

        Short waits absorb bursts (a commit drains the whole queue); past the timeout
        the caller refuses instead, because a connection that stops reading for long
        stops reading its pongs too and would be dropped for a ping timeout.
        """
        with trio.move_on_after(timeout):
            while self.full:
                await self._space.park()
        return not self.full

    def refuse_pending(self, err: CollabError) -> None:
        """Answer every queued command and pending field write with ``err``."""
        commands, self._inbox = self._inbox, []
        self._received = []
        for cmd in commands:
            cmd.refuse(err)
        for pending in self.debouncer.take_all():
            for w in pending.waiters:
                w.conn.reply_error(w.ack_id, err, "field", w.operation_id)
        self._space.unpark_all()

    @property
    def idle(self) -> bool:
        """Nothing queued, no field write pending and no commit running."""
        return not self._inbox and not self.debouncer.pending and not self._lock.locked()

    # -- the task ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Load the room, then process batches until cancelled (see :meth:`close`).

        Raises :class:`StorageError` before reporting started if the room cannot be
        loaded (the room then refuses its waiting joins and closes).
        """
        self._install_snapshot(await self._load())
        task_status.started()
        while True:
            if not self._inbox:
                deadline = self.debouncer.next_deadline()
                if self._stale:
                    # find out soon whether a failed commit landed, even if nobody writes
                    deadline = min(deadline, trio.current_time() + RESYNC_RETRY_S)
                with trio.move_on_at(deadline):
                    await self._wakeup.park()
            await self.process(final=False)
            if self.config.max_ops_per_commit == 1:
                # one operation per transaction: let other rooms' commits interleave
                await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Commit everything still queued or pending (call shielded, with a deadline)."""
        await self.flush()

    async def flush(self) -> None:
        """Commit what is pending now, without waiting for field deadlines."""
        while not self.idle:
            await self.process(final=True)

    async def process(self, *, final: bool) -> None:
        """One batch: plan, commit (shielded), then install and deliver, or fail all."""
        async with self._lock:
            if self._stale and not await self._resync():
                return
            batch = self._plan(final=final)
            if not batch.history:
                return
            changes = batch.changes(self.config.history_limit)
            # once handed to the writer the transaction will finish: wait for its outcome
            # even if this room is being cancelled, or state and storage would disagree
            with trio.CancelScope(shield=True):
                try:
                    await self.queue.commit([changes])
                except UnstorableValue as exc:
                    # nothing was written and the state is unchanged: this batch's
                    # senders are told, no reload needed (the edge should have refused it)
                    log.error("room %s: batch not storable: %s", self.room_id, exc)
                    refusal = CollabError(ErrorCode.VALIDATION, f"not storable: {exc}")
                    for fail in batch.failures:
                        fail(refusal)
                    return
                except StorageError as exc:
                    log.warning("room %s: commit failed: %s", self.room_id, exc,
                                extra={"room": self.room_id})
                    self._stale = True
                    for fail in batch.failures:
                        fail(_UNAVAILABLE)
                    return
            self.commits += 1
            self._install(batch)
            for deliver in batch.deliveries:
                deliver()
            metrics = self.metrics
            metrics.acknowledged(len(batch.failures), trio.current_time(),
                                 self._batch_received)
            if self._batch_flushed:
                metrics.field_flush()

    async def _resync(self) -> bool:
        """Reload the room from storage after a failed commit; False if still down.

        Events that did land (a commit whose answer was lost) are broadcast now, so
        members see every seq once; their senders, told to retry, get the first result.
        While storage stays unreachable, queued commands and pending fields are refused.
        """
        try:
            with trio.CancelScope(shield=True):
                snapshot = await self._load()
        except StorageError as exc:
            log.warning("room %s: reload failed: %s", self.room_id, exc,
                        extra={"room": self.room_id})
            self.metrics.storage_error("unavailable")
            self.refuse_pending(_UNAVAILABLE)
            return False
        except Exception:
            log.exception("room %s: reload failed", self.room_id)
            self.refuse_pending(_UNAVAILABLE)
            return False
        landed = [entry for entry in snapshot.history if entry.seq > self.seq]
        self._install_snapshot(snapshot)
        self._stale = False
        for entry in landed:
            self._broadcast(entry.event, entry.payload, exclude=None)
        if landed:
            log.info("room %s: %d events had been committed despite the error",
                     self.room_id, len(landed))
        return True

    # -- planning (synchronous) ----------------------------------------------------------

    def _plan(self, *, final: bool) -> Batch:
        batch = Batch(self.doc, self.seq, self.operations, self.debouncer, self.room_id,
                      self.wall_clock, self._broadcast,
                      max_document_bytes=self.config.max_document_bytes)
        limit = self.config.max_ops_per_commit
        commands, self._inbox = self._inbox[:limit], self._inbox[limit:]
        if self._timed:
            received, self._received = self._received[:limit], self._received[limit:]
            self._batch_received = [at for cmd, at in zip(commands, received, strict=True)
                                    if not isinstance(cmd, FieldCmd)]
        self._space.unpark_all()
        now = trio.current_time()
        for cmd in commands:
            try:
                if isinstance(cmd, OpCmd):
                    batch.plan_op(cmd)
                elif isinstance(cmd, FieldCmd):
                    batch.add_field(cmd, now)
                else:
                    batch.plan_chat(cmd)
            except Exception:
                # a bug or an input nobody foresaw costs this command, not the room
                log.exception("room %s: planning %s failed", self.room_id, type(cmd).__name__)
                cmd.refuse(_INTERNAL)
        self._batch_flushed = False
        if self.debouncer.pending and (final or now >= self.debouncer.next_deadline()):
            self._batch_flushed = True
            for entry in self.debouncer.take_all():
                batch.plan_field_safely(entry)
        return batch

    # -- after the commit (synchronous) --------------------------------------------------

    def _install(self, batch: Batch) -> None:
        self.doc.apply(batch.overlay.writes, replace_all=batch.overlay.replace_all)
        self.seq = batch.seq
        if batch.epoch is not None:
            self.epoch = batch.epoch
        self.history.extend(batch.history)
        self.operations.update(batch.operations)
        # operation records live as long as their history entry
        oldest = self.seq - self.config.history_limit
        while self.operations:
            first = next(iter(self.operations.values()))
            if first.seq > oldest:
                break
            self.operations.popitem(last=False)
        self.chat.extend(batch.chat)

    def _broadcast(
        self, event: str, payload: dict[str, Any], *, exclude: Peer | None
    ) -> None:
        self.room.broadcast(Outgoing.event(event, payload), exclude=exclude)

    # -- reads for joins -----------------------------------------------------------------

    def missed_since(self, since: int) -> Iterable[HistoryEntry] | None:
        """The events after ``since`` if all are still in history, else None."""
        if since > self.seq:
            return None
        if since == self.seq:
            return ()
        if not self.history or self.history[0].seq > since + 1:
            return None
        return [entry for entry in self.history if entry.seq > since]

    def chat_tail(self) -> list[dict[str, Any]]:
        """The newest chat messages for the join ack."""
        limit = self.config.chat_history_limit
        if limit == 0:
            return []
        return [chat_wire(self.room_id, m) for m in list(self.chat)[-limit:]]
