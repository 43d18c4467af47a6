"""The accept loop, and the open-file limit it depends on.

Theory of operation: :func:`serve_listeners` accepts connections from each listener
and starts the handler for each in the connections nursery, as
``trio.serve_listeners`` does, except when ``accept`` fails for lack of resources
(``EMFILE``: the process is out of file descriptors; ``ENFILE``, ``ENOBUFS``,
``ENOMEM``). trio then logs every failure and retries every 100 ms; here the loop backs
off exponentially (:data:`BACKOFF_FIRST_S` doubling up to :data:`BACKOFF_MAX_S`) and
logs one warning when such an episode starts and one line when an accept succeeds
again, with how many accepts failed in between. Connections that arrive meanwhile wait
in the kernel's backlog. Any other error from ``accept`` ends the loop, as in trio.

:func:`raise_open_file_limit` raises the process's soft ``RLIMIT_NOFILE`` at start-up
(to the hard limit) and warns when it stays below what the configuration needs: one
descriptor per connection, connected or not.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

log = logging.getLogger(__name__)

__all__ = ["BACKOFF_FIRST_S", "BACKOFF_MAX_S", "FD_MARGIN", "raise_open_file_limit",
           "serve_listeners"]

BACKOFF_FIRST_S = 0.01
"""The first pause after an accept failed for lack of resources."""
BACKOFF_MAX_S = 0.5
"""The longest pause between two such accepts (the latency added once resources are back)."""
FD_MARGIN = 256
"""Descriptors needed besides one per connection: listeners, storage, logs, and the
second HTTP connection a long-polling client may hold during a POST."""
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_listeners(handler: Handler,
                          listeners: Sequence[trio.abc.Listener[trio.SocketStream]],
                          *, handler_nursery: trio.Nursery) -> None:
    """Accept from every listener until cancelled, each stream served by ``handler`` in
    ``handler_nursery`` (see the module docstring)."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, handler, listener, handler_nursery)


async def _accept_loop(handler: Handler, listener: trio.abc.Listener[trio.SocketStream],
                       handler_nursery: trio.Nursery) -> None:
    async with listener:
        failed = 0
        started = 0.0
        delay = BACKOFF_FIRST_S
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                if not failed:
                    started = trio.current_time()
                    log.warning("accept failed: %s; backing off up to %.1f s between tries "
                                "until it recovers (raise the open-file limit, ulimit -n, "
                                "or lower max_connections / max_unauthenticated)",
                                errno.errorcode.get(exc.errno or 0, exc.strerror), BACKOFF_MAX_S)
                failed += 1
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if failed:
                log.warning("accept recovered after %d failed accepts in %.1f s", failed,
                            trio.current_time() - started)
                failed = 0
                delay = BACKOFF_FIRST_S
            handler_nursery.start_soon(handler, stream)


def raise_open_file_limit(needed: int) -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (or, where the hard limit is
    unlimited or cannot be reached, to ``needed``); warn if it stays below ``needed``.

    Returns the soft limit in force afterwards (None where there is no such limit).
    """
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    targets = [t for t in ((needed if hard == unlimited else hard), needed)
               if soft != unlimited and t > soft and (hard == unlimited or t <= hard)]
    for target in targets:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue  # e.g. above the kernel's per-process maximum: try the smaller
        log.info("open-file limit raised from %d to %d", soft, target)
        soft = target
        break
    if soft != unlimited and soft < needed:
        log.warning("the open-file limit is %d, below the %d this configuration may need "
                    "(max_connections + max_unauthenticated + a margin); past it new "
                    "connections wait: raise it (ulimit -n, systemd LimitNOFILE=)",
                    soft, needed)
    return soft
