"""The grants watcher: stored role changes reach connected members.

``collabtrio grant`` / ``revoke`` (or any other writer of the grants table) bump the
store's grants version. :func:`watch_grants` polls that version every
``grants_poll_s``; when it changes, :func:`refresh_roles` reloads the grants of every
connected user and sends each open room a ``SetRole`` for members whose role changed
(the room tells the member with ``role-changed`` and updates presence).

It also keeps :attr:`AppContext.grants_stored`: whether any grant is stored at all,
read again whenever the version changes. While none is, a connect does not look its
user's grants up (a thread hop and a query per connection in a connect storm); a grant
written by another process in the meantime reaches the connections made since with
the refresh that follows, within ``grants_poll_s``, as it reaches everyone else. With
polling off, every connect looks its grants up.

Error handling: while storage is unreachable the watcher keeps polling; it logs the
outage once when it starts and once when it ends. A user whose grants cannot be
reloaded keeps the grants it had, and the others are still refreshed.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from ..auth.roles import resolve_role
from ..protocol.ids import Role
from ..rooms.commands import SetRole
from ..rooms.mailbox import MailboxClosed
from ..storage.base import StorageError
from .client import Client
from .context import AppContext

log = logging.getLogger(__name__)

__all__ = ["reassign_roles", "refresh_roles", "watch_grants"]


async def watch_grants(
    ctx: AppContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Poll the stored grants until cancelled (returns at once if polling is off)."""
    task_status.started()
    interval = ctx.config.grants_poll_s
    if interval <= 0:
        return
    last: int | None = None
    failing = False
    while True:
        try:
            version = await ctx.store.grants_version()
            if version != last:
                # before the refresh: a connect from now on looks its grants up
                ctx.grants_stored = await ctx.store.has_grants()
        except StorageError as exc:
            ctx.grants_stored = True
            if not failing:
                log.warning("grants watcher: storage unreachable (%s); roles may be stale "
                            "until it is back", exc)
            failing = True
        else:
            if failing:
                log.info("grants watcher: storage reachable again")
                failing = False
            if last is not None and version != last:
                await refresh_roles(ctx)
            last = version
        await trio.sleep(interval)


async def refresh_roles(ctx: AppContext) -> None:
    """Reload every connected user's grants and tell rooms about changed roles."""
    for user_id, peers in list(ctx.registry.users.items()):
        clients = [p for p in peers if isinstance(p, Client)]
        if not clients:
            continue
        try:
            grants: dict[str, Role] = await ctx.store.grants_for(user_id)
        except StorageError as exc:
            log.warning("cannot reload grants for %s (keeping the old ones): %s", user_id, exc)
            continue
        for client in clients:
            client.grants = grants
            reassign_roles(ctx, client)


def reassign_roles(ctx: AppContext, client: Client) -> None:
    """Tell each room the client is in the role its identity and grants give it now
    (the room ignores an unchanged role; a changed one reaches the client as
    ``role-changed``)."""
    for room_id, room in list(client.rooms.items()):
        role = resolve_role(client.identity, room_id, grants=client.grants,
                            default=ctx.config.default_role)
        with contextlib.suppress(MailboxClosed):  # a closed room has no members
            room.mailbox.put_nowait(SetRole(client, None, role))
