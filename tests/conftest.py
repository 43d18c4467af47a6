"""Shared fixtures: a real ``collabtrio serve`` process (used by tests/interop and
tests/integration).

``server_factory(*extra_flags)`` starts ``python -m collabtrio serve --port 0`` with a
secret and a SQLite file in ``tmp_path``, waits for its "listening on" line and returns
a :class:`ServerProcess`. At teardown every server still running gets SIGTERM and must
exit with code 0, without a Python traceback in its log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from collabtrio.auth import mint_token

SECRET = "collabtrio-tests-secret-0123456789abcdef"  # >= 32 bytes, so no weak-key warning
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
_LISTENING = re.compile(r"listening on (http://\S+)")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without any ``COLLABTRIO_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLABTRIO_")}
    env.update(extra or {})
    return env


class ServerProcess:
    """A running ``collabtrio serve`` subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, secret: str | None,
                 out_path: Path, err_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.secret = secret
        self.out_path = out_path
        self.err_path = err_path
        self.allow_tracebacks = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def token(self, sub: str, name: str | None = None, rooms: Mapping[str, str] | None = None,
              ttl_s: float | None = 3600, **claims: Any) -> str:
        """An HS256 JWT for this server (``claims``: email, picture, now)."""
        assert self.secret, "this server was started without a secret"
        return mint_token(self.secret, sub=sub, name=name, rooms=rooms, ttl_s=ttl_s, **claims)

    def log(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Send ``sig`` (if still running) and return the exit code; ``None`` when the
        server did not exit within ``timeout`` (it is then killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def start_server(workdir: Path, *flags: str, secret: str | None = SECRET,
                 env: Mapping[str, str] | None = None, db: str | None = None) -> ServerProcess:
    """Start ``collabtrio serve`` and wait until it listens (or fail with its output)."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob("server-*.out")))
    out_path, err_path = workdir / f"server-{n}.out", workdir / f"server-{n}.err"
    cmd = [sys.executable, "-m", "collabtrio", "serve", "--port", "0",
           "--db", db or f"sqlite:///{workdir}/t{n}.db"]
    if secret is not None:
        cmd += ["--auth-secret", secret]
    cmd += flags
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=clean_env(env), cwd=workdir)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        m = _LISTENING.search(out_path.read_text(errors="replace"))
        if m:
            return ServerProcess(proc, m.group(1), secret, out_path, err_path)
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            output = out_path.read_text(errors="replace") + err_path.read_text(errors="replace")
            pytest.fail(f"server did not start (exit {proc.returncode}): {cmd}\n{output}")
        time.sleep(0.02)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """``start(*flags, secret=SECRET, env=None)`` -> :class:`ServerProcess`; stopped at
    teardown with SIGTERM, which must give exit code 0 and a log without tracebacks."""
    started: list[ServerProcess] = []

    def start(*flags: str, **kwargs: Any) -> ServerProcess:
        srv = start_server(tmp_path, *flags, **kwargs)
        started.append(srv)
        return srv

    yield start
    problems = []
    for srv in started:
        code = srv.stop()
        log = srv.log()
        if code is None:
            problems.append(f"server {srv.url} ignored SIGTERM for {STOP_TIMEOUT_S}s "
                            f"(killed):\n{log[-4000:]}")
        elif code != 0:
            problems.append(f"server {srv.url} exited with {code}:\n{log[-4000:]}")
        elif "Traceback" in log and not srv.allow_tracebacks:
            problems.append(f"server {srv.url} logged a traceback:\n{log[-6000:]}")
    if problems:
        pytest.fail("\n\n".join(problems))


# -- PostgreSQL, shared by the storage contract suite and the fault tests ---------------

POSTGRES_URL = os.environ.get(
    "COLLABTRIO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def services_required() -> bool:
    """``COLLABTRIO_REQUIRE_SERVICES=1``: a missing service fails instead of skipping."""
    return os.environ.get("COLLABTRIO_REQUIRE_SERVICES", "") not in ("", "0")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a reachable PostgreSQL; skip if there is none, unless
    ``COLLABTRIO_REQUIRE_SERVICES=1``, which fails instead."""
    reason = None
    try:
        import psycopg
    except ImportError:
        reason = "psycopg is not installed (pip install 'collabtrio[postgres]')"
    else:
        try:
            with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            reason = f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).strip()}"
    if reason is not None:
        if services_required():
            pytest.fail(f"COLLABTRIO_REQUIRE_SERVICES is set but {reason}")
        pytest.skip(reason)
    return POSTGRES_URL
