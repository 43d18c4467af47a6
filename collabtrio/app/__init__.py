"""The application layer: what a connected client may do, between transports and rooms.

:mod:`.context` is what everything shares (config, auth, store, registry, timers,
clocks); :mod:`.client` is one client's state (identity, grants, rooms) and how it is
answered; :mod:`.connect` is the Socket.IO connect logic; :mod:`.handlers` the client
events; :mod:`.grants` keeps roles in step with stored grants; :mod:`.replies` says
how answers look on the wire.
"""
