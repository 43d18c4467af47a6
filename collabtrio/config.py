"""Server configuration: one frozen dataclass, every field a documented limit or setting.

Each field carries its help text, and the CLI derives ``--flag`` and ``COLLABTRIO_FLAG``
from the field name (``max_payload`` -> ``--max-payload`` / ``COLLABTRIO_MAX_PAYLOAD``),
so the command line, the environment and the README's table cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .protocol.ids import ROLES, Role

__all__ = ["ROLES", "Config", "Role", "settings"]


def _f(default: Any, help: str, *, group: str = "server") -> Any:
    return field(default=default, metadata={"help": help, "group": group})


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a running server needs to know.

    Build one with keyword arguments (``Config(port=0, anonymous=True)``) when
    embedding; the CLI builds it from flags and ``COLLABTRIO_*`` variables.
    Validation happens in :meth:`check`, which :func:`collabtrio.serve` calls.
    """

    host: str = _f("127.0.0.1", "Interface to listen on.")
    port: int = _f(8765, "TCP port for Socket.IO and HTTP (0 picks a free one).")
    db: str = _f(
        "sqlite:///./collabtrio.db",
        "Storage URL: sqlite:///path/to/file.db (memory:// keeps nothing).",
        group="storage",
    )
    auth_secret: str | None = _f(
        None, "Shared secret for HS256 JWTs (also signs `collabtrio token`).", group="auth"
    )
    jwt_public_key: str | None = _f(
        None,
        "PEM public key (or path to a PEM file) for RS256/ES256 JWTs.",
        group="auth",
    )
    anonymous: bool = _f(
        False,
        "Accept connections without a token as anonymous users (local use only).",
        group="auth",
    )
    default_role: Role = _f(  # noqa: RUF009 (_f returns a dataclass field)
        "write", "Role for rooms the token and grants say nothing about.", group="auth"
    )
    token_refresh_grace_s: float = _f(
        25.0,
        "Seconds a connection whose token expired has to send `refresh-token`.",
        group="auth",
    )
    connect_timeout_s: float = _f(
        10.0,
        "A WebSocket or polling session that has not completed a Socket.IO CONNECT "
        "within this is closed.",
        group="transport",
    )
    http_keep_alive_s: float = _f(
        5.0,
        "Seconds an idle HTTP/1.1 keep-alive connection waits for its next request.",
        group="transport",
    )
    cors_origins: str | None = _f(
        None,
        "Comma-separated browser origins (https://app.example.com) allowed besides the "
        "server's own, for long-polling (CORS) and WebSocket upgrades; * allows any "
        "origin (unsafe when clients authenticate with cookies); unset: same origin only.",
        group="transport",
    )
    upgrade_timeout_s: float = _f(
        10.0,
        "A WebSocket probing a long-polling session must complete the upgrade within "
        "this, or it is closed and the session stays on polling.",
        group="transport",
    )
    ping_interval_ms: int = _f(25000, "Engine.IO pingInterval.", group="transport")
    ping_timeout_ms: int = _f(
        20000, "Engine.IO pingTimeout: no pong within it disconnects.", group="transport"
    )
    max_payload: int = _f(
        1_000_000,
        "Engine.IO maxPayload: a bigger WebSocket message closes the connection (1009).",
        group="limits",
    )
    max_event_bytes: int = _f(
        512 * 1024,
        "Largest event payload (text plus attachments); bigger gets TOO_LARGE.",
        group="limits",
    )
    max_attachments: int = _f(
        10, "Binary attachments per packet; more closes the connection.", group="limits"
    )
    rate_limit_per_s: float = _f(
        100.0, "Events per second per connection (token bucket refill).", group="limits"
    )
    rate_limit_burst: int = _f(200, "Token bucket size per connection.", group="limits")
    max_rooms_per_connection: int = _f(100, "Rooms one connection may be in.", group="limits")
    max_room_members: int = _f(
        1000, "Connections per room; past it, join gets ROOM_FULL.", group="limits"
    )
    max_connections: int = _f(
        10000, "Total connections; past it, new WebSockets are refused (503).", group="limits"
    )
    max_unauthenticated: int = _f(
        1000,
        "Sessions (WebSocket or polling) that have not completed a Socket.IO CONNECT yet; "
        "past it, new ones are refused (503). They never count against max_connections.",
        group="limits",
    )
    max_unauthenticated_per_address: int = _f(
        100,
        "The same, per client IP address (raise it behind a proxy that does not pass "
        "the client's address).",
        group="limits",
    )
    max_document_bytes: int = _f(
        8 * 1024 * 1024,
        "Size of a room's document as stored JSON; an op or field write that would grow "
        "it past this gets TOO_LARGE.",
        group="documents",
    )
    max_presence_bytes: int = _f(
        4096,
        "Size of one cursor or selection as JSON; bigger gets TOO_LARGE.",
        group="limits",
    )
    outbox_max_bytes: int = _f(
        1 << 20,
        "Bytes queued for one slow client before volatile events are dropped and, "
        "if still over, it is disconnected (slow-consumer).",
        group="limits",
    )
    room_inbox_size: int = _f(
        256, "Commands queued for one room before senders wait (backpressure).", group="limits"
    )
    sqlite_synchronous: str = _f(
        "NORMAL",
        "SQLite PRAGMA synchronous: NORMAL (survives a crash of the process) or FULL "
        "(also survives power loss; slower commits).",
        group="storage",
    )
    history_limit: int = _f(
        1000, "Persisted events kept per room for replay with join {since}.", group="documents"
    )
    chat_history_limit: int = _f(
        50, "Chat messages sent in the join ack (older pages: chat-history).", group="documents"
    )
    field_debounce_ms: int = _f(
        25, "Field writes to one path are coalesced until it is quiet this long.",
        group="documents",
    )
    field_max_hold_ms: int = _f(
        250, "A field write is never held longer than this before it is flushed.",
        group="documents",
    )
    yjs_compact_updates: int = _f(
        500,
        "A room's Yjs update log is merged into its snapshot after this many updates "
        "(and when the room closes).",
        group="documents",
    )
    yjs_compact_bytes: int = _f(
        1 << 20,
        "... or once the log holds this many bytes.",
        group="documents",
    )
    max_ops_per_commit: int = _f(
        1000,
        "Most operations one room puts in one transaction, and most room batches the "
        "writer merges into one (1 = a transaction per operation).",
        group="documents",
    )
    flush_timeout_s: float = _f(
        5.0, "Deadline for a closing room's final flush to storage.", group="documents"
    )
    grants_poll_s: float = _f(
        2.0, "How often stored role grants are checked for changes (0 disables).",
        group="auth",
    )
    api_keys: str | None = _f(
        None,
        "API keys for the HTTP API (/api/), comma-separated, each NAME:SECRET or "
        "NAME:SECRET:SCOPES with SCOPES publish, read and/or admin joined by + (none "
        "given: every scope); the flag --api-key is repeatable. No key: /api/ answers 401.",
        group="api",
    )
    api_keys_file: str | None = _f(
        None,
        "A file of API keys, one NAME:SECRET[:SCOPES] per line (# comments); re-read "
        "when it changes, so keys rotate without a restart.",
        group="api",
    )
    api_max_body_bytes: int = _f(
        512 * 1024,
        "Largest HTTP API request body; bigger gets 413 (bodies past max_payload are "
        "refused by the front door first).",
        group="api",
    )
    api_max_rooms: int = _f(
        100,
        "Rooms one POST /api/publish may name, and the largest page of GET /api/rooms.",
        group="api",
    )
    api_retry_after_s: int = _f(
        1, "Retry-After (seconds) of a 503 from the HTTP API (a busy room, storage down).",
        group="api",
    )
    metrics: bool = _f(
        True,
        "Serve Prometheus metrics at GET /metrics and count for them (--no-metrics: "
        "no route, nothing counted).",
        group="operations",
    )
    metrics_api_key: str | None = _f(
        None,
        "Require Authorization: Bearer <this key> on GET /metrics (16 or more printable "
        "characters without ':', ',' or spaces); unset: /metrics needs no key.",
        group="operations",
    )
    log_format: str = _f(
        "text",
        "Log format: text (<time> <LEVEL> <logger>: <message>) or json (one JSON object "
        "per line).",
        group="operations",
    )
    room_idle_s: float = _f(30.0, "A room with no members closes after this many seconds.")
    presence_interval_ms: int = _f(
        200,
        "A room broadcasts presence at once when its membership changes, then at most once "
        "per this many milliseconds while it keeps changing (a join storm), times members "
        "/ 10 past 10 members (100 members: 2 s), counted as the room is when the next "
        "list would go; 0: after every batch of commands. Each join's ack lists the "
        "members as they are.",
    )
    shutdown_grace_s: float = _f(
        2.0, "On SIGINT/SIGTERM, seconds connections get to close before they are cancelled."
    )
    log_level: str = _f("info", "Logging level: debug, info, warning, error.")

    def check(self) -> None:
        """Raise :class:`ValueError` with a message a person can act on."""
        if not (self.auth_secret or self.jwt_public_key or self.anonymous):
            raise ValueError(
                "no way to authenticate clients: pass --auth-secret SECRET (or set "
                "COLLABTRIO_AUTH_SECRET), or --jwt-public-key key.pem, or --anonymous "
                "for local use without tokens"
            )
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        if self.sqlite_synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("sqlite_synchronous must be NORMAL or FULL")
        if self.field_debounce_ms < 0 or self.field_max_hold_ms < 0:
            raise ValueError("field_debounce_ms and field_max_hold_ms must not be negative")
        if self.chat_history_limit < 0 or self.grants_poll_s < 0 or self.flush_timeout_s <= 0:
            raise ValueError("chat_history_limit and grants_poll_s must not be negative, "
                             "flush_timeout_s must be positive")
        if self.default_role not in ROLES:
            raise ValueError(f"default_role must be one of {', '.join(ROLES)}")
        if not (0 <= self.port <= 65535):
            raise ValueError("port must be between 0 and 65535")
        for name in (
            "ping_interval_ms",
            "ping_timeout_ms",
            "max_payload",
            "max_event_bytes",
            "rate_limit_burst",
            "max_rooms_per_connection",
            "max_room_members",
            "max_connections",
            "max_unauthenticated",
            "max_unauthenticated_per_address",
            "max_document_bytes",
            "max_presence_bytes",
            "yjs_compact_updates",
            "yjs_compact_bytes",
            "outbox_max_bytes",
            "room_inbox_size",
            "history_limit",
            "max_ops_per_commit",
            "api_max_body_bytes",
            "api_max_rooms",
            "api_retry_after_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if min(self.connect_timeout_s, self.http_keep_alive_s, self.upgrade_timeout_s) <= 0:
            raise ValueError("connect_timeout_s, http_keep_alive_s and upgrade_timeout_s "
                             "must be positive")
        if (self.rate_limit_per_s <= 0 or self.room_idle_s < 0 or self.max_attachments < 0
                or self.presence_interval_ms < 0):
            raise ValueError("rate_limit_per_s must be positive, room_idle_s, "
                             "max_attachments and presence_interval_ms not negative")

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def settings() -> list[dataclasses.Field[Any]]:
    """The documented settings, in declaration order (used by the CLI and docs)."""
    return list(dataclasses.fields(Config))
