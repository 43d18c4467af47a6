"""HTTP surfaces on the server's port: the router's table and the routes behind it."""
