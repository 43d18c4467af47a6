"""One task for every per-connection timer (pings, pong deadlines, token expiry).

Theory of operation: a per-connection ping task costs a task's memory for each idle
connection; a heap of ``(when, seq, callback)`` served by a single task costs one
tuple. Callbacks are plain synchronous functions run by the timer task; they must not
block and should only flip state, queue frames or cancel scopes. A cancelled handle
stays in the heap until its time comes and is then skipped (lazy deletion), so
cancelling is O(1).

Times are ``trio.current_time()`` values, so everything here is exact under
``trio.testing.MockClock``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)


def _noop() -> None:
    pass


class TimerHandle:
    """A scheduled callback; :meth:`cancel` stops it from running."""

    __slots__ = ("callback", "cancelled", "owner", "when")

    def __init__(self, when: float, callback: Callable[[], None], owner: Timers) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self.owner: Timers | None = owner

    def cancel(self) -> None:
        """Do not run the callback (idempotent).

        The callback is released at once: a closed connection's pending ping must not
        keep the connection's objects alive until the entry's time comes.
        """
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = _noop
        owner, self.owner = self.owner, None
        if owner is not None:
            owner._forget_one()


class Timers:
    """A single-task timer service.

    Start :meth:`run` in a nursery; :meth:`call_at` / :meth:`call_later` may be called
    before it starts. A callback that raises is logged and does not stop the others.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._wakeup: trio.CancelScope | None = None
        self._cancelled = 0

    def _forget_one(self) -> None:
        # lazy deletion keeps cancelled entries until their time; when they are most of
        # the heap (long token lifetimes, many short connections), rebuild it without them
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap[:] = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` at trio time ``when`` (or soon after)."""
        handle = TimerHandle(when, callback, self)
        heapq.heappush(self._heap, (when, next(self._counter), handle))
        scope = self._wakeup
        if scope is not None and when < scope.deadline:
            scope.deadline = when
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` after ``delay`` seconds."""
        return self.call_at(trio.current_time() + delay, callback)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve timers until cancelled."""
        task_status.started()
        heap = self._heap
        while True:
            deadline = heap[0][0] if heap else float("inf")
            with trio.CancelScope(deadline=deadline) as scope:
                self._wakeup = scope
                await trio.sleep_forever()
            self._wakeup = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, handle = heapq.heappop(heap)
                if handle.cancelled:
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
                callback = handle.callback
                handle.owner = None  # fired, not cancelled: not counted
                handle.cancel()
                try:
                    callback()
                except Exception:
                    log.exception("timer callback failed")
