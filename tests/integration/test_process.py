"""The ``collabtrio`` command as a process: configuration, HTTP, signals, tokens."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import socketio

from collabtrio import __version__
from collabtrio.auth import mint_token
from tests.conftest import SECRET, ServerProcess, clean_env

_EXE = Path(sys.executable).with_name("collabtrio")
CLI = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "collabtrio"]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``collabtrio ARGS`` to completion with a clean environment."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env(env), cwd=cwd, stdin=subprocess.DEVNULL)


async def _connect(url: str, token: str | None, **kwargs: Any) -> socketio.AsyncClient:
    sio = socketio.AsyncClient(reconnection=False)
    auth = {"token": token} if token is not None else None
    await asyncio.wait_for(
        sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=5, **kwargs), 10)
    return sio


def _join_role(url: str, token: str, room: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        sio = await _connect(url, token)
        try:
            return await sio.call("join", {"room": room}, timeout=5)  # type: ignore[no-any-return]
        finally:
            await sio.disconnect()

    return asyncio.run(asyncio.wait_for(main(), 20))


def _http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


# -- configuration ------------------------------------------------------------------------


def test_serve_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    proc = cli("serve", "--port", "0", "--db", f"sqlite:///{tmp_path}/t.db", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--auth-secret" in proc.stderr
    assert "--anonymous" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "listening" not in proc.stdout


def test_anonymous_mode_starts_without_a_secret(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--anonymous", secret=None)
    assert "anonymous" in server.log()  # the warning

    async def main() -> None:
        sio = await _connect(server.url, None)
        try:
            ack = await sio.call("join", {"room": "doc:anon"}, timeout=5)
            assert ack["ok"] is True
            assert ack["presence"]["users"][0]["userId"]
        finally:
            await sio.disconnect()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_serve_help() -> None:
    proc = cli("serve", "--help")
    assert proc.returncode == 0, proc.stderr
    for text in ("--max-payload", "COLLABTRIO_MAX_PAYLOAD", "--auth-secret",
                 "COLLABTRIO_AUTH_SECRET", "--anonymous", "--port", "--db",
                 "--max-event-bytes", "--rate-limit-per-s", "--shutdown-grace-s"):
        assert text in proc.stdout, text


def test_version_and_top_level_help() -> None:
    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"collabtrio {__version__}"
    proc = cli("--help")
    assert proc.returncode == 0
    assert "serve" in proc.stdout
    assert "token" in proc.stdout
    proc = cli()
    assert proc.returncode == 2  # argparse: a command is required


def test_config_from_environment(server_factory: Callable[..., ServerProcess],
                                 tmp_path: Path) -> None:
    db = tmp_path / "env.db"
    env = {
        "COLLABTRIO_PORT": "0",
        "COLLABTRIO_AUTH_SECRET": SECRET,
        "COLLABTRIO_DB": f"sqlite:///{db}",
        "COLLABTRIO_MAX_EVENT_BYTES": "1000",
        "COLLABTRIO_DEFAULT_ROLE": "read",
    }
    # no flags at all: everything comes from the environment
    proc = subprocess.Popen([*CLI, "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=clean_env(env), cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on http://127.0.0.1:" in line, line
        assert f"sqlite:///{db}" in line
        url = line.split("listening on ", 1)[1].split()[0]
        assert int(url.rsplit(":", 1)[1]) != 0
        token = mint_token(SECRET, sub="a")

        async def main() -> None:
            sio = await _connect(url, token)
            try:
                ack = await sio.call("join", {"room": "doc:env"}, timeout=5)
                assert ack["role"] == "read"  # COLLABTRIO_DEFAULT_ROLE
                big = {"room": "doc:env", "event": "e", "data": "x" * 2000}
                ack = await sio.call("broadcast", big, timeout=5)
                assert ack["error"]["code"] == "TOO_LARGE"  # COLLABTRIO_MAX_EVENT_BYTES
            finally:
                await sio.disconnect()

        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert db.exists()

    # a flag wins over the variable
    server = server_factory("--max-event-bytes", "100000",
                            env={"COLLABTRIO_MAX_EVENT_BYTES": "1000"})

    async def flag_wins() -> None:
        sio = await _connect(server.url, server.token("a"))
        try:
            await sio.call("join", {"room": "doc:env"}, timeout=5)
            big = {"room": "doc:env", "event": "e", "data": "x" * 2000}
            assert (await sio.call("broadcast", big, timeout=5)) == {"ok": True}
        finally:
            await sio.disconnect()

    asyncio.run(asyncio.wait_for(flag_wins(), 20))


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({"COLLABTRIO_PORT": "not-a-port"}, [], "--port"),
        ({}, ["--max-payload", "0"], "max_payload"),
        ({}, ["--anonymous", "--anonymous", "--default-role", "root"], "default-role"),
        ({"COLLABTRIO_ANONYMOUS": "maybe"}, [], "COLLABTRIO_ANONYMOUS"),
    ],
)
def test_bad_configuration_exits_2(tmp_path: Path, env: dict[str, str], flags: list[str],
                                   expected: str) -> None:
    proc = cli("serve", "--auth-secret", SECRET, "--db", f"sqlite:///{tmp_path}/t.db", *flags,
               env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_port_in_use_exits_2(server: ServerProcess, tmp_path: Path) -> None:
    proc = cli("serve", "--port", str(server.port), "--auth-secret", SECRET,
               "--db", f"sqlite:///{tmp_path}/other.db", cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot listen" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--db", "sqlite:///{tmp}/no/such/dir/t.db"], "does not exist"),
        (["--db", "mysql://localhost/x"], "unsupported storage URL"),
        (["--jwt-public-key", "{tmp}/missing.pem"], "missing.pem"),
    ],
    ids=["sqlite-dir-missing", "unsupported-db-url", "unreadable-public-key"],
)
def test_storage_or_key_problem_exits_2(tmp_path: Path, flags: list[str], expected: str) -> None:
    """cli.py promises exit 2 with a message (no traceback) for storage and key problems."""
    flags = [f.format(tmp=tmp_path) for f in flags]
    if "--db" not in flags:
        flags += ["--db", f"sqlite:///{tmp_path}/t.db"]
    proc = cli("serve", "--port", "0", "--auth-secret", SECRET, *flags, cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr


# -- HTTP on the same port ----------------------------------------------------------------


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory()


def test_healthz_and_404(server: ServerProcess) -> None:
    status, body = _http_get(server.url + "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    status, body = _http_get(server.url + "/no/such/path")
    assert status == 404
    status, _ = _http_get(server.url + "/")
    assert status == 404


def test_garbage_on_the_socket_does_not_hurt(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 this is not http\r\n\r\n")
        reply = sock.recv(1024)
    assert reply.startswith(b"HTTP/1.1 4"), reply
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass  # connect and hang up at once
    status, _ = _http_get(server.url + "/healthz")
    assert status == 200


# -- signals ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0(server: ServerProcess, sig: int) -> None:
    started = time.monotonic()
    assert server.stop(sig) == 0
    assert time.monotonic() - started < 2.0


def test_sigterm_with_100_clients(server: ServerProcess) -> None:
    n = 100

    async def main() -> tuple[float, list[list[Any]]]:
        reasons: list[list[Any]] = [[] for _ in range(n)]
        sockets: list[socketio.AsyncClient] = []

        async def one(i: int) -> None:
            sio = socketio.AsyncClient(reconnection=False)

            @sio.on("disconnect")
            async def on_disconnect(reason: Any = None) -> None:
                reasons[i].append(reason)

            sockets.append(sio)
            await sio.connect(server.url, auth={"token": server.token(f"user{i}")},
                              transports=["websocket"], wait_timeout=10)
            ack = await sio.call("join", {"room": f"doc:{i % 10}"}, timeout=10)
            assert ack["ok"] is True

        try:
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 30)
            assert len(sockets) == n
            assert all(s.connected for s in sockets)
            sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.proc.wait, 10)
            took = time.monotonic() - sent
            assert code == 0, server.log()[-3000:]
            deadline = time.monotonic() + 5
            while not all(reasons) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return took, reasons
        finally:
            await asyncio.gather(*(asyncio.wait_for(s.disconnect(), 5) for s in sockets),
                                 return_exceptions=True)

    took, reasons = asyncio.run(asyncio.wait_for(main(), 60))
    assert took < 2.0, f"server took {took:.2f}s to exit after SIGTERM"
    missing = [i for i, r in enumerate(reasons) if not r]
    assert not missing, f"{len(missing)} clients never saw the disconnect"
    assert all(len(r) == 1 for r in reasons), reasons


# -- collabtrio token ---------------------------------------------------------------------


def test_cli_token_is_accepted(server: ServerProcess) -> None:
    proc = cli("token", "--sub", "alice", "--name", "Alice", "--room", "doc:*=read",
               "--ttl", "1h", "--auth-secret", SECRET)
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert token.count(".") == 2
    assert "\n" not in token
    ack = _join_role(server.url, token, "doc:1")
    assert ack["ok"] is True
    assert ack["role"] == "read"
    assert ack["presence"]["users"][0]["userName"] == "Alice"
    # the secret may come from the environment too
    proc = cli("token", "--sub", "bob", "--ttl", "90", env={"COLLABTRIO_AUTH_SECRET": SECRET})
    assert proc.returncode == 0, proc.stderr
    ack = _join_role(server.url, proc.stdout.strip(), "doc:1")
    assert ack["ok"] is True
    assert ack["role"] == "write"
    # and a token signed with another secret is refused
    proc = cli("token", "--sub", "eve", "--auth-secret", "another-secret-0123456789abcdef0123")
    assert proc.returncode == 0

    async def refused() -> Any:
        errors: list[Any] = []
        sio = socketio.AsyncClient(reconnection=False)
        sio.on("connect_error", lambda data=None: errors.append(data))
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(server.url, auth={"token": proc.stdout.strip()},
                              transports=["websocket"], wait_timeout=5)
        return errors[0]

    data = asyncio.run(asyncio.wait_for(refused(), 20))
    assert data["data"]["code"] == "INVALID_TOKEN"


def test_cli_token_without_secret_exits_2() -> None:
    proc = cli("token", "--sub", "alice")
    assert proc.returncode == 2
    assert "--auth-secret" in proc.stderr
    assert "COLLABTRIO_AUTH_SECRET" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--room", "doc:*"], "ROOM=ROLE"),
        (["--room", "doc:*=owner"], "role"),
        (["--room", "bad room=read"], "room id"),
        (["--ttl", "forever"], "duration"),
        (["--ttl", "0"], "positive"),
    ],
)
def test_cli_token_bad_arguments_exit_2(args: list[str], expected: str) -> None:
    proc = cli("token", "--sub", "alice", "--auth-secret", SECRET, *args)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
