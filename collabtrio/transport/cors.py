"""Which browser origins may use the server: CORS for long-polling, ``Origin`` on upgrades.

A browser page on another site must not open an authenticated socket with its
visitor's credentials, so a request that carries an ``Origin`` header is served only
when that origin is the server's own (same scheme-less host and port as the ``Host``
header) or is listed in ``cors_origins``. Requests without ``Origin`` (every
non-browser client: python-socketio, Node's socket.io-client, curl) are not browser
requests and are served. ``*`` in the list allows every origin, without credentials
(browsers refuse ``Access-Control-Allow-Credentials`` with ``*``): unsafe for a server
whose clients authenticate with cookies, and documented so. The models are Socket.IO's
``cors`` / ``allowRequest`` and Centrifugo's ``allowed_origins``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .frontdoor import HttpRequest

__all__ = ["OriginPolicy"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_port(netloc: str, default_port: int | None) -> tuple[str, int | None]:
    if netloc.startswith("["):  # an IPv6 literal: [::1]:8765
        end = netloc.find("]") + 1
        host, port = netloc[:end], netloc[end + 1:]
    else:
        host, _, port = netloc.partition(":")
    return host.lower(), int(port) if port.isdigit() else default_port


class OriginPolicy:
    """The allowed-origins list of one server (see the module docstring)."""

    __slots__ = ("any", "origins")

    def __init__(self, spec: str) -> None:
        items = [o.strip().rstrip("/").lower() for o in spec.split(",") if o.strip()]
        self.any = "*" in items
        self.origins = frozenset(o for o in items if o != "*")

    def allows(self, request: HttpRequest) -> bool:
        """Whether ``request`` may be served (no ``Origin``, same origin, or listed)."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        return self.any or origin.rstrip("/").lower() in self.origins or _same_origin(
            origin, request.headers.get("host", ""))

    def headers(self, request: HttpRequest) -> tuple[tuple[str, str], ...]:
        """The CORS response headers for an allowed request (none without ``Origin``)."""
        origin = request.headers.get("origin")
        if origin is None:
            return ()
        if origin.rstrip("/").lower() in self.origins or _same_origin(
                origin, request.headers.get("host", "")):
            return (("access-control-allow-origin", origin),
                    ("access-control-allow-credentials", "true"), ("vary", "Origin"))
        if self.any:
            return (("access-control-allow-origin", "*"),)
        return ()

    def preflight_headers(self, request: HttpRequest) -> tuple[tuple[str, str], ...]:
        """The headers of the answer to an allowed ``OPTIONS`` preflight."""
        wanted = request.headers.get("access-control-request-headers", "content-type")
        return (*self.headers(request),
                ("access-control-allow-methods", "GET, POST, OPTIONS"),
                ("access-control-allow-headers", wanted),
                ("access-control-max-age", "86400"))


def _same_origin(origin: str, host: str) -> bool:
    parts = urlsplit(origin)
    if not parts.netloc or not host:
        return False
    default = _DEFAULT_PORTS.get(parts.scheme)
    return _host_port(parts.netloc, default) == _host_port(host, default)
