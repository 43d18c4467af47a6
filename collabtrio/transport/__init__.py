"""Transport: the front door, Engine.IO/Socket.IO connections and their outboxes."""
