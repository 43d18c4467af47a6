#!/usr/bin/env node
// Fan-out load generator for bench/fanout.py.
//
//   node bench/loadgen.js --target collabtrio|floor --url http://127.0.0.1:PORT --mode MODE [options]
//
// Modes (all print exactly one JSON result line on stdout; progress goes to stderr):
//   throughput  N subscribers + 1 publisher in one room; the publisher fires E events back to
//               back; reports deliveries/s from the first send to the last subscriber's E-th event.
//   latency     same room; the publisher sends RATE events/s for DURATION s, each stamped with
//               performance.now(); reports per-delivery latency percentiles (one clock: publisher
//               and subscribers live in this process).
//   idle        C connections over R rooms, all joined; prints {"phase":"ready",...} and holds
//               them until stdin closes or SIGINT/SIGTERM, then prints the result line.
//   storm       a connect storm: C clients over R rooms (client i in room i % R), each doing
//               the WebSocket handshake, the Socket.IO CONNECT (with a JWT in `auth.token`
//               when --jwt-secret is given) and a `join` with ack, all opened at once (or
//               --connect-concurrency at a time); reports the time until the last join was
//               acknowledged (connects/s), each client's time to joined (percentiles), and
//               the `presence` events the clients received: in all, and the time until
//               every client's latest one listed its whole room (collabtrio; the peers send
//               none). Tokens are signed before the clock starts; with --wait-go the storm
//               starts on a line on stdin.
//
// --latency-trace FILE (latency mode) writes one CSV line per event: seq, when it was sent and
// its slowest delivery, to look for periodic stalls.
//
// With --wait-go (throughput/latency) the generator prints {"phase":"ready"} once every client
// has joined and waits for a line on stdin before it starts sending, so a driver can snapshot
// the server's CPU counters at the right moment.
//
// Targets:
//   collabtrio  stock socket.io-client v4; join with ack, publish with
//               socket.emit("broadcast", {room, event: "tick", data}); subscribers listen to the
//               "broadcast" event. Also the target for bench/psio_server.py (python-socketio),
//               which implements the same two events.
//   floor       the `ws` package against bench/floor_server.py: first frame {"join": room}, the
//               server answers {"joined": room}; then frames {"room", "event": "tick", "data"}
//               that the floor relays verbatim. With --jwt-secret the join frame carries
//               {"join": room, "token": jwt}.
//
// --transports (collabtrio target; subscribers and publisher alike):
//   websocket   transports: ["websocket"] (the default): straight to WebSocket, no polling.
//   polling     transports: ["polling"]: HTTP long-polling only, never upgrades.
//   default     socket.io-client's own defaults: starts on long-polling and upgrades to
//               WebSocket; a client counts as ready only once it has joined *and* upgraded
//               (an upgrade error fails the run).
// The result line's `transports_at_go` / `transports_at_end` count the clients by the transport
// their Engine.IO socket was on when the measurement started and when it ended.
// --polling-http (polling and default transports): the HTTP layer under socket.io-client's
// long-polling transport. Everything above it (Engine.IO packets and payloads, the handshake,
// heartbeats, the upgrade, Socket.IO packets and acks) is socket.io-client's own either way.
//   xhr   socket.io-client's Node default (xmlhttprequest-ssl on node:http). With
//         --keep-alive each client gets its own keep-alive http.Agent, as a browser reuses
//         its connections; without it (agent: false) every poll and POST is a new TCP
//         connection.
//   raw   a minimal HTTP/1.1 client on node:net plugged in through engine.io-client's
//         transport option (as its built-in Fetch and XHR transports are): two keep-alive
//         connections per client, one for GETs and one for POSTs. It spends about half the
//         CPU of xhr per poll, so 100 polling clients leave Node room to spare.
"use strict";

const { performance, monitorEventLoopDelay } = require("node:perf_hooks");
const readline = require("node:readline");

// ---------------------------------------------------------------------------------------------
// arguments

// --transports NAME -> socket.io-client's `transports` option (null: leave the default)
const TRANSPORTS = { websocket: ["websocket"], polling: ["polling"], default: null };

function parseArgs(argv) {
  const opts = {
    target: null,
    url: null,
    mode: null,
    subscribers: 100,
    events: 2000,
    payloadBytes: 200,
    rate: 100,
    duration: 10,
    connections: 1000,
    rooms: 100,
    room: "bench-0",
    timeout: 60,
    connectConcurrency: 50,
    connectTimeout: 20,
    waitGo: false,
    latencyTrace: "",
    transports: "websocket",
    keepAlive: false,
    pollingHttp: "xhr",
    jwtSecret: "",
    settleTimeout: 30,
  };
  const numeric = new Set([
    "subscribers", "events", "payloadBytes", "rate", "duration", "connections", "rooms",
    "timeout", "connectConcurrency", "connectTimeout", "settleTimeout",
  ]);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) throw new Error(`unexpected argument ${arg}`);
    const key = arg.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in opts)) throw new Error(`unknown option ${arg}`);
    if (typeof opts[key] === "boolean") {
      opts[key] = true;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`${arg} needs a value`);
    opts[key] = numeric.has(key) ? Number(value) : value;
    if (numeric.has(key) && !Number.isFinite(opts[key])) throw new Error(`${arg}: not a number`);
  }
  if (!["collabtrio", "floor"].includes(opts.target)) throw new Error("--target collabtrio|floor");
  if (!["throughput", "latency", "idle", "storm"].includes(opts.mode)) {
    throw new Error("--mode throughput|latency|idle|storm");
  }
  if (!opts.url) throw new Error("--url http://127.0.0.1:PORT is required");
  if (!(opts.transports in TRANSPORTS)) throw new Error("--transports websocket|polling|default");
  if (!["xhr", "raw"].includes(opts.pollingHttp)) throw new Error("--polling-http xhr|raw");
  if (opts.target === "floor" && opts.transports !== "websocket") {
    throw new Error("the floor speaks plain WebSocket only: --transports websocket");
  }
  return opts;
}

function log(...args) {
  process.stderr.write(`loadgen: ${args.join(" ")}\n`);
}

function emitLine(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// ---------------------------------------------------------------------------------------------
// clients: both targets expose the same tiny interface
//   await client.ready        resolves once the client is a member of its room
//   client.onTick = (data) => {}
//   client.onClose = (reason) => {}
//   client.publish(data)
//   client.close()

function withTimeout(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${seconds}s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// engine.io-client's long-polling transport on a minimal keep-alive HTTP/1.1 client (see
// --polling-http raw above). Built on first use.
let RawPolling = null;

function rawPollingTransport() {
  if (RawPolling) return RawPolling;
  const net = require("node:net");
  // engine.io-client exports its Fetch transport, whose base class is the Polling transport
  const Polling = Object.getPrototypeOf(require("engine.io-client").Fetch);

  // One HTTP/1.1 connection, reused while the server keeps it open; one request at a time.
  class RawConnection {
    constructor(host, port) {
      this.host = host;
      this.port = port;
      this.sock = null;
      this.buf = null;
      this.cb = null;
    }

    request(method, path, body, cb) {
      if (!this.sock) this.open();
      this.cb = cb;
      const head = `${method} ${path} HTTP/1.1\r\nHost: ${this.host}:${this.port}\r\nAccept: */*\r\n`;
      if (body === undefined) {
        this.sock.write(head + "\r\n", "latin1");
      } else {
        const bytes = Buffer.from(body, "utf8");
        const extra = `Content-Type: text/plain;charset=UTF-8\r\nContent-Length: ${bytes.length}\r\n\r\n`;
        this.sock.write(Buffer.concat([Buffer.from(head + extra, "latin1"), bytes]));
      }
    }

    open() {
      const sock = net.connect({ host: this.host, port: this.port, noDelay: true });
      this.sock = sock;
      this.buf = Buffer.alloc(0);
      sock.on("data", (chunk) => {
        this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
        this.parse();
      });
      const gone = (err) => {
        if (this.sock !== sock) return;
        this.sock = null;
        const cb = this.cb;
        this.cb = null;
        if (cb) cb(err || new Error("connection closed by the server"));
      };
      sock.on("error", gone);
      sock.on("close", () => gone(null));
    }

    // a complete response in this.buf -> cb(null, status, body); else wait for more bytes
    parse() {
      const buf = this.buf;
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buf.toString("latin1", 0, end).toLowerCase();
      const status = Number(head.slice(9, 12));
      const start = end + 4;
      let body;
      let rest;
      const length = /\r\ncontent-length:\s*(\d+)/.exec(head);
      if (length) {
        const n = Number(length[1]);
        if (buf.length < start + n) return;
        body = buf.toString("utf8", start, start + n);
        rest = buf.subarray(start + n);
      } else if (/\r\ntransfer-encoding:\s*chunked/.test(head)) {
        const parts = [];
        let i = start;
        for (;;) {
          const eol = buf.indexOf("\r\n", i);
          if (eol < 0) return;
          const size = parseInt(buf.toString("latin1", i, eol), 16);
          if (size === 0) {
            if (buf.length < eol + 4) return; // no trailers: "0\r\n\r\n"
            rest = buf.subarray(eol + 4);
            break;
          }
          if (buf.length < eol + 2 + size + 2) return;
          parts.push(buf.subarray(eol + 2, eol + 2 + size));
          i = eol + 2 + size + 2;
        }
        body = Buffer.concat(parts).toString("utf8");
      } else {
        const cb = this.cb;
        this.cb = null;
        this.close();
        if (cb) cb(new Error("response without Content-Length or chunked encoding"));
        return;
      }
      this.buf = rest;
      const cb = this.cb;
      this.cb = null;
      if (/\r\nconnection:\s*close/.test(head)) this.close();
      if (cb) cb(null, status, body);
    }

    close() {
      const sock = this.sock;
      this.sock = null;
      if (sock) sock.destroy();
    }
  }

  RawPolling = class extends Polling {
    connections() {
      if (!this.getConn) {
        const port = Number(this.opts.port) || (this.opts.secure ? 443 : 80);
        this.getConn = new RawConnection(this.opts.hostname, port);
        this.postConn = new RawConnection(this.opts.hostname, port);
      }
    }

    path() {
      const uri = this.uri();
      return uri.slice(uri.indexOf("/", uri.indexOf("//") + 2));
    }

    doPoll() {
      this.connections();
      this.getConn.request("GET", this.path(), undefined, (err, status, body) => {
        if (err || status !== 200) return this.onError("raw poll error", err || status);
        this.onData(body);
      });
    }

    doWrite(data, fn) {
      this.connections();
      this.postConn.request("POST", this.path(), data, (err, status) => {
        if (err || status !== 200) return this.onError("raw post error", err || status);
        fn();
      });
    }

    closeConnections() {
      if (this.getConn) {
        this.getConn.close();
        this.postConn.close();
      }
    }

    // upgraded: this transport is done, and so are its connections
    pause(onPause) {
      super.pause(() => {
        this.closeConnections();
        onPause();
      });
    }

    onClose(details) {
      this.closeConnections();
      super.onClose(details);
    }
  };
  return RawPolling;
}

class CollabtrioClient {
  constructor(url, room, transports = "websocket", keepAlive = false, pollingHttp = "xhr", token = null) {
    const { io } = require("socket.io-client");
    this.room = room;
    this.onTick = null;
    this.onClose = null;
    this.onPresence = null;
    this.onJoined = null;
    this.closed = false;
    const ioOpts = { forceNew: true, reconnection: false };
    if (token) ioOpts.auth = { token };
    if (TRANSPORTS[transports]) ioOpts.transports = TRANSPORTS[transports];
    if (pollingHttp === "raw" && transports !== "websocket") {
      // as implementations rather than names (engine.io-client takes one or the other)
      const impl = { polling: rawPollingTransport(), websocket: require("engine.io-client").NodeWebSocket };
      ioOpts.transports = (ioOpts.transports || ["polling", "websocket"]).map((name) => impl[name]);
    } else if (keepAlive && transports !== "websocket") {
      ioOpts.agent = new (require("node:http").Agent)({ keepAlive: true });
    }
    this.socket = io(url, ioOpts);
    const engine = this.socket.io.engine;
    // long-polling GETs answered (the polling transport's "pollComplete"), until an upgrade
    this.polls = 0;
    if (engine.transport && engine.transport.name === "polling") {
      engine.transport.on("pollComplete", () => this.polls++);
    }
    if (ioOpts.agent) {
      // upgraded: the agent's idle keep-alive connections (from polling) are done
      engine.once("upgrade", () => ioOpts.agent.destroy());
    }
    // with the default transports, ready also means "upgraded to WebSocket"
    const upgraded = transports !== "default" ? Promise.resolve() : new Promise((resolve, reject) => {
      if (engine.transport && engine.transport.name === "websocket") return resolve();
      engine.once("upgrade", () => resolve());
      engine.once("upgradeError", (err) => reject(new Error(`upgrade failed: ${err.message}`)));
    });
    this.socket.on("broadcast", (msg) => {
      if (this.onTick && msg && msg.event === "tick") this.onTick(msg.data);
    });
    this.socket.on("presence", (msg) => {
      if (this.onPresence) this.onPresence(msg);
    });
    this.socket.on("disconnect", (reason) => {
      this.closed = true;
      if (this.onClose) this.onClose(reason);
    });
    const joined = new Promise((resolve, reject) => {
      this.socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message}`)));
      this.socket.once("connect", () => {
        this.socket.emit("join", { room }, (ack) => {
          if (ack && ack.ok) {
            this.joinAck = ack;
            // at once, not in a .then: frames read in one chunk are handled back to back
            if (this.onJoined) this.onJoined(ack);
            resolve();
          }
          else reject(new Error(`join refused: ${JSON.stringify(ack)}`));
        });
      });
    });
    this.ready = Promise.all([joined, upgraded]);
  }

  transport() {
    const engine = this.socket.io.engine;
    return engine && engine.transport ? engine.transport.name : "closed";
  }

  pollCount() {
    return this.polls;
  }

  publish(data) {
    this.socket.emit("broadcast", { room: this.room, event: "tick", data });
  }

  close() {
    this.socket.disconnect();
  }
}

class FloorClient {
  constructor(url, room, token = null) {
    const WebSocket = require("ws");
    this.room = room;
    this.onTick = null;
    this.onClose = null;
    this.onPresence = null;
    this.closed = false;
    this.ws = new WebSocket(url.replace(/^http/, "ws"), { perMessageDeflate: false });
    const hello = token ? { join: room, token } : { join: room };
    this.ready = new Promise((resolve, reject) => {
      let joined = false;
      this.ws.on("open", () => this.ws.send(JSON.stringify(hello)));
      this.ws.on("error", (err) => {
        if (!joined) reject(err);
      });
      this.ws.on("message", (raw, isBinary) => {
        if (isBinary) return;
        const msg = JSON.parse(raw.toString());
        if (msg.event === "tick") {
          if (this.onTick) this.onTick(msg.data);
        } else if (!joined && msg.joined === room) {
          joined = true;
          resolve();
        }
      });
      this.ws.on("close", (code, reason) => {
        this.closed = true;
        if (!joined) reject(new Error(`closed before joining: ${code} ${reason}`));
        if (this.onClose) this.onClose(`close ${code}`);
      });
    });
  }

  publish(data) {
    this.ws.send(JSON.stringify({ room: this.room, event: "tick", data }));
  }

  close() {
    this.ws.close();
  }

  transport() {
    return "websocket";
  }

  pollCount() {
    return 0;
  }
}

function makeClient(opts, room, token = null) {
  return opts.target === "collabtrio"
    ? new CollabtrioClient(opts.url, room, opts.transports, opts.keepAlive, opts.pollingHttp, token)
    : new FloorClient(opts.url, room, token);
}

// Open `rooms.length` clients (one per entry, joined to that room), `concurrency` at a time;
// tokens[i], if given, is client i's JWT; onCreated(i, client) runs as each client is made.
async function openClients(opts, rooms, concurrency = opts.connectConcurrency, tokens = null,
  onCreated = null) {
  const clients = new Array(rooms.length);
  let next = 0;
  async function worker() {
    while (next < rooms.length) {
      const i = next++;
      const client = makeClient(opts, rooms[i], tokens ? tokens[i] : null);
      clients[i] = client;
      if (onCreated) onCreated(i, client);
      await withTimeout(client.ready, opts.connectTimeout, `client ${i} join ${rooms[i]}`);
    }
  }
  const workers = [];
  for (let w = 0; w < Math.min(concurrency, rooms.length); w++) workers.push(worker());
  try {
    await Promise.all(workers);
  } catch (err) {
    closeAll(clients);
    throw err;
  }
  return clients;
}

function closeAll(clients) {
  for (const c of clients) {
    if (c) {
      try {
        c.close();
      } catch (_) {
        // already gone
      }
    }
  }
}

// A ~payloadBytes JSON object: JSON.stringify(data).length is payloadBytes for a 4-digit seq
// and a typical performance.now() value (the exact size varies by a few bytes).
function makePayloadFactory(payloadBytes) {
  const probe = JSON.stringify({ seq: 1000, t: 12345.678901234567, pad: "" }).length;
  const pad = "x".repeat(Math.max(0, payloadBytes - probe));
  return (seq) => ({ seq, t: performance.now(), pad });
}

function waitForGo(opts, extra) {
  if (!opts.waitGo) return Promise.resolve();
  emitLine({ phase: "ready", ...extra });
  return new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin });
    const done = () => {
      rl.close();
      resolve();
    };
    rl.once("line", done);
    rl.once("close", done);
  });
}

function countPolls(clients) {
  let n = 0;
  for (const c of clients) if (c) n += c.pollCount();
  return n;
}

// {transport name: clients on it}
function countTransports(clients) {
  const counts = {};
  for (const c of clients) {
    const name = c ? c.transport() : "missing";
    counts[name] = (counts[name] || 0) + 1;
  }
  return counts;
}

function summarize(sorted) {
  const n = sorted.length;
  if (n === 0) return { count: 0 };
  const pct = (p) => sorted[Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += sorted[i];
  const r3 = (x) => Math.round(x * 1000) / 1000;
  return {
    count: n,
    min_ms: r3(sorted[0]),
    mean_ms: r3(sum / n),
    p50_ms: r3(pct(50)),
    p90_ms: r3(pct(90)),
    p99_ms: r3(pct(99)),
    p999_ms: r3(pct(99.9)),
    max_ms: r3(sorted[n - 1]),
  };
}

// ---------------------------------------------------------------------------------------------
// modes

async function throughput(opts) {
  const N = opts.subscribers;
  const E = opts.events;
  const rooms = new Array(N + 1).fill(opts.room);
  const setupStart = performance.now();
  const clients = await openClients(opts, rooms);
  const setupMs = performance.now() - setupStart;
  const publisher = clients[N];
  const subscribers = clients.slice(0, N);

  const counts = new Uint32Array(N);
  let delivered = 0;
  let outOfOrder = 0;
  let finished = 0;
  let echoes = 0;
  let disconnects = 0;
  let lastDelivery = 0;
  let resolveDone;
  const done = new Promise((resolve) => (resolveDone = resolve));

  subscribers.forEach((client, i) => {
    client.onTick = (data) => {
      if (counts[i] !== data.seq) outOfOrder++;
      counts[i]++;
      delivered++;
      lastDelivery = performance.now();
      if (counts[i] === E) {
        finished++;
        if (finished === N) resolveDone("complete");
      }
    };
    client.onClose = () => {
      disconnects++;
    };
  });
  publisher.onTick = () => echoes++;
  publisher.onClose = () => disconnects++;

  await waitForGo(opts, { clients: clients.length });
  const transportsAtGo = countTransports(clients);
  const cpu0 = process.cpuUsage();
  const makePayload = makePayloadFactory(opts.payloadBytes);
  const payloadBytes = JSON.stringify(makePayload(Math.floor(E / 2))).length;
  const t0 = performance.now();
  for (let seq = 0; seq < E; seq++) publisher.publish(makePayload(seq));
  const sendMs = performance.now() - t0;
  let timer;
  const outcome = await Promise.race([
    done,
    new Promise((resolve) => (timer = setTimeout(() => resolve("timeout"), opts.timeout * 1000))),
  ]);
  clearTimeout(timer);
  const end = outcome === "complete" ? lastDelivery : lastDelivery || performance.now();
  const elapsedMs = Math.max(end - t0, 1e-3);
  const cpu = process.cpuUsage(cpu0);

  const expected = E * N;
  const result = {
    mode: "throughput",
    target: opts.target,
    subscribers: N,
    events: E,
    payload_bytes: payloadBytes,
    setup_ms: Math.round(setupMs),
    send_ms: Math.round(sendMs * 1000) / 1000,
    elapsed_ms: Math.round(elapsedMs * 1000) / 1000,
    delivered,
    expected,
    losses: expected - delivered,
    deliveries_per_s: Math.round(delivered / (elapsedMs / 1000)),
    timed_out: outcome === "timeout",
    subscribers_complete: finished,
    out_of_order: outOfOrder,
    echoes_to_sender: echoes,
    disconnects,
    node_cpu_s: Math.round(((cpu.user + cpu.system) / 1e6) * 1e6) / 1e6,
    transports: opts.transports,
    transports_at_go: transportsAtGo,
    transports_at_end: countTransports(clients),
  };
  return { result, clients };
}

async function latency(opts) {
  const N = opts.subscribers;
  const total = Math.round(opts.rate * opts.duration);
  const rooms = new Array(N + 1).fill(opts.room);
  const clients = await openClients(opts, rooms);
  const publisher = clients[N];
  const subscribers = clients.slice(0, N);

  const samples = new Float64Array(total * N);
  // Per event: when it was sent (ms after the first send) and its slowest delivery, for
  // --latency-trace (spotting periodic stalls).
  const sentAt = new Float64Array(total);
  const worst = new Float64Array(total);
  let delivered = 0;
  let echoes = 0;
  let disconnects = 0;
  let resolveDone;
  const done = new Promise((resolve) => (resolveDone = resolve));
  subscribers.forEach((client) => {
    client.onTick = (data) => {
      const now = performance.now();
      const ms = now - data.t;
      if (delivered < samples.length) samples[delivered] = ms;
      if (data.seq < total && ms > worst[data.seq]) worst[data.seq] = ms;
      delivered++;
      if (delivered === samples.length) resolveDone("complete");
    };
    client.onClose = () => disconnects++;
  });
  publisher.onTick = () => echoes++;
  publisher.onClose = () => disconnects++;

  await waitForGo(opts, { clients: clients.length });
  const transportsAtGo = countTransports(clients);
  const pollsAtGo = countPolls(clients);
  const cpu0 = process.cpuUsage();
  // how late this process's event loop ran a 5 ms timer: a busy loop delays deliveries too
  const loopDelay = monitorEventLoopDelay({ resolution: 5 });
  loopDelay.enable();
  const makePayload = makePayloadFactory(opts.payloadBytes);
  const intervalMs = 1000 / opts.rate;
  const start = performance.now();
  let sent = 0;
  // Send on schedule: at each wake-up, send every event whose slot start + k*interval has
  // passed.  A late timer therefore sends a small burst rather than silently lowering the rate.
  await new Promise((resolve) => {
    const tick = () => {
      const now = performance.now();
      while (sent < total && start + sent * intervalMs <= now) {
        sentAt[sent] = performance.now() - start;
        publisher.publish(makePayload(sent++));
      }
      if (sent >= total) return resolve();
      setTimeout(tick, Math.max(0, start + sent * intervalMs - performance.now()));
    };
    tick();
  });
  const sendSpanMs = performance.now() - start;
  let timer;
  const outcome = await Promise.race([
    done,
    new Promise((resolve) => (timer = setTimeout(() => resolve("timeout"), 5000))),
  ]);
  clearTimeout(timer);
  const cpu = process.cpuUsage(cpu0);
  loopDelay.disable();
  const transportsAtEnd = countTransports(clients);
  const polls = countPolls(clients) - pollsAtGo;

  if (opts.latencyTrace) {
    const lines = ["seq,sent_ms,worst_latency_ms"];
    for (let i = 0; i < sent; i++) lines.push(`${i},${sentAt[i].toFixed(3)},${worst[i].toFixed(3)}`);
    require("node:fs").writeFileSync(opts.latencyTrace, lines.join("\n") + "\n");
  }
  const n = Math.min(delivered, samples.length);
  const sorted = samples.slice(0, n).sort();
  const result = {
    mode: "latency",
    target: opts.target,
    subscribers: N,
    rate_per_s: opts.rate,
    duration_s: opts.duration,
    events: total,
    send_span_ms: Math.round(sendSpanMs),
    expected: total * N,
    delivered,
    losses: total * N - delivered,
    timed_out: outcome === "timeout",
    echoes_to_sender: echoes,
    disconnects,
    node_cpu_s: Math.round(((cpu.user + cpu.system) / 1e6) * 1e6) / 1e6,
    transports: opts.transports,
    transports_at_go: transportsAtGo,
    transports_at_end: transportsAtEnd,
    // long-polling GETs answered from the first send to the end (publisher's included)
    polls,
    // event-loop delay beyond the 5 ms timer period, ms (perf_hooks histogram, ns)
    loop_delay_p50_ms: Math.max(0, Math.round((loopDelay.percentile(50) / 1e6 - 5) * 1000) / 1000),
    loop_delay_p99_ms: Math.max(0, Math.round((loopDelay.percentile(99) / 1e6 - 5) * 1000) / 1000),
    loop_delay_max_ms: Math.max(0, Math.round((loopDelay.max / 1e6 - 5) * 1000) / 1000),
    ...summarize(sorted),
  };
  return { result, clients };
}

async function idle(opts) {
  const C = opts.connections;
  const R = opts.rooms;
  const rooms = Array.from({ length: C }, (_, i) => `${opts.room}-idle-${i % R}`);
  const start = performance.now();
  const clients = await openClients(opts, rooms);
  const setupMs = performance.now() - start;
  let disconnects = 0;
  for (const c of clients) c.onClose = () => disconnects++;
  emitLine({ phase: "ready", mode: "idle", connections: C, rooms: R, setup_ms: Math.round(setupMs) });

  await new Promise((resolve) => {
    process.stdin.resume();
    process.stdin.on("end", resolve);
    process.stdin.on("close", resolve);
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  const heldMs = performance.now() - start - setupMs;
  const stillOpen = clients.filter((c) => !c.closed).length;
  const result = {
    mode: "idle",
    target: opts.target,
    connections: C,
    rooms: R,
    setup_ms: Math.round(setupMs),
    held_ms: Math.round(heldMs),
    still_open: stillOpen,
    disconnects,
    transports: opts.transports,
    transports_at_end: countTransports(clients),
  };
  return { result, clients };
}


// An HS256 JWT for user `sub`, signed with jsonwebtoken (what a Node back end would use).
function signToken(secret, sub) {
  const jwt = require("jsonwebtoken");
  return jwt.sign({ sub, name: `Storm ${sub}` }, secret, { algorithm: "HS256", expiresIn: 3600 });
}

async function storm(opts) {
  const C = opts.connections;
  const R = opts.rooms;
  const rooms = Array.from({ length: C }, (_, i) => `${opts.room}-storm-${i % R}`);
  const perRoom = rooms.reduce((m, r) => m.set(r, (m.get(r) || 0) + 1), new Map());
  const tokens = opts.jwtSecret ? rooms.map((_, i) => signToken(opts.jwtSecret, `storm-user-${i}`)) : null;
  // the storm's default is everyone at once; --connect-concurrency N (< C) limits it
  const concurrency = opts.connectConcurrency >= 1 && opts.connectConcurrency < C
    && process.argv.includes("--connect-concurrency") ? opts.connectConcurrency : C;
  await waitForGo(opts, { mode: "storm", connections: C, rooms: R });

  const joinedAt = new Float64Array(C);
  let presenceEvents = 0;
  let complete = 0; // clients whose latest presence (or join ack) lists their whole room
  const isComplete = new Uint8Array(C);
  let lastComplete = 0;
  const note = (i, count) => {
    const full = count === perRoom.get(rooms[i]) ? 1 : 0;
    if (full !== isComplete[i]) {
      complete += full ? 1 : -1;
      isComplete[i] = full;
    }
    if (complete === C) lastComplete = performance.now();
  };
  const start = performance.now();
  const created = new Float64Array(C);
  const clients = await openClients(opts, rooms, concurrency, tokens, (i, client) => {
    created[i] = performance.now();
    client.onPresence = (msg) => {
      presenceEvents++;
      if (msg && typeof msg.connections === "number") note(i, msg.connections);
    };
    client.onJoined = (ack) => {
      joinedAt[i] = performance.now();
      const p = ack.presence;
      if (p && typeof p.connections === "number") note(i, p.connections);
    };
    if (!(client instanceof CollabtrioClient)) {
      client.ready.then(() => { joinedAt[i] = performance.now(); }, () => {});
    }
  });
  const end = performance.now();
  const stormMs = end - start;
  const presenceAtJoined = presenceEvents;
  // collabtrio sends presence: wait (bounded) until every client's latest lists its whole room
  const hasPresence = clients.some((c) => c.joinAck && c.joinAck.presence);
  if (hasPresence && complete !== C) {
    const deadline = performance.now() + opts.settleTimeout * 1000;
    while (complete !== C && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  // and a quiet spell, to count presence events still on their way
  if (hasPresence) await new Promise((r) => setTimeout(r, 300));
  const times = Array.from(joinedAt, (t, i) => t - created[i]).sort((a, b) => a - b);
  const result = {
    mode: "storm",
    target: opts.target,
    connections: C,
    rooms: R,
    concurrency,
    jwt: Boolean(tokens),
    storm_ms: Math.round(stormMs * 10) / 10,
    connects_per_s: Math.round(C / (stormMs / 1000)),
    time_to_joined: summarize(times),
    presence_events_at_all_joined: presenceAtJoined,
    presence_events_total: hasPresence ? presenceEvents : null,
    presence_complete_ms: hasPresence
      ? (complete === C ? Math.round((lastComplete - start) * 10) / 10 : null)
      : null,
    presence_incomplete_clients: hasPresence ? C - complete : null,
    still_open: clients.filter((c) => !c.closed).length,
  };
  return { result, clients };
}

// ---------------------------------------------------------------------------------------------

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    log(err.message);
    process.exit(2);
  }
  const modes = { throughput, latency, idle, storm };
  try {
    // Each mode returns its result and its still-open clients; they are closed only after the
    // result line is out, so a driver's measurement window does not include the disconnects.
    const { result, clients } = await modes[opts.mode](opts);
    emitLine(result);
    closeAll(clients);
    // socket.io-client closes asynchronously; don't let a straggling handle keep us alive.
    setTimeout(() => process.exit(0), 200).unref();
    process.exitCode = 0;
  } catch (err) {
    emitLine({ mode: opts.mode, target: opts.target, error: String(err && err.message ? err.message : err) });
    log(err && err.stack ? err.stack : err);
    process.exit(1);
  }
}

main();
