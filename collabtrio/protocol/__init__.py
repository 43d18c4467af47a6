"""Sans-IO codecs for Engine.IO v4, Socket.IO v5 and pre-encoded WebSocket frames."""
