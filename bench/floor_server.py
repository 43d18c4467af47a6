"""The fan-out *floor*: the cheapest room relay one can write on trio-websocket.

No Engine.IO / Socket.IO framing, no auth, no persistence, no rate limiting.
Protocol, text frames only:

* a client's first message is JSON ``{"join": "<room>"}``; the server answers
  ``{"joined": "<room>"}`` once the client is a member;
* every later text message is relayed, byte-for-byte, to every *other* member
  of that room (never echoed to the sender).

With ``--jwt-secret``, a join frame that carries ``"token"`` is checked as collabtrio
checks a token (an HS256 JWT, PyJWT); a bad one closes the connection with 1008. So the
connect storm costs the floor a handshake, a JWT check and a join.

The relay is deliberately naive: inside the sending client's handler it calls
``await ws.send_message(text)`` once per recipient, sequentially.  Whatever
collabtrio costs on top of this is protocol, bookkeeping and scheduling -- the
benchmark (``bench/fanout.py``) reports collabtrio as a ratio to this floor.

Run with the same interpreter as collabtrio::

    .venv/bin/python bench/floor_server.py --port 9100
"""

from __future__ import annotations

import argparse
import json
import sys

import jwt
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

# room name -> members.  Only ever touched from trio tasks of one thread.
ROOMS: dict[str, set[WebSocketConnection]] = {}
JWT_SECRET = ""


async def _relay(room: str, sender: WebSocketConnection, text: str) -> None:
    # Snapshot: members may join/leave while this task is suspended in a send.
    for peer in tuple(ROOMS.get(room, ())):
        if peer is sender:
            continue
        try:
            await peer.send_message(text)
        except ConnectionClosed:
            # The peer's own handler notices the close and removes it.
            continue


async def handler(request: WebSocketRequest) -> None:
    try:
        ws = await request.accept()
    except ConnectionClosed:
        return
    room: str | None = None
    try:
        first = await ws.get_message()
        try:
            hello = json.loads(first)
            room = str(hello["join"])
        except (ValueError, TypeError, KeyError):
            await ws.aclose(code=1008, reason='first message must be {"join": "<room>"}')
            return
        token = hello.get("token")
        if JWT_SECRET and token:
            try:
                jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
            except jwt.InvalidTokenError:
                room = None
                await ws.aclose(code=1008, reason="invalid token")
                return
        ROOMS.setdefault(room, set()).add(ws)
        await ws.send_message(json.dumps({"joined": room}))
        while True:
            message = await ws.get_message()
            if isinstance(message, str):
                await _relay(room, ws, message)
    except ConnectionClosed:
        pass
    finally:
        if room is not None:
            members = ROOMS.get(room)
            if members is not None:
                members.discard(ws)
                if not members:
                    del ROOMS[room]


async def main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, host, port, None)
        print(f"floor: listening on ws://{host}:{server.port}", file=sys.stderr, flush=True)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwt-secret", default="", help="check a join frame's token (HS256)")
    args = parser.parse_args(argv)
    global JWT_SECRET
    JWT_SECRET = args.jwt_secret
    try:
        trio.run(main, args.host, args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    cli()
