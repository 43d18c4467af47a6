"""API keys for the HTTP API: their syntax, where they come from, and how a request's
``Authorization: Bearer <secret>`` is checked.

Syntax (one key): ``NAME:SECRET`` or ``NAME:SECRET:SCOPES``.

- ``NAME``: 1-64 characters of ``A-Z a-z 0-9 . _ -``; it names the key in logs and is
  the user id of the document operations the key makes. Names are unique.
- ``SECRET``: 16 or more printable characters, none of them ``:``, ``,`` or
  whitespace (``python -c 'import secrets; print(secrets.token_urlsafe(32))'`` makes
  a good one). Clients send the secret alone: ``Authorization: Bearer SECRET``.
- ``SCOPES``: ``publish``, ``read`` and/or ``admin`` joined by ``+``
  (``read+publish``); ``admin`` includes the other two; none given: every scope.

Sources, all used together: ``--api-key`` (repeatable) or ``COLLABTRIO_API_KEYS``
(comma-separated), and ``--api-keys-file`` (one key per line; blank lines and lines
starting with ``#`` are skipped). The file is checked for changes at most once a second
when a request comes in and re-read when it changed, so keys can be added and removed
without a restart; a file that no longer parses is reported in the log and the keys
read before stay in use.

Checking: the presented secret's SHA-256 digest is compared with every key's digest
with :func:`hmac.compare_digest`, without stopping at a match, so the time taken says
nothing about which keys exist or how much of a secret was right. With no key
configured every request is refused with a message that says how to configure one:
the API is never open by default.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from ..config import Config
from ..errors import CollabError, ErrorCode

log = logging.getLogger(__name__)

__all__ = ["SCOPES", "ApiKey", "ApiKeys", "parse_key", "parse_keys", "parse_keys_file"]

SCOPES = ("publish", "read", "admin")
"""The scopes a key may be limited to (``admin`` includes the others)."""

FILE_CHECK_S = 1.0
"""How often, at most, the keys file is checked for changes."""

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SECRET_RE = re.compile(r"[!-~]{16,}")  # printable ASCII, no space
_SECRET_FORBIDDEN = frozenset(":,")

NO_KEYS_MESSAGE = (
    "the HTTP API is closed: no API key is configured; start the server with "
    "--api-key NAME:SECRET (or COLLABTRIO_API_KEYS=NAME:SECRET, or --api-keys-file "
    "FILE) and send Authorization: Bearer SECRET"
)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: its name, its scopes, and its secret's SHA-256 digest (the
    secret itself is not kept)."""

    name: str
    scopes: frozenset[str]
    digest: bytes

    def allows(self, scope: str) -> bool:
        """True if the key has ``scope`` (``admin`` has every scope)."""
        return scope in self.scopes or "admin" in self.scopes


def parse_key(spec: str) -> ApiKey:
    """Parse ``NAME:SECRET[:SCOPES]`` (see the module docstring); :class:`ValueError`
    names what is wrong, never the secret."""
    parts = spec.strip().split(":")
    name = parts[0]
    if len(parts) not in (2, 3):
        raise ValueError(f"bad API key for {name!r}: expected NAME:SECRET or "
                         "NAME:SECRET:SCOPES (a secret cannot contain ':')")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"bad API key name {name!r}: 1-64 characters of A-Z a-z 0-9 . _ -")
    secret = parts[1]
    if not _SECRET_RE.fullmatch(secret) or _SECRET_FORBIDDEN & set(secret):
        raise ValueError(f"bad API key {name!r}: the secret must be 16 or more printable "
                         "characters without ':', ',' or spaces")
    scopes = frozenset(SCOPES)
    if len(parts) == 3:
        named = [s.strip().lower() for s in parts[2].split("+")]
        unknown = [s for s in named if s not in SCOPES]
        if unknown or not named:
            raise ValueError(f"bad API key {name!r}: unknown scope {', '.join(unknown)!r}; "
                             f"use {', '.join(SCOPES)} joined by '+'")
        scopes = frozenset(named)
    return ApiKey(name, scopes, _digest(secret))


def parse_keys(text: str) -> list[ApiKey]:
    """Parse a comma-separated list of keys (``COLLABTRIO_API_KEYS``); empty items are
    skipped."""
    return [parse_key(item) for item in text.split(",") if item.strip()]


def parse_keys_file(text: str, path: str = "the keys file") -> list[ApiKey]:
    """Parse a keys file: one key per line, blank lines and ``#`` comments skipped."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(parse_key(line))
        except ValueError as exc:
            raise ValueError(f"{path}, line {number}: {exc}") from None
    return keys


def _check_unique(keys: Iterable[ApiKey]) -> None:
    names: set[str] = set()
    digests: set[bytes] = set()
    for key in keys:
        if key.name in names:
            raise ValueError(f"API key name {key.name!r} is given twice")
        if key.digest in digests:
            raise ValueError(f"API key {key.name!r} has the same secret as another key")
        names.add(key.name)
        digests.add(key.digest)


def _read_file(path: str) -> tuple[list[ApiKey], tuple[int, int, int]]:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the API keys file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the API keys file {path} is not UTF-8 text") from None
    return parse_keys_file(text, path), (st.st_mtime_ns, st.st_size, st.st_ino)


class ApiKeys:
    """The keys a server accepts (see the module docstring).

    Build it with :meth:`from_config`, which raises :class:`ValueError` for a bad key
    or an unreadable file (the CLI then exits with 2).
    """

    def __init__(self, keys: Sequence[ApiKey] = (), *, path: str | None = None) -> None:
        self._inline = tuple(keys)
        self._path = path
        self._file_keys: tuple[ApiKey, ...] = ()
        self._file_id: tuple[int, int, int] | None = None
        self._next_check = float("-inf")
        if path is not None:
            found, self._file_id = _read_file(path)
            self._file_keys = tuple(found)
        _check_unique(self.keys)

    @classmethod
    def from_config(cls, config: Config) -> ApiKeys:
        """The keys of ``config.api_keys`` and ``config.api_keys_file``."""
        return cls(parse_keys(config.api_keys or ""), path=config.api_keys_file)

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        """Every key in use now."""
        return self._inline + self._file_keys

    def names(self) -> list[str]:
        """The names of the keys in use (for the start-up log)."""
        return [key.name for key in self.keys]

    def _maybe_reload(self) -> None:
        path = self._path
        now = trio.current_time()
        if path is None or now < self._next_check:
            return
        self._next_check = now + FILE_CHECK_S
        # a stat of a small local file: cheap enough for the trio thread, once a second
        try:
            st = os.stat(path)
            if (st.st_mtime_ns, st.st_size, st.st_ino) == self._file_id:
                return
        except OSError:
            pass  # reported below, by the read
        try:
            found, file_id = _read_file(path)
            _check_unique(self._inline + tuple(found))
        except ValueError as exc:
            if self._file_id is not None:
                log.error("%s; keeping the API keys read before", exc)
                self._file_id = None  # reported once; read again until it is fixed
            return
        self._file_keys, self._file_id = tuple(found), file_id
        log.info("API keys file %s re-read: %d keys", path, len(found))

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key an ``Authorization`` header value presents; :class:`CollabError`
        ``AUTH_REQUIRED`` (no key configured, or no bearer token sent) or
        ``INVALID_TOKEN`` (not a key in use): HTTP 401."""
        self._maybe_reload()
        keys = self.keys
        if not keys:
            raise CollabError(ErrorCode.AUTH_REQUIRED, NO_KEYS_MESSAGE)
        scheme, _, secret = (authorization or "").strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise CollabError(ErrorCode.AUTH_REQUIRED,
                              "send an API key: Authorization: Bearer <api key>")
        presented = _digest(secret)
        found: ApiKey | None = None
        for key in keys:
            # every key is compared: no early exit, so timing tells nothing
            if hmac.compare_digest(presented, key.digest):
                found = key
        if found is None:
            raise CollabError(ErrorCode.INVALID_TOKEN, "invalid API key")
        return found
