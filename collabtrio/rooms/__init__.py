"""Rooms: the registry, the per-room task and its mailbox."""
