"""Who a connection is: a JWT (or no token, in anonymous mode) becomes an :class:`Identity`.

PROTOCOL section 2. What an identity may do in a room is :mod:`collabtrio.auth.roles`.

Tokens are verified with:

* ``HS256`` and :attr:`Config.auth_secret` (the shared secret), and/or
* ``RS256`` or ``ES256`` (P-256) and :attr:`Config.jwt_public_key` (an RSA or EC public
  key, given as PEM text or as the path of a PEM file).

When both are configured each algorithm is verified with its own key; any other
``alg`` (including ``none``) is refused. Expiry (``exp``) and not-before (``nbf``) are
checked here against an injectable clock, so tests can control time. ``aud`` and
``iss`` are not checked (the server has no setting for them).

Every refusal is a :class:`~collabtrio.errors.CollabError` with ``AUTH_REQUIRED``,
``INVALID_TOKEN``, ``TOKEN_EXPIRED`` or (a refresh for another user) ``FORBIDDEN``.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWS
from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import PyJWTError

from ..config import Config
from ..errors import CollabError, ErrorCode
from ..protocol import jsonsafe
from ..protocol.ids import ROLES, ROOM_PATTERN_RE, Role, short_repr

__all__ = ["NBF_LEEWAY_S", "Authenticator", "Identity", "mint_token"]

log = logging.getLogger(__name__)

NBF_LEEWAY_S: Final = 30.0
"""Clock skew tolerated for a token's ``nbf`` (not before) claim, in seconds."""

_ANON_NAME_PREFIX: Final = "Anonymous"
_HS: Final = "HS256"
_PUBLIC_ALGS: Final = frozenset({"RS256", "ES256"})


# exp/nbf beyond this (year 33658) are not times: refused, never overflowing a float
_MAX_TIME: Final = 10**12

class _HS256(HMACAlgorithm):
    """HS256 without PyJWT's per-call short-key warning (we warn once, at startup)."""

    def check_key_length(self, key: bytes) -> str | None:
        return None


def _make_jws() -> PyJWS:
    jws = PyJWS(algorithms=["RS256", "ES256"])
    jws.register_algorithm(_HS, _HS256(HMACAlgorithm.SHA256))
    return jws


# Only these three algorithms exist for this instance; "none" is never registered.
_JWS: Final = _make_jws()


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated (or anonymous) user, as taken from a verified token.

    ``rooms`` is the token's validated ``rooms`` claim (room id or ``prefix*`` -> role),
    read-only; empty when the token has none. ``expires_at`` is the ``exp`` claim in
    unix seconds, or ``None`` for a token without expiry and for anonymous users.
    """

    user_id: str
    name: str
    email: str | None
    picture: str | None
    rooms: Mapping[str, Role] = field(default_factory=lambda: MappingProxyType({}))
    expires_at: float | None = None
    anonymous: bool = False


def _invalid(message: str) -> CollabError:
    return CollabError(ErrorCode.INVALID_TOKEN, message)


def _load_public_key(spec: str) -> tuple[rsa.RSAPublicKey | ec.EllipticCurvePublicKey, str]:
    """Load a PEM public key (or certificate) from text or a file; return it and its alg."""
    if "-----BEGIN" in spec:
        pem = spec
    else:
        path = Path(spec).expanduser()
        try:
            pem = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"jwt_public_key: cannot read PEM file {str(path)!r}: {exc}") from exc
        if "-----BEGIN" not in pem:
            raise ValueError(f"jwt_public_key: {str(path)!r} does not contain a PEM block")
    data = pem.strip().encode("ascii", errors="replace")
    key: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(
            "jwt_public_key: not a PEM public key (expected '-----BEGIN PUBLIC KEY-----' "
            f"or a certificate): {exc}"
        ) from exc
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(
                f"jwt_public_key: ES256 needs a P-256 (secp256r1) key, not {key.curve.name}"
            )
        return key, "ES256"
    raise ValueError(
        f"jwt_public_key: unsupported key type {type(key).__name__}; "
        "use an RSA key (RS256) or a P-256 EC key (ES256)"
    )


def _validate_rooms_claim(value: object) -> Mapping[str, Role]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise _invalid("token 'rooms' claim must be an object of room -> role")
    out: dict[str, Role] = {}
    for key, role in value.items():
        if not isinstance(key, str) or not key:
            raise _invalid("token 'rooms' claim has an empty room key")
        if role not in ROLES:
            raise _invalid(
                f"token 'rooms' claim: role for {short_repr(key)} must be one of "
                f"{', '.join(ROLES)}, not {short_repr(role)}"
            )
        out[key] = cast(Role, role)
    return MappingProxyType(out)


def _optional_str(value: object) -> str | None:
    # NUL is dropped: no database stores it in text, and names end up in stored rows
    return value.replace("\x00", "") or None if isinstance(value, str) and value else None


class Authenticator:
    """Verifies tokens for one server configuration.

    Keys are prepared once here. Raises :class:`ValueError` (a configuration error)
    when ``config.jwt_public_key`` cannot be read or is not an RSA / P-256 EC public
    key. ``now`` is the clock (unix seconds) used for ``exp`` and ``nbf``.
    """

    __slots__ = ("_anonymous", "_keys", "_now")

    def __init__(self, config: Config, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._anonymous = config.anonymous
        self._keys: dict[str, Any] = {}
        if config.auth_secret:
            if len(config.auth_secret.encode("utf-8")) < 32:
                log.warning(
                    "auth_secret is shorter than 32 bytes; use a long random secret "
                    "(RFC 7518 section 3.2)"
                )
            self._keys[_HS] = config.auth_secret
        if config.jwt_public_key:
            key, alg = _load_public_key(config.jwt_public_key)
            self._keys[alg] = key

    @property
    def algorithms(self) -> frozenset[str]:
        """The JWT algorithms this authenticator accepts (empty if it has no key)."""
        return frozenset(self._keys)

    def authenticate(self, token: str | None) -> Identity:
        """Return the identity for ``token``.

        ``None`` or ``""`` gives a fresh anonymous identity when anonymous mode is on,
        else raises ``CollabError(AUTH_REQUIRED)``. A token that is sent is always
        verified, even in anonymous mode. Raises ``CollabError(INVALID_TOKEN)`` for a
        malformed token, a bad signature, ``alg: none`` or any algorithm without a
        configured key, a missing / empty / non-string ``sub``, a non-numeric ``exp``
        or ``nbf``, a token not valid yet, or a bad ``rooms`` claim; and
        ``CollabError(TOKEN_EXPIRED)`` when ``exp`` <= now.
        """
        if token is None or token == "":
            if self._anonymous:
                return self._anonymous_identity()
            raise CollabError(
                ErrorCode.AUTH_REQUIRED,
                "authentication required: send a JWT as auth.token, an "
                "'Authorization: Bearer' header or a ?token= query parameter",
            )
        return self._verify(token)

    def refresh(self, current: Identity, token: str) -> Identity:
        """Verify ``token`` as a replacement for ``current``'s token.

        Same checks and errors as :meth:`authenticate` (an empty token is
        ``INVALID_TOKEN``: a refresh always needs a token); a token for a different
        ``sub`` raises ``CollabError(FORBIDDEN)``.
        """
        if not isinstance(token, str) or not token:
            raise _invalid("refresh-token needs a non-empty token")
        identity = self._verify(token)
        if identity.user_id != current.user_id:
            raise CollabError(
                ErrorCode.FORBIDDEN,
                "refresh-token must be for the same user (sub) as the connection's token",
            )
        return identity

    def _anonymous_identity(self) -> Identity:
        suffix = secrets.token_hex(6)
        return Identity(
            user_id=f"anon-{suffix}",
            name=f"{_ANON_NAME_PREFIX} {suffix[:6]}",
            email=None,
            picture=None,
            rooms=MappingProxyType({}),
            expires_at=None,
            anonymous=True,
        )

    def _verify(self, token: object) -> Identity:
        if not isinstance(token, str):
            raise _invalid("token must be a string")
        try:
            header = _JWS.get_unverified_header(token)
        except PyJWTError as exc:
            raise _invalid(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _invalid("malformed token: header has no 'alg'")
        if alg.lower() == "none":
            raise _invalid("unsigned tokens (alg 'none') are not accepted")
        key = self._keys.get(alg)
        if key is None:
            accepted = ", ".join(sorted(self._keys)) or "none: the server has no key"
            raise _invalid(f"token algorithm {short_repr(alg, 20)} is not accepted ({accepted})")
        try:
            raw = _JWS.decode(token, key, algorithms=[alg])
        except PyJWTError as exc:
            message = str(exc) or type(exc).__name__
            raise _invalid(f"invalid token: {message}") from None
        try:
            # the claims end up in presence, broadcasts and storage: storable JSON only
            claims = jsonsafe.loads(raw.decode("utf-8"))
        except jsonsafe.UnsafeJSON as exc:
            raise _invalid(f"malformed token: {exc}") from None
        except (ValueError, RecursionError):
            raise _invalid("malformed token: payload is not JSON") from None
        if not isinstance(claims, dict):
            raise _invalid("malformed token: payload is not a JSON object")
        return self._identity_from_claims(claims)

    def _identity_from_claims(self, claims: dict[str, Any]) -> Identity:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _invalid("token has no 'sub' (user id) claim, or it is not a non-empty string")
        if "\x00" in sub or len(sub) > 256:
            raise _invalid("token 'sub' must be at most 256 characters, without NUL")
        now = self._now()
        nbf = claims.get("nbf")
        if nbf is not None:
            if isinstance(nbf, bool) or not isinstance(nbf, int | float) or abs(nbf) > _MAX_TIME:
                raise _invalid("token 'nbf' claim must be a number (seconds since the epoch)")
            if nbf > now + NBF_LEEWAY_S:
                raise _invalid("token is not valid yet (nbf)")
        exp = claims.get("exp")
        expires_at: float | None = None
        if exp is not None:
            if isinstance(exp, bool) or not isinstance(exp, int | float) or abs(exp) > _MAX_TIME:
                raise _invalid("token 'exp' claim must be a number (seconds since the epoch)")
            expires_at = float(exp)
            if expires_at <= now:
                raise CollabError(ErrorCode.TOKEN_EXPIRED, "token has expired")
        rooms = _validate_rooms_claim(claims.get("rooms"))
        return Identity(
            user_id=sub,
            name=_optional_str(claims.get("name")) or sub,
            email=_optional_str(claims.get("email")),
            picture=_optional_str(claims.get("picture")),
            rooms=rooms,
            expires_at=expires_at,
            anonymous=False,
        )


def mint_token(
    secret: str,
    *,
    sub: str,
    name: str | None = None,
    email: str | None = None,
    picture: str | None = None,
    rooms: Mapping[str, str] | None = None,
    ttl_s: float | None = 3600,
    now: float | None = None,
) -> str:
    """Return an HS256 JWT signed with ``secret``.

    Claims: ``sub``, ``iat`` (``now``, default the current time, as an integer), and
    ``exp`` = ``iat + ttl_s`` (integer seconds; no ``exp`` when ``ttl_s`` is ``None``),
    plus ``name`` / ``email`` / ``picture`` / ``rooms`` when given. Raises
    :class:`ValueError` for an empty secret or ``sub``, a non-positive ``ttl_s``, or a
    ``rooms`` entry whose key is not a room id / ``prefix*`` or whose role is not
    read/write/admin.
    """
    if not secret:
        raise ValueError("mint_token: secret must not be empty")
    if not sub:
        raise ValueError("mint_token: sub must not be empty")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "iat": int(issued)}
    if ttl_s is not None:
        if ttl_s <= 0:
            raise ValueError("mint_token: ttl_s must be positive (or None for no expiry)")
        claims["exp"] = int(issued + ttl_s)
    if name is not None:
        claims["name"] = name
    if email is not None:
        claims["email"] = email
    if picture is not None:
        claims["picture"] = picture
    if rooms is not None:
        checked: dict[str, str] = {}
        for room, role in rooms.items():
            if not ROOM_PATTERN_RE.fullmatch(room):
                raise ValueError(f"mint_token: bad room key {room!r} (a room id or prefix*)")
            if role not in ROLES:
                raise ValueError(f"mint_token: role for {room!r} must be one of {', '.join(ROLES)}")
            checked[room] = role
        claims["rooms"] = checked
    payload = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    return _JWS.encode(payload, secret, algorithm=_HS, headers={"typ": "JWT"})
