"""The application context: what handlers, the connect logic, HTTP routes and metrics share.

One :class:`AppContext` per running server, built by :class:`~collabtrio.server.Server`
once storage is open. Code that serves clients takes the context, never the server,
so the server module is lifecycle only and nothing imports it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..auth.tokens import Authenticator
from ..config import Config
from ..observability.sink import NULL_METRICS, Metrics
from ..rooms.registry import RoomRegistry
from ..storage.base import Store
from ..storage.writer import CommitQueue
from ..timers import Timers
from ..transport.session import SocketIOSession

__all__ = ["AppContext"]


@dataclass(eq=False)
class AppContext:
    """Everything the application layer shares (see the module docstring).

    ``sessions`` is every live Socket.IO session (connected or still in its
    handshake), maintained by the transport; ``wall_clock`` gives wall-clock time in
    unix seconds (stored timestamps, token expiry), while scheduling uses trio's clock;
    ``connections_total`` counts the Socket.IO connections accepted so far (for stats);
    ``metrics`` is where the application and the transport count (a
    :class:`~collabtrio.observability.sink.NullMetrics` when metrics are off);
    ``grants_stored`` is False only while the grants watcher knows that no role grant is
    stored (see :mod:`collabtrio.app.grants`), so a connect can skip the lookup.
    """

    config: Config
    auth: Authenticator
    store: Store
    commits: CommitQueue
    registry: RoomRegistry
    timers: Timers
    wall_clock: Callable[[], float]
    sessions: set[SocketIOSession] = field(default_factory=set)
    connections_total: int = 0
    metrics: Metrics = NULL_METRICS
    grants_stored: bool = True
