"""The fan-out benchmark's python-socketio peer: ``socketio.AsyncServer`` under uvicorn.

It speaks the two events bench/loadgen.js uses against collabtrio, with the same payloads,
so the load generator's ``--target collabtrio`` mode runs against it unchanged:

* ``join {room}`` with an ack: the connection enters the room and the ack is
  ``{"ok": true, "room": room, "role": "write"}``;
* ``broadcast {room, event, data}``: relayed to every *other* member of the room as a
  ``broadcast`` event ``{room, event, data, socketId, userId, userName}`` (what collabtrio
  sends), acked with ``{"ok": true}`` when the sender asked for an ack. A sender that is not
  in the room gets nothing relayed (an ack, if asked for, says ``NOT_JOINED``).

Every connection gets an anonymous identity at connect time, like ``collabtrio serve
--anonymous``. No storage or rate limiting: this is python-socketio's own cost for the
same fan-out, the peer collabtrio is compared with. With ``--jwt-secret``, a connection that
sends ``auth.token`` in its CONNECT is checked as collabtrio checks it (an HS256 JWT, verified
with PyJWT in the ``connect`` handler; a bad token is refused with a connect_error) and gets
the token's ``sub`` and ``name``; one without a token stays anonymous.

Settings, chosen for a like-for-like comparison with ``collabtrio serve``: one process, one
event loop (uvloop when installed), httptools for HTTP/1.1 when installed, the
``websockets`` WebSocket implementation (``--ws``) with permessage-deflate turned off
(uvicorn turns it on by default, collabtrio does not offer it), Engine.IO pingInterval /
pingTimeout 25 s / 20 s, maxPayload 1,000,000 bytes and HTTP keep-alive 5 s (collabtrio's
defaults), no access log. python-engineio refuses a long-polling POST that carries more than
16 packets ("Too many packets in payload", ``Payload.max_decode_packets``); a polling
publisher whose POST is slow to come back batches more than that and would lose the whole
batch, so the limit is raised to 1000 (``--max-decode-packets``), as python-engineio's docs
suggest. collabtrio bounds a POST by bytes only (maxPayload), as does this peer still.
``cors_allowed_origins`` is ``*`` by default; the Node client sends no ``Origin`` header, so it
makes no difference to the benchmark.

``GET /bench-stats`` answers JSON with how many Engine.IO sessions are open on each transport
and how many connected since start on each, so the driver can check that the polling
scenario really polls.

Run it with the interpreter that has python-socketio and uvicorn (``bash bench/setup.sh``)::

    .venv/bin/python bench/psio_server.py --port 9200
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import warnings
from typing import Any

# uvicorn's "websockets" protocol is built on websockets.legacy, deprecated since websockets 14.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"websockets(\.|$)")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"uvicorn\.")

import jwt  # noqa: E402
import socketio  # type: ignore[import-untyped, unused-ignore]  # noqa: E402
import uvicorn  # noqa: E402


def build_app(
    cors: str | list[str], ping_interval: float, ping_timeout: float, jwt_secret: str = ""
) -> Any:
    # tries to match collabtrio's settings; see the module docstring
    sio = socketio.AsyncServer(
        async_mode="asgi",
        cors_allowed_origins=cors,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        max_http_buffer_size=1_000_000,
        logger=False,
        engineio_logger=False,
    )
    # sid -> (userId, userName); a dict rather than sio.save_session, which copies per call
    identities: dict[str, tuple[str, str]] = {}
    connected_on: dict[str, int] = {"polling": 0, "websocket": 0}

    @sio.event  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if jwt_secret and token:
            try:
                claims = jwt.decode(token, jwt_secret, algorithms=["HS256"])
            except jwt.InvalidTokenError as exc:
                raise socketio.exceptions.ConnectionRefusedError("invalid token") from exc
            sub = claims.get("sub")
            if not isinstance(sub, str):
                raise socketio.exceptions.ConnectionRefusedError("invalid token")
            name = claims.get("name")
            identities[sid] = (sub, name if isinstance(name, str) else sub)
        else:
            suffix = secrets.token_hex(6)
            identities[sid] = (f"anon-{suffix}", f"Anonymous {suffix[:6]}")
        transport = sio.transport(sid)
        connected_on[transport] = connected_on.get(transport, 0) + 1

    @sio.event  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def disconnect(sid: str, *_reason: Any) -> None:
        identities.pop(sid, None)

    @sio.event  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def join(sid: str, payload: Any) -> dict[str, Any]:
        room = payload.get("room") if isinstance(payload, dict) else None
        if not isinstance(room, str) or not room:
            return {"ok": False, "error": {"code": "INVALID_PAYLOAD", "message": "room"}}
        await sio.enter_room(sid, room)
        return {"ok": True, "room": room, "role": "write"}

    @sio.on("broadcast")  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def broadcast(sid: str, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            return {"ok": False, "error": {"code": "INVALID_PAYLOAD", "message": "not an object"}}
        room = payload.get("room")
        if not isinstance(room, str) or room not in sio.rooms(sid):
            return {"ok": False, "error": {"code": "NOT_JOINED", "message": f"not in {room!r}"}}
        user_id, user_name = identities.get(sid, ("?", "?"))
        out = {
            "room": room,
            "event": payload.get("event"),
            "data": payload.get("data"),
            "socketId": sid,
            "userId": user_id,
            "userName": user_name,
        }
        await sio.emit("broadcast", out, room=room, skip_sid=sid)
        return {"ok": True}

    async def stats_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope.get("path") != "/bench-stats":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        eio = sio.eio
        by_transport: dict[str, int] = {}
        sessions = [s for s in list(eio.sockets.values()) if not (s.closed or s.closing)]
        for s in sessions:
            name = "websocket" if s.upgraded else "polling"
            by_transport[name] = by_transport.get(name, 0) + 1
        body = json.dumps(
            {
                "open_sessions": len(sessions),
                "open_by_transport": by_transport,
                "connected_since_start_on": dict(connected_on),
                "identities": len(identities),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return socketio.ASGIApp(sio, other_asgi_app=stats_app, socketio_path="socket.io")


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9200)
    p.add_argument(
        "--ws",
        default="websockets",
        choices=("websockets", "websockets-sansio", "wsproto"),
        help="uvicorn's WebSocket implementation (default websockets)",
    )
    p.add_argument("--cors-origins", default="*", help="comma-separated, or * (default)")
    p.add_argument("--ping-interval-ms", type=int, default=25000)
    p.add_argument("--ping-timeout-ms", type=int, default=20000)
    p.add_argument(
        "--max-decode-packets",
        type=int,
        default=1000,
        help="python-engineio's Payload.max_decode_packets (its default is 16)",
    )
    p.add_argument("--jwt-secret", default="", help="check CONNECT auth.token as an HS256 JWT")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    from engineio.payload import Payload  # type: ignore[import-untyped, unused-ignore]

    Payload.max_decode_packets = args.max_decode_packets
    cors: str | list[str] = (
        "*" if args.cors_origins.strip() == "*"
        else [o.strip() for o in args.cors_origins.split(",") if o.strip()]
    )  # fmt: skip
    app = build_app(
        cors, args.ping_interval_ms / 1000, args.ping_timeout_ms / 1000, args.jwt_secret
    )
    loop = "uvloop" if _available("uvloop") else "asyncio"
    http = "httptools" if _available("httptools") else "h11"
    info = {
        "python-socketio": _version("python-socketio"),
        "python-engineio": _version("python-engineio"),
        "uvicorn": _version("uvicorn"),
        "loop": loop,
        "http": http,
        "ws": args.ws,
        "ws_version": _version("wsproto" if args.ws == "wsproto" else "websockets"),
        "ws_per_message_deflate": False,
        "max_decode_packets": args.max_decode_packets,
    }
    print(f"psio_server: {json.dumps(info)}", file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop=loop,
        http=http,
        ws=args.ws,
        ws_per_message_deflate=False,
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
        timeout_keep_alive=5,
        workers=None,
    )
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
