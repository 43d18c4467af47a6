"""Tests for collabtrio.auth: token verification, room ids, roles, personal rooms."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from collabtrio.auth import (
    NBF_LEEWAY_S,
    ROLE_RANK,
    ROOM_ID_RE,
    Authenticator,
    Identity,
    check_join_allowed,
    check_room_id,
    match_role,
    mint_token,
    personal_room,
    resolve_role,
    role_at_least,
)
from collabtrio.cli import parse_room_grant, parse_ttl
from collabtrio.config import Config, Role
from collabtrio.errors import CollabError, ErrorCode

SECRET = "s3cret-for-tests-0123456789abcdef-long-enough"
T0 = 1_700_000_000.0


class Clock:
    """A controllable clock for ``Authenticator(now=...)``."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_auth(clock: Callable[[], float] | None = None, **cfg: Any) -> Authenticator:
    cfg.setdefault("auth_secret", SECRET)
    return Authenticator(Config(**cfg), now=clock or Clock())


def code_of(fn: Callable[[], object]) -> ErrorCode:
    with pytest.raises(CollabError) as info:
        fn()
    return info.value.code


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: Mapping[str, Any], claims: Mapping[str, Any], sig: bytes = b"") -> str:
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(sig)]
    )


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- HS256 and minting -------------------------------------------------------------


def test_mint_and_authenticate_roundtrip() -> None:
    token = mint_token(
        SECRET,
        sub="alice",
        name="Alice",
        email="a@example.com",
        picture="https://example.com/a.png",
        rooms={"doc:1": "admin", "doc:*": "read"},
        ttl_s=60,
        now=T0,
    )
    ident = make_auth().authenticate(token)
    assert ident == Identity(
        user_id="alice",
        name="Alice",
        email="a@example.com",
        picture="https://example.com/a.png",
        rooms={"doc:1": "admin", "doc:*": "read"},
        expires_at=T0 + 60,
        anonymous=False,
    )
    with pytest.raises(TypeError):
        ident.rooms["x"] = "read"  # type: ignore[index]


def test_minted_claims() -> None:
    token = mint_token(SECRET, sub="bob", ttl_s=90, now=T0)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"sub": "bob", "iat": int(T0), "exp": int(T0) + 90}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_name_defaults_to_sub_and_no_exp() -> None:
    ident = make_auth().authenticate(mint_token(SECRET, sub="carol", ttl_s=None))
    assert ident.name == "carol"
    assert ident.email is None
    assert ident.picture is None
    assert ident.expires_at is None
    assert dict(ident.rooms) == {}


def test_mint_token_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="secret"):
        mint_token("", sub="a")
    with pytest.raises(ValueError, match="sub"):
        mint_token(SECRET, sub="")
    with pytest.raises(ValueError, match="ttl_s"):
        mint_token(SECRET, sub="a", ttl_s=0)
    with pytest.raises(ValueError, match="role"):
        mint_token(SECRET, sub="a", rooms={"doc": "owner"})
    with pytest.raises(ValueError, match="room key"):
        mint_token(SECRET, sub="a", rooms={"bad room": "read"})


def test_short_secret_does_not_warn_per_token(caplog: pytest.LogCaptureFixture) -> None:
    # pytest turns warnings into errors: PyJWT's short-key warning must not fire.
    with caplog.at_level(logging.WARNING, logger="collabtrio.auth"):
        auth = make_auth(auth_secret="short")
    assert "shorter than 32 bytes" in caplog.text
    assert auth.authenticate(mint_token("short", sub="x")).user_id == "x"


# --- anonymous mode and AUTH_REQUIRED ---------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_requires_auth(token: str | None) -> None:
    assert code_of(lambda: make_auth().authenticate(token)) is ErrorCode.AUTH_REQUIRED


@pytest.mark.parametrize("token", [None, ""])
def test_anonymous_identity(token: str | None) -> None:
    auth = make_auth(anonymous=True, auth_secret=None)
    a = auth.authenticate(token)
    b = auth.authenticate(token)
    assert a.anonymous
    assert a.user_id.startswith("anon-")
    assert len(a.user_id) == len("anon-") + 12
    int(a.user_id[5:], 16)
    assert a.user_id != b.user_id
    assert a.name.startswith("Anonymous")
    assert a.expires_at is None
    assert dict(a.rooms) == {}


def test_sent_token_is_checked_in_anonymous_mode() -> None:
    auth = make_auth(anonymous=True)
    assert auth.authenticate(mint_token(SECRET, sub="dave")).user_id == "dave"
    bad = mint_token("another-secret-0123456789abcdef0123", sub="dave")
    assert code_of(lambda: auth.authenticate(bad)) is ErrorCode.INVALID_TOKEN


def test_anonymous_without_key_refuses_tokens() -> None:
    auth = make_auth(anonymous=True, auth_secret=None)
    assert auth.algorithms == frozenset()
    token = mint_token(SECRET, sub="x")
    assert code_of(lambda: auth.authenticate(token)) is ErrorCode.INVALID_TOKEN


# --- INVALID_TOKEN ---------------------------------------------------------------


def test_bad_signature() -> None:
    token = mint_token("wrong-secret-wrong-secret-wrong-secret", sub="x")
    with pytest.raises(CollabError) as info:
        make_auth().authenticate(token)
    assert info.value.code is ErrorCode.INVALID_TOKEN
    assert "signature" in info.value.message.lower()


def test_tampered_payload() -> None:
    token = mint_token(SECRET, sub="x")
    head, _, sig = token.split(".")
    forged = f"{head}.{b64url(json.dumps({'sub': 'admin'}).encode())}.{sig}"
    assert code_of(lambda: make_auth().authenticate(forged)) is ErrorCode.INVALID_TOKEN


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b", "a.b.c", "...", "x" * 5000, "eyJhbGciOiJIUzI1NiJ9.!!!.abc", "é.é.é"],
)
def test_malformed(token: str) -> None:
    assert code_of(lambda: make_auth().authenticate(token)) is ErrorCode.INVALID_TOKEN


def test_non_string_token() -> None:
    auth = make_auth()
    assert code_of(lambda: auth.authenticate(123)) is ErrorCode.INVALID_TOKEN  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(alg: str) -> None:
    token = raw_token({"alg": alg, "typ": "JWT"}, {"sub": "mallory", "exp": T0 + 100})
    for auth in (make_auth(), make_auth(anonymous=True)):
        with pytest.raises(CollabError) as info:
            auth.authenticate(token)
        assert info.value.code is ErrorCode.INVALID_TOKEN
        assert "none" in info.value.message


def test_alg_not_allowed() -> None:
    token = jwt.encode({"sub": "x"}, SECRET * 2, algorithm="HS512")
    with pytest.raises(CollabError) as info:
        make_auth().authenticate(token)
    assert info.value.code is ErrorCode.INVALID_TOKEN
    assert "HS512" in info.value.message


def test_header_without_alg() -> None:
    token = raw_token({"typ": "JWT"}, {"sub": "x"}, b"sig")
    assert code_of(lambda: make_auth().authenticate(token)) is ErrorCode.INVALID_TOKEN


@pytest.mark.parametrize("sub", [None, "", 42, ["a"], {"a": 1}, True])
def test_bad_sub(sub: object) -> None:
    claims: dict[str, Any] = {"exp": T0 + 60}
    if sub is not None:
        claims["sub"] = sub
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(CollabError) as info:
        make_auth().authenticate(token)
    assert info.value.code is ErrorCode.INVALID_TOKEN
    assert "sub" in info.value.message


@pytest.mark.parametrize(
    "rooms",
    [
        "doc:1",
        ["doc:1"],
        {"doc:1": "owner"},
        {"doc:1": None},
        {"doc:1": 2},
        {"": "read"},
        {"doc:1": "READ"},
    ],
)
def test_bad_rooms_claim(rooms: object) -> None:
    token = jwt.encode({"sub": "x", "rooms": rooms}, SECRET, algorithm="HS256")
    with pytest.raises(CollabError) as info:
        make_auth().authenticate(token)
    assert info.value.code is ErrorCode.INVALID_TOKEN
    assert "rooms" in info.value.message


def test_null_rooms_claim_is_empty() -> None:
    token = jwt.encode({"sub": "x", "rooms": None}, SECRET, algorithm="HS256")
    assert dict(make_auth().authenticate(token).rooms) == {}


def test_payload_not_an_object() -> None:
    token = jwt.api_jws.encode(b"[1,2]", SECRET, algorithm="HS256")
    assert code_of(lambda: make_auth().authenticate(token)) is ErrorCode.INVALID_TOKEN


@pytest.mark.parametrize("claim", ["exp", "nbf"])
def test_non_numeric_time_claims(claim: str) -> None:
    token = jwt.encode({"sub": "x", claim: "tomorrow"}, SECRET, algorithm="HS256")
    assert code_of(lambda: make_auth().authenticate(token)) is ErrorCode.INVALID_TOKEN


def test_nbf_uses_clock_with_leeway() -> None:
    clock = Clock()
    auth = make_auth(clock)
    token = jwt.encode({"sub": "x", "nbf": int(T0) + 100}, SECRET, algorithm="HS256")
    assert code_of(lambda: auth.authenticate(token)) is ErrorCode.INVALID_TOKEN
    clock.t = T0 + 100 - NBF_LEEWAY_S
    assert auth.authenticate(token).user_id == "x"


def test_aud_and_iss_are_not_checked() -> None:
    token = jwt.encode({"sub": "x", "aud": "some-api", "iss": "idp"}, SECRET, algorithm="HS256")
    assert make_auth().authenticate(token).user_id == "x"


def test_profile_claims_of_wrong_type_are_ignored() -> None:
    token = jwt.encode(
        {"sub": "x", "name": 5, "email": ["e"], "picture": ""}, SECRET, algorithm="HS256"
    )
    ident = make_auth().authenticate(token)
    assert (ident.name, ident.email, ident.picture) == ("x", None, None)


# --- TOKEN_EXPIRED ----------------------------------------------------------------


def test_expiry_uses_the_clock() -> None:
    clock = Clock(T0)
    auth = make_auth(clock)
    token = mint_token(SECRET, sub="x", ttl_s=60, now=T0)
    assert auth.authenticate(token).expires_at == T0 + 60
    clock.t = T0 + 59.999
    auth.authenticate(token)
    clock.t = T0 + 60
    with pytest.raises(CollabError) as info:
        auth.authenticate(token)
    assert info.value.code is ErrorCode.TOKEN_EXPIRED
    assert not info.value.retryable


def test_expired_even_though_real_time_is_earlier() -> None:
    # the token is valid by wall-clock time; only our clock says it has expired
    token = mint_token(SECRET, sub="x", ttl_s=3600)
    auth = make_auth(Clock(time.time() + 7200))
    assert code_of(lambda: auth.authenticate(token)) is ErrorCode.TOKEN_EXPIRED


def test_not_expired_even_though_real_time_is_later() -> None:
    token = mint_token(SECRET, sub="x", ttl_s=60, now=1000.0)
    assert make_auth(Clock(1001.0)).authenticate(token).user_id == "x"


def test_bad_signature_beats_expiry() -> None:
    token = mint_token("other-secret-other-secret-other-secret", sub="x", ttl_s=1, now=0)
    assert code_of(lambda: make_auth().authenticate(token)) is ErrorCode.INVALID_TOKEN


# --- RS256 / ES256 ----------------------------------------------------------------


def test_rs256(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = make_auth(auth_secret=None, jwt_public_key=pem_public(rsa_key))
    assert auth.algorithms == frozenset({"RS256"})
    token = jwt.encode({"sub": "r", "name": "R", "exp": T0 + 10}, rsa_key, algorithm="RS256")
    ident = auth.authenticate(token)
    assert (ident.user_id, ident.name, ident.expires_at) == ("r", "R", T0 + 10)


def test_es256(ec_key: ec.EllipticCurvePrivateKey) -> None:
    auth = make_auth(auth_secret=None, jwt_public_key=pem_public(ec_key))
    assert auth.algorithms == frozenset({"ES256"})
    token = jwt.encode({"sub": "e", "rooms": {"*": "read"}}, ec_key, algorithm="ES256")
    assert dict(auth.authenticate(token).rooms) == {"*": "read"}


def test_public_key_from_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "key.pem"
    path.write_text(pem_public(rsa_key))
    auth = make_auth(auth_secret=None, jwt_public_key=str(path))
    token = jwt.encode({"sub": "f"}, rsa_key, algorithm="RS256")
    assert auth.authenticate(token).user_id == "f"


def test_rs256_wrong_key(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = make_auth(auth_secret=None, jwt_public_key=pem_public(rsa_key))
    token = jwt.encode({"sub": "x"}, other, algorithm="RS256")
    assert code_of(lambda: auth.authenticate(token)) is ErrorCode.INVALID_TOKEN


def test_es256_token_with_rsa_key_configured(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = make_auth(auth_secret=None, jwt_public_key=pem_public(rsa_key))
    token = jwt.encode({"sub": "x"}, ec_key, algorithm="ES256")
    assert code_of(lambda: auth.authenticate(token)) is ErrorCode.INVALID_TOKEN


def test_hs256_and_rs256_together(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = pem_public(rsa_key)
    auth = make_auth(jwt_public_key=pem)
    assert auth.algorithms == frozenset({"HS256", "RS256"})
    assert auth.authenticate(mint_token(SECRET, sub="h")).user_id == "h"
    rs = jwt.encode({"sub": "r"}, rsa_key, algorithm="RS256")
    assert auth.authenticate(rs).user_id == "r"
    # key confusion: an HS256 token signed with the public key text must fail
    confused = raw_token({"alg": "HS256", "typ": "JWT"}, {"sub": "evil"})
    import hashlib
    import hmac

    head, body, _ = confused.split(".")
    sig = hmac.new(pem.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert code_of(lambda: auth.authenticate(f"{head}.{body}.{b64url(sig)}")) is (
        ErrorCode.INVALID_TOKEN
    )


def test_hs256_refused_when_only_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = make_auth(auth_secret=None, jwt_public_key=pem_public(rsa_key))
    token = mint_token(SECRET, sub="x")
    with pytest.raises(CollabError) as info:
        auth.authenticate(token)
    assert info.value.code is ErrorCode.INVALID_TOKEN
    assert "HS256" in info.value.message


def test_expired_rs256(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = make_auth(Clock(T0), auth_secret=None, jwt_public_key=pem_public(rsa_key))
    token = jwt.encode({"sub": "x", "exp": int(T0) - 1}, rsa_key, algorithm="RS256")
    assert code_of(lambda: auth.authenticate(token)) is ErrorCode.TOKEN_EXPIRED


def test_bad_public_key_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        make_auth(jwt_public_key=str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="PEM"):
        make_auth(jwt_public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
    ed = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="unsupported key type"):
        make_auth(jwt_public_key=ed.decode())
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        make_auth(jwt_public_key=pem_public(p384))


# --- refresh ----------------------------------------------------------------------


def test_refresh_same_sub() -> None:
    clock = Clock(T0)
    auth = make_auth(clock)
    first = auth.authenticate(mint_token(SECRET, sub="x", ttl_s=10, now=T0))
    clock.t = T0 + 9
    second = auth.refresh(first, mint_token(SECRET, sub="x", ttl_s=100, now=T0 + 9))
    assert second.user_id == "x"
    assert second.expires_at == T0 + 109


def test_refresh_errors() -> None:
    auth = make_auth()
    current = auth.authenticate(mint_token(SECRET, sub="x"))
    other = mint_token(SECRET, sub="y")
    assert code_of(lambda: auth.refresh(current, other)) is ErrorCode.FORBIDDEN
    assert code_of(lambda: auth.refresh(current, "")) is ErrorCode.INVALID_TOKEN
    assert code_of(lambda: auth.refresh(current, "junk")) is ErrorCode.INVALID_TOKEN
    expired = mint_token(SECRET, sub="x", ttl_s=1, now=T0 - 100)
    assert code_of(lambda: auth.refresh(current, expired)) is ErrorCode.TOKEN_EXPIRED


def test_refresh_empty_token_in_anonymous_mode() -> None:
    auth = make_auth(anonymous=True)
    anon = auth.authenticate(None)
    assert code_of(lambda: auth.refresh(anon, "")) is ErrorCode.INVALID_TOKEN


# --- parse_ttl / parse_room_grant ----------------------------------------------


@pytest.mark.parametrize(
    ("spec", "seconds"),
    [
        ("90", 90.0),
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1.5h", 5400.0),
        (" 2M ", 120.0),
    ],
)
def test_parse_ttl(spec: str, seconds: float) -> None:
    assert parse_ttl(spec) == seconds


@pytest.mark.parametrize("spec", ["", "0", "0s", "-5", "1w", "h", "1 h x", "1e3", "abc", "5ms"])
def test_parse_ttl_bad(spec: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_ttl(spec)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("doc:*=write", ("doc:*", "write")),
        ("*=read", ("*", "read")),
        ("board.1=admin", ("board.1", "admin")),
        (" doc:1 = Admin ", ("doc:1", "admin")),
    ],
)
def test_parse_room_grant(spec: str, expected: tuple[str, Role]) -> None:
    assert parse_room_grant(spec) == expected


@pytest.mark.parametrize(
    "spec", ["doc", "doc=", "=write", "doc=owner", "bad room=read", "a*b=read", "**=read"]
)
def test_parse_room_grant_bad(spec: str) -> None:
    with pytest.raises(ValueError, match="bad room grant"):
        parse_room_grant(spec)


# --- room ids ---------------------------------------------------------------------


@pytest.mark.parametrize("room", ["a", "doc:1", "A.b_c-d:e", "x" * 128, "user:alice"])
def test_check_room_id_ok(room: str) -> None:
    assert check_room_id(room) == room


@pytest.mark.parametrize(
    "room", ["", "x" * 129, "a b", "doc/1", "doc\n", "é", "doc*", None, 5, b"doc", ["a"]]
)
def test_check_room_id_bad(room: object) -> None:
    assert code_of(lambda: check_room_id(room)) is ErrorCode.INVALID_ROOM


@given(st.text(max_size=140))
def test_check_room_id_matches_regex(room: str) -> None:
    valid = ROOM_ID_RE.fullmatch(room) is not None
    expected = 1 <= len(room) <= 128 and all(
        c.isascii() and (c.isalnum() or c in "._:-") for c in room
    )
    assert valid == expected
    if valid:
        assert check_room_id(room) == room
    else:
        assert code_of(lambda: check_room_id(room)) is ErrorCode.INVALID_ROOM


# --- roles ------------------------------------------------------------------------


RULES: dict[str, Role] = {
    "*": "read",
    "doc:*": "write",
    "doc:secret*": "read",
    "doc:secret:1": "admin",
}


@pytest.mark.parametrize(
    ("room", "role"),
    [
        ("doc:secret:1", "admin"),  # exact beats every prefix
        ("doc:secret:2", "read"),  # longest prefix
        ("doc:public", "write"),
        ("doc:", "write"),  # a prefix matches the empty rest too
        ("board", "read"),  # "*" alone
    ],
)
def test_match_role_precedence(room: str, role: Role) -> None:
    assert match_role(RULES, room) == role


def test_match_role_no_match() -> None:
    assert match_role({"doc:*": "write", "x": "admin"}, "board") is None
    assert match_role({}, "board") is None
    assert match_role({"doc": "admin"}, "doc:1") is None  # no "*": exact only


def test_match_role_order_independent() -> None:
    forward = dict(RULES)
    backward = dict(reversed(list(RULES.items())))
    for room in ["doc:secret:1", "doc:secret:9", "doc:x", "z"]:
        assert match_role(forward, room) == match_role(backward, room)


def ident(rooms: Mapping[str, Role] | None = None, user_id: str = "u") -> Identity:
    return Identity(
        user_id=user_id,
        name=user_id,
        email=None,
        picture=None,
        rooms=rooms or {},
        expires_at=None,
    )


def test_resolve_role() -> None:
    token_rooms: dict[str, Role] = {"doc:*": "read"}
    grants: dict[str, Role] = {"doc:1": "admin", "board:*": "admin"}
    # the token claim wins over stored grants, even an exact grant
    assert resolve_role(ident(token_rooms), "doc:1", grants=grants, default="write") == "read"
    # grants next
    assert resolve_role(ident(token_rooms), "board:2", grants=grants, default="write") == "admin"
    # default last
    assert resolve_role(ident(token_rooms), "other", grants=grants, default="write") == "write"
    assert resolve_role(ident(), "other", grants=None, default="read") == "read"
    assert resolve_role(ident(), "doc:1", grants={}, default="admin") == "admin"


def test_role_rank() -> None:
    assert ROLE_RANK == {"read": 0, "write": 1, "admin": 2}
    assert role_at_least("admin", "write")
    assert role_at_least("write", "write")
    assert not role_at_least("read", "write")
    assert role_at_least("read", "read")
    assert not role_at_least("write", "admin")


# --- personal rooms ---------------------------------------------------------------


def test_personal_rooms() -> None:
    alice = ident(user_id="alice")
    assert personal_room("alice") == "user:alice"
    check_join_allowed(alice, "user:alice")
    check_join_allowed(alice, "doc:1")
    check_join_allowed(alice, "users")  # only the "user:" prefix is reserved
    assert code_of(lambda: check_join_allowed(alice, "user:bob")) is ErrorCode.FORBIDDEN
    assert code_of(lambda: check_join_allowed(alice, "user:")) is ErrorCode.FORBIDDEN
    assert code_of(lambda: check_join_allowed(alice, "user:alice2")) is ErrorCode.FORBIDDEN
