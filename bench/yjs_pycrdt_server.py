"""The Yjs benchmark's pycrdt-websocket peer: ``ASGIServer(WebsocketServer())`` under uvicorn.

pycrdt-websocket as it comes: ``WebsocketServer()`` with its defaults (rooms ready at once,
``auto_clean_rooms=True``: a room and its document are dropped when its last client leaves),
no YStore (no persistence), served by its ``ASGIServer`` on one uvicorn server in one
process. The room is the request path (``ws://host:port/<room>``).

uvicorn settings, as for the fan-out benchmark's python-socketio peer: one process, one
asyncio event loop (uvloop when installed, ``--loop``), httptools for HTTP/1.1 when
installed, the ``websockets`` WebSocket implementation (``--ws``) with permessage-deflate
off (collabtrio does not offer it), no access log. The ``WebsocketServer`` runs in the same
event loop, started before uvicorn accepts connections.

Run it with the interpreter that has pycrdt-websocket and uvicorn (``bash bench/setup.sh``)::

    .venv/bin/python bench/yjs_pycrdt_server.py --port 9300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec

# uvicorn's "websockets" protocol is built on websockets.legacy, deprecated since websockets 14.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"websockets(\.|$)")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"uvicorn\.")
# ... and uvicorn says so once at start-up (its own warning class)
warnings.filterwarnings("ignore", message=r".*`websockets` implementation is deprecated")

import uvicorn  # noqa: E402
from pycrdt.websocket import ASGIServer, WebsocketServer  # noqa: E402


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


async def serve(args: argparse.Namespace, http: str) -> None:
    websocket_server = WebsocketServer()
    app = ASGIServer(websocket_server)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http=http,
        ws=args.ws,
        ws_per_message_deflate=False,
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
    )
    async with websocket_server:
        await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9300)
    p.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop when installed (auto, the default) or asyncio's own",
    )
    p.add_argument(
        "--ws",
        default="websockets",
        choices=("websockets", "websockets-sansio", "wsproto"),
        help="uvicorn's WebSocket implementation (default websockets)",
    )
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    loop = args.loop
    if loop == "auto":
        loop = "uvloop" if find_spec("uvloop") else "asyncio"
    http = "httptools" if find_spec("httptools") else "h11"
    info = {
        "pycrdt-websocket": _version("pycrdt-websocket"),
        "pycrdt": _version("pycrdt"),
        "uvicorn": _version("uvicorn"),
        "loop": loop,
        "http": http,
        "ws": args.ws,
        "ws_version": _version("wsproto" if args.ws == "wsproto" else "websockets"),
        "auto_clean_rooms": True,
        "ystore": None,
    }
    print(f"yjs_pycrdt_server: {json.dumps(info)}", file=sys.stderr, flush=True)
    if loop == "uvloop":
        import uvloop

        uvloop.run(serve(args, http))
    else:
        asyncio.run(serve(args, http))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
