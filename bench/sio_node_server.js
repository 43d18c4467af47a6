#!/usr/bin/env node
// The fan-out benchmark's Node peer: Socket.IO 4 (the npm `socket.io` package) on Node's
// http server, speaking what bench/psio_server.py speaks, so bench/loadgen.js's
// `--target collabtrio` mode runs against it unchanged:
//
// * `join {room}` with an ack: the connection enters the room and the ack is
//   `{ok: true, room, role: "write"}`;
// * `broadcast {room, event, data}`: relayed to every *other* member of the room as a
//   `broadcast` event `{room, event, data, socketId, userId, userName}` (what collabtrio
//   sends), acked with `{ok: true}` when the sender asked for an ack. A sender that is not in
//   the room gets nothing relayed (an ack, if asked for, says NOT_JOINED).
//
// Every connection gets an anonymous identity at connect time, like `collabtrio serve
// --anonymous`. No storage or rate limiting: this is Socket.IO's own cost for the same
// fan-out. With --jwt-secret, a connection that sends `auth.token` in its CONNECT is checked
// as collabtrio checks it (an HS256 JWT, verified with the `jsonwebtoken` package in a
// Socket.IO middleware; a bad token is refused with a connect_error) and gets the token's
// `sub` and `name`; one without a token stays anonymous, like `collabtrio serve --anonymous
// --auth-secret`.
//
// Settings, as psio_server.py's (chosen for a like-for-like comparison with `collabtrio
// serve`): one process, one event loop, Engine.IO pingInterval / pingTimeout 25 s / 20 s,
// maxHttpBufferSize 1,000,000 bytes, WebSocket permessage-deflate and HTTP compression of
// polling responses off, HTTP keep-alive 5 s, CORS origin `*` by default (the Node client
// sends no Origin header, so it makes no difference to the benchmark).
//
// `GET /bench-stats` answers JSON with how many Engine.IO sessions are open on each transport
// and how many connected since start on each, so the driver can check that the polling
// scenario really polls.
//
// Usage (after `bash bench/setup.sh`):
//   node bench/sio_node_server.js --port 9300 [--host 127.0.0.1] [--cors-origins '*']
//                                 [--jwt-secret SECRET]

"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const path = require("node:path");
const { Server } = require("socket.io");

// an installed package's version, or null (some packages do not export package.json)
function version(pkg) {
  try {
    const file = path.join(__dirname, "node_modules", pkg, "package.json");
    return JSON.parse(fs.readFileSync(file, "utf8")).version;
  } catch {
    return null;
  }
}

function parseArgs(argv) {
  const opts = {
    host: "127.0.0.1",
    port: 9300,
    corsOrigins: "*",
    pingIntervalMs: 25000,
    pingTimeoutMs: 20000,
    jwtSecret: "",
  };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${name} needs a value`);
    switch (name) {
      case "--host": opts.host = value; break;
      case "--port": opts.port = Number(value); break;
      case "--cors-origins": opts.corsOrigins = value; break;
      case "--ping-interval-ms": opts.pingIntervalMs = Number(value); break;
      case "--ping-timeout-ms": opts.pingTimeoutMs = Number(value); break;
      case "--jwt-secret": opts.jwtSecret = value; break;
      default: throw new Error(`unknown option ${name}`);
    }
    i++;
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    throw new Error("--port must be an integer 0..65535");
  }
  return opts;
}

function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`sio_node_server: ${err.message}\n`);
    process.exit(2);
  }
  const cors = opts.corsOrigins.trim() === "*"
    ? "*"
    : opts.corsOrigins.split(",").map((o) => o.trim()).filter(Boolean);

  const connectedOn = { polling: 0, websocket: 0 };
  let io = null;

  // Socket.IO takes the /socket.io/ requests; everything else reaches this handler
  const httpServer = http.createServer((req, res) => {
    const urlPath = (req.url || "").split("?", 1)[0];
    if (req.method !== "GET" || urlPath !== "/bench-stats") {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found");
      return;
    }
    const openByTransport = {};
    let open = 0;
    for (const s of Object.values(io.engine.clients)) {
      if (s.readyState !== "open") continue;
      open++;
      const name = s.upgraded || s.transport.name === "websocket" ? "websocket" : "polling";
      openByTransport[name] = (openByTransport[name] || 0) + 1;
    }
    const body = JSON.stringify({
      open_sessions: open,
      open_by_transport: openByTransport,
      connected_since_start_on: { ...connectedOn },
      identities: io.of("/").sockets.size,
    });
    res.writeHead(200, { "content-type": "application/json" });
    res.end(body);
  });
  httpServer.keepAliveTimeout = 5000;

  io = new Server(httpServer, {
    path: "/socket.io",
    pingInterval: opts.pingIntervalMs,
    pingTimeout: opts.pingTimeoutMs,
    maxHttpBufferSize: 1_000_000,
    perMessageDeflate: false,
    httpCompression: false,
    cors: { origin: cors },
    serveClient: false,
  });

  if (opts.jwtSecret) {
    const jwt = require("jsonwebtoken");
    io.use((socket, next) => {
      const token = socket.handshake.auth && socket.handshake.auth.token;
      if (!token) return next();
      jwt.verify(token, opts.jwtSecret, { algorithms: ["HS256"] }, (err, claims) => {
        if (err || !claims || typeof claims.sub !== "string") {
          const refusal = new Error("invalid token");
          refusal.data = { code: "AUTH_INVALID" };
          return next(refusal);
        }
        socket.data.userId = claims.sub;
        socket.data.userName = typeof claims.name === "string" ? claims.name : claims.sub;
        next();
      });
    });
  }

  io.on("connection", (socket) => {
    if (!socket.data.userId) {
      const suffix = crypto.randomBytes(6).toString("hex");
      socket.data.userId = `anon-${suffix}`;
      socket.data.userName = `Anonymous ${suffix.slice(0, 6)}`;
    }
    const transport = socket.conn.transport.name;
    connectedOn[transport] = (connectedOn[transport] || 0) + 1;

    socket.on("join", (payload, ack) => {
      const room = payload && typeof payload === "object" ? payload.room : undefined;
      if (typeof room !== "string" || !room) {
        if (typeof ack === "function") {
          ack({ ok: false, error: { code: "INVALID_PAYLOAD", message: "room" } });
        }
        return;
      }
      socket.join(room);
      if (typeof ack === "function") ack({ ok: true, room, role: "write" });
    });

    socket.on("broadcast", (payload, ack) => {
      const reply = typeof ack === "function" ? ack : () => {};
      if (!payload || typeof payload !== "object" || Array.isArray(payload)) {
        reply({ ok: false, error: { code: "INVALID_PAYLOAD", message: "not an object" } });
        return;
      }
      const room = payload.room;
      if (typeof room !== "string" || !socket.rooms.has(room)) {
        reply({ ok: false, error: { code: "NOT_JOINED", message: `not in ${JSON.stringify(room)}` } });
        return;
      }
      socket.to(room).emit("broadcast", {
        room,
        event: payload.event,
        data: payload.data,
        socketId: socket.id,
        userId: socket.data.userId,
        userName: socket.data.userName,
      });
      reply({ ok: true });
    });
  });

  httpServer.listen(opts.port, opts.host, () => {
    const info = {
      "socket.io": version("socket.io"),
      "engine.io": version("engine.io"),
      ws: version("ws"),
      node: process.version,
      jsonwebtoken: opts.jwtSecret ? version("jsonwebtoken") : null,
      ws_per_message_deflate: false,
      http_compression: false,
    };
    process.stderr.write(`sio_node_server: ${JSON.stringify(info)}\n`);
  });

  // nothing to save: stop at once, open connections and all
  process.on("SIGINT", () => process.exit(0));
  process.on("SIGTERM", () => process.exit(0));
}

main();
