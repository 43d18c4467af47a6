"""Group commit: one writer task merges what every room queues into one transaction.

Theory of operation: a room that has changes to persist calls
:meth:`CommitQueue.commit` and waits. The writer task takes every request queued at
that moment and writes them with one :meth:`Store.commit` call (one transaction), then
wakes each waiter with the outcome. While a transaction is running, new requests pile
up and become the next transaction, so the number of transactions adapts to the load:
one per request when idle, one per batch of many rooms when busy.

If a merged transaction fails for a reason other than the database being unavailable
(a :class:`~collabtrio.storage.base.SeqConflict`: another writer moved one of the
rooms), each request is retried alone, so one room's conflict cannot fail the others:
only the requests of that room get the error. :class:`StorageUnavailable` fails every
request of the transaction: the database is down for all of them.

Metrics: the writer reports each transaction once, to the sink it was given (its
duration, failed ones included, and the events and Yjs updates it carried), and each
failure by kind, through :class:`CommitObserver`; it imports nothing of the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from .base import Changes, RoomChanges, SeqConflict, StorageError, StorageUnavailable, Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    changes: Sequence[Changes]
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


class CommitObserver(Protocol):
    """Where the writer reports its transactions (the server's metrics)."""

    enabled: bool

    def committed(self, seconds: float, operations: int) -> None:
        """One transaction took ``seconds`` and carried ``operations`` changes."""

    def storage_error(self, kind: str) -> None:
        """A transaction failed: ``unavailable``, ``conflict`` or ``other``."""


def _operations(changes: Sequence[Changes]) -> int:
    # what a transaction carries: each event (op, field, chat) or Yjs update
    return sum(len(c.history) if isinstance(c, RoomChanges) else len(c.updates)
               for c in changes)


class CommitQueue:
    """The single writer in front of a :class:`Store` (see the module docstring)."""

    def __init__(self, store: Store, *, max_batch: int = 1000,
                 observer: CommitObserver | None = None) -> None:
        self.store = store
        self.max_batch = max_batch
        self.observer = observer
        self._queue: list[_Request] = []
        self._wakeup = trio.lowlevel.ParkingLot()
        self.transactions = 0
        self.requests = 0
        self._running = False

    async def commit(self, changes: Sequence[Changes]) -> None:
        """Persist ``changes`` in the next transaction; return once it has committed.

        Raises :class:`StorageUnavailable` (or another :class:`StorageError`) if it was
        not written. If the caller is cancelled while waiting, the write may still
        happen; callers that must know the outcome shield the wait.
        """
        if not self._running:
            # no writer (not started, or stopped): write directly, still one transaction
            self.transactions += 1
            self.requests += 1
            await self._timed_commit(changes)
            return
        request = _Request(changes)
        self._queue.append(request)
        self._wakeup.unpark()
        await request.done.wait()
        if request.error is not None:
            raise request.error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: serve requests until cancelled."""
        self._running = True
        task_status.started()
        try:
            while True:
                if not self._queue:
                    await self._wakeup.park()
                    continue
                await self._write_next()
        finally:
            # cancelled: serve whoever is still waiting (rooms flushing on their way out),
            # then let later callers write directly
            with trio.CancelScope(shield=True):
                while self._queue:
                    await self._write_next()
            self._running = False

    async def _write_next(self) -> None:
        batch = self._queue[: self.max_batch]
        del self._queue[: self.max_batch]
        # a transaction that has started must finish and report, even on shutdown
        with trio.CancelScope(shield=True):
            await self._write(batch)

    async def _write(self, batch: list[_Request]) -> None:
        changes = [c for request in batch for c in request.changes]
        self.transactions += 1
        self.requests += len(batch)
        try:
            await self._timed_commit(changes)
        except StorageUnavailable as exc:
            for request in batch:
                request.error = exc
        except StorageError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.warning("group commit failed (%s); retrying each room alone", exc)
                for request in batch:
                    await self._write([request])
                return
        except Exception as exc:  # a bug in a store must not hang every room
            log.exception("store commit failed")
            for request in batch:
                request.error = StorageUnavailable(f"storage error: {exc}")
        for request in batch:
            request.done.set()

    async def _timed_commit(self, changes: Sequence[Changes]) -> None:
        """``store.commit`` reported to the observer: once per transaction."""
        observer = self.observer
        if observer is None or not observer.enabled:
            await self.store.commit(changes)
            return
        started = trio.current_time()
        try:
            await self.store.commit(changes)
        except StorageUnavailable:
            observer.storage_error("unavailable")
            raise
        except SeqConflict:
            observer.storage_error("conflict")
            raise
        except Exception:
            observer.storage_error("other")
            raise
        finally:
            observer.committed(trio.current_time() - started, _operations(changes))
