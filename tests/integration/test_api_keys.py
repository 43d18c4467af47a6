"""API keys: their syntax, the CLI flags and variable, and the keys file (re-read when it
changes, so keys rotate without a restart)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from collabtrio.cli import build_parser, config_from, main
from collabtrio.config import Config
from collabtrio.http.auth import ApiKeys, parse_key, parse_keys, parse_keys_file
from collabtrio.server import Server
from collabtrio.testing import open_test_server

OLD = "old-secret-" + "1" * 21
NEW = "new-secret-" + "2" * 21


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def test_key_syntax() -> None:
    key = parse_key("billing:" + OLD)
    assert key.name == "billing"
    assert key.scopes == {"publish", "read", "admin"}
    assert OLD not in repr(key)  # only a digest of the secret is kept
    scoped = parse_key(f"ci.bot-1:{OLD}:read+publish")
    assert scoped.scopes == {"read", "publish"}
    assert scoped.allows("read")
    assert not scoped.allows("admin")
    assert parse_key(f"root:{OLD}:admin").allows("publish")
    for bad, says in [("noseparator", "NAME:SECRET"),
                      (f"bad name:{OLD}", "name"),
                      ("short:abc", "16 or more"),
                      (f"x:{OLD}:write", "unknown scope"),
                      (f"x:{OLD}:", "unknown scope"),
                      (f"x:{OLD}:read:more", "NAME:SECRET")]:
        with pytest.raises(ValueError, match=says) as exc:
            parse_key(bad)
        assert OLD not in str(exc.value)  # an error never shows the secret
    assert [k.name for k in parse_keys(f"a:{OLD}, b:{NEW}:read,")] == ["a", "b"]
    text = f"# rotated 2026-01-01\n\na:{OLD}\n  b:{NEW}:publish  \n"
    assert [k.name for k in parse_keys_file(text)] == ["a", "b"]
    with pytest.raises(ValueError, match="line 2"):
        parse_keys_file(f"a:{OLD}\nbroken\n")


def test_names_and_secrets_are_unique(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twice"):
        ApiKeys.from_config(Config(api_keys=f"a:{OLD},a:{NEW}"))
    with pytest.raises(ValueError, match="same secret"):
        ApiKeys.from_config(Config(api_keys=f"a:{OLD},b:{OLD}"))
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"a:{NEW}\n")
    with pytest.raises(ValueError, match="twice"):
        ApiKeys.from_config(Config(api_keys=f"a:{OLD}", api_keys_file=str(keys_file)))
    with pytest.raises(ValueError, match="cannot read"):
        ApiKeys.from_config(Config(api_keys_file=str(tmp_path / "missing")))


def test_the_flag_is_repeatable_and_wins_over_the_variable() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--api-key", f"a:{OLD}", "--api-key", f"b:{NEW}:read"])
    config = config_from(args, {"COLLABTRIO_API_KEYS": "ignored:" + "x" * 20})
    assert [k.name for k in ApiKeys.from_config(config).keys] == ["a", "b"]
    args = parser.parse_args(["serve", "--api-keys", f"a:{OLD},b:{NEW}"])
    assert config_from(args, {}).api_keys == f"a:{OLD},b:{NEW}"
    env = config_from(parser.parse_args(["serve"]), {"COLLABTRIO_API_KEYS": f"c:{OLD}",
                                                     "COLLABTRIO_API_MAX_ROOMS": "7"})
    assert env.api_keys == f"c:{OLD}"
    assert env.api_max_rooms == 7


def test_a_bad_key_stops_the_server_from_starting(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--anonymous", "--db", "memory://", "--port", "0",
                 "--api-key", "svc:short"])
    assert code == 2
    assert "16 or more" in capsys.readouterr().err
    with pytest.raises(ValueError, match="NAME:SECRET"):
        Server(Config(anonymous=True, api_keys="nonsense"))


async def test_the_keys_file_is_reread_when_it_changes(
        tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"# the back ends\nsvc:{OLD}\n")
    async with open_test_server(api_keys_file=str(keys_file)) as server:
        assert (await server.request("GET", "/api/stats", key=OLD)).status == 200
        assert (await server.request("GET", "/api/stats", key=NEW)).status == 401
        # rotation, step 1: both keys
        keys_file.write_text(f"svc:{OLD}\nsvc2:{NEW}\n")
        await trio.sleep(1.5)
        assert (await server.request("GET", "/api/stats", key=NEW)).status == 200
        assert (await server.request("GET", "/api/stats", key=OLD)).status == 200
        # step 2: the old key goes
        keys_file.write_text(f"svc2:{NEW}\n")
        os.utime(keys_file, ns=(1, 2))  # a change even on a coarse clock
        await trio.sleep(1.5)
        assert (await server.request("GET", "/api/stats", key=OLD)).status == 401
        assert (await server.request("GET", "/api/stats", key=NEW)).status == 200
        # a file that no longer parses: logged, and the keys read before stay
        keys_file.write_text("svc2:oops\n")
        await trio.sleep(1.5)
        assert (await server.request("GET", "/api/stats", key=NEW)).status == 200
        assert "keeping the API keys read before" in caplog.text
        # removed: the same
        keys_file.unlink()
        await trio.sleep(1.5)
        assert (await server.request("GET", "/api/stats", key=NEW)).status == 200
        keys_file.write_text(f"svc3:{OLD}:read\n")
        await trio.sleep(1.5)
        assert (await server.request("GET", "/api/stats", key=OLD)).status == 200
        assert (await server.request("GET", "/api/stats", key=NEW)).status == 401


async def test_inline_keys_and_the_file_together(tmp_path: Path, autojump_clock: Any) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"filed:{NEW}:read\n")
    async with open_test_server(api_keys=f"inline:{OLD}:read",
                                api_keys_file=str(keys_file)) as server:
        for key in (OLD, NEW):
            assert (await server.request("GET", "/api/stats", key=key)).status == 200
        assert server.server.api_keys.names() == ["inline", "filed"]
