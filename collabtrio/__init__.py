"""collabtrio: a trio-based real-time collaboration server speaking Socket.IO.

Embed it::

    import trio, collabtrio

    async def main():
        async with trio.open_nursery() as nursery:
            config = collabtrio.Config(port=0, anonymous=True)
            server = await nursery.start(collabtrio.serve, config)
            print("listening on", server.port)
"""

from __future__ import annotations

from .config import Config
from .errors import CollabError, ErrorCode
from .server import Server, serve

__all__ = ["CollabError", "Config", "ErrorCode", "Server", "__version__", "serve"]

__version__ = "0.1.0"
