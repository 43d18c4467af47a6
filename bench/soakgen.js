#!/usr/bin/env node
// Soak load generator for bench/soak.py: mixed, steady traffic until stdin closes.
//
//   node bench/soakgen.js --url http://127.0.0.1:PORT [options]
//
// Runs at once, until stdin closes (or SIGINT/SIGTERM):
//   members     --rooms R x --clients C stock socket.io-client connections (websocket), each
//               joined to its room PREFIX-r. Each sends an acked `op update` to its own entity
//               every --op-ms (after one `op add`), a `cursor` every --cursor-ms and a `chat`
//               about every --chat-ms, and counts what the room sends it. A member the server
//               disconnects reconnects by itself and rejoins with `since`.
//   publisher   (with --busy-bytes > 0) one more member of room 0 (the busy room) that sends a
//               `broadcast` of ~--busy-bytes every --busy-ms, so that a reader which stops
//               reading overflows its server-side queue within seconds, not minutes.
//   slow reader (unless --no-slow-reader) a raw Engine.IO/Socket.IO client on `ws` in room 0:
//               it joins (with `since` after the first time), reads for --slow-read-ms, then
//               stops reading its TCP socket for --slow-pause-ms, then reads again: it should
//               find the server's SLOW_CONSUMER error and a 1008 `slow-consumer` close, and
//               then reconnects, in a loop. It cannot see the drop while it is not reading,
//               hence the fixed pause.
//   churn       --churn N clients spread over the rooms that disconnect every --churn-min-ms to
//               --churn-max-ms (random), then connect again with a new session and rejoin with
//               `since`. They alternate between websocket and socket.io-client's default
//               transports (long-polling, then the upgrade), so both session kinds come and go.
//
// Prints {"phase":"ready",...} once every client has joined, then a cumulative
// {"phase":"stats",...} line every --stats-ms, and {"phase":"result",...} at the end
// (after waiting up to 5 s for outstanding acks). Progress and errors go to stderr.
"use strict";

const crypto = require("node:crypto");
const { performance } = require("node:perf_hooks");

function parseArgs(argv) {
  const opts = {
    url: null,
    rooms: 10,
    clients: 10,
    opMs: 500,
    cursorMs: 100,
    chatMs: 5000,
    busyBytes: 4096,
    busyMs: 20,
    slowReader: true,
    slowReadMs: 1000,
    slowPauseMs: 15000,
    churn: 10,
    churnMinMs: 2000,
    churnMaxMs: 6000,
    ackTimeoutMs: 10000,
    statsMs: 5000,
    connectTimeout: 30,
    prefix: "soak",
  };
  const numeric = new Set([
    "rooms", "clients", "opMs", "cursorMs", "chatMs", "busyBytes", "busyMs", "slowReadMs",
    "slowPauseMs", "churn", "churnMinMs", "churnMaxMs", "ackTimeoutMs", "statsMs",
    "connectTimeout",
  ]);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--no-slow-reader") {
      opts.slowReader = false;
      continue;
    }
    if (!arg.startsWith("--")) throw new Error(`unexpected argument ${arg}`);
    const key = arg.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in opts) || typeof opts[key] === "boolean") throw new Error(`unknown option ${arg}`);
    const value = argv[++i];
    if (value === undefined) throw new Error(`${arg} needs a value`);
    opts[key] = numeric.has(key) ? Number(value) : value;
    if (numeric.has(key) && !Number.isFinite(opts[key])) throw new Error(`${arg}: not a number`);
  }
  if (!opts.url) throw new Error("--url http://127.0.0.1:PORT is required");
  if (opts.rooms < 1 || opts.clients < 1) throw new Error("--rooms and --clients must be >= 1");
  return opts;
}

function log(...args) {
  process.stderr.write(`soakgen: ${args.join(" ")}\n`);
}

function emitLine(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// cumulative counters, printed in every stats line
const stats = {
  ops_sent: 0,
  ops_ok: 0,
  ops_failed: 0, // acked with ok: false
  ops_timeout: 0, // no ack within --ack-timeout-ms (connection still up)
  ops_lost: 0, // the connection closed before the ack came
  op_errors: {}, // code -> count
  cursors_sent: 0,
  chats_sent: 0,
  broadcasts_sent: 0,
  received: {}, // event name -> count, over every client
  joins: 0,
  joins_recovered: 0, // `since` replayed what was missed
  joins_full_state: 0, // a rejoin whose `since` was outside the history: the full state came
  join_errors: {},
  server_disconnects: 0, // members/publisher the server disconnected (they reconnect)
  disconnect_reasons: {},
  connect_errors: 0,
  churn_cycles: 0,
  churn_sessions: {}, // "first transport->transport when it left" -> count
  slow_cycles: 0,
  slow_dropped: 0, // the server closed the slow reader's connection during or after a pause
  slow_error_events: 0, // SLOW_CONSUMER `error` events it read before the close
  slow_closes: {}, // "code reason" -> count (1006: the TCP connection ended without a close frame)
  slow_not_dropped: 0, // pauses after which the connection was still open
  ack_ms: null, // op ack latency percentiles, in the result line only
  error_events: {}, // `error` events at ordinary clients, by code
  operation_errors: 0, // `operation-error` events (a refused event sent without an ack)
};

function bump(obj, key, n = 1) {
  obj[key] = (obj[key] || 0) + n;
}

function jitter(ms) {
  return ms * (0.5 + Math.random());
}

const allClients = [];
const ackMs = []; // every op's send-to-ack time (64k entries per 5 minutes: fine to keep)
let stopping = false;

// ---------------------------------------------------------------------------------------------
// members (also churn clients and the publisher): stock socket.io-client

class Member {
  constructor(opts, room, index, kind) {
    this.opts = opts;
    this.room = room;
    this.index = index;
    this.kind = kind; // "member" | "churn" | "publisher"
    this.entity = `${kind}-${index}`;
    this.lastSeq = null;
    this.added = false;
    this.joined = false;
    this.pending = 0;
    this.timers = [];
    this.socket = null;
    this.cycle = 0;
    this.everJoined = null;
    this.everJoinedPromise = new Promise((resolve) => (this.everJoined = resolve));
  }

  transportsForCycle() {
    // churn clients alternate: odd cycles start on long-polling and upgrade
    if (this.kind === "churn" && this.cycle % 2 === 1) return null;
    return ["websocket"];
  }

  open() {
    const { io } = require("socket.io-client");
    const ioOpts = { forceNew: true, reconnectionDelay: 200, reconnectionDelayMax: 2000 };
    const transports = this.transportsForCycle();
    if (transports) ioOpts.transports = transports;
    const socket = io(this.opts.url, ioOpts);
    this.socket = socket;
    socket.on("connect", () => this.join(socket));
    socket.on("connect_error", () => stats.connect_errors++);
    socket.on("disconnect", (reason) => {
      this.joined = false;
      if (socket !== this.socket || this.leaving) return;
      stats.server_disconnects++;
      bump(stats.disconnect_reasons, reason);
      // "io server disconnect" is the one case a stock client does not reconnect by itself
      if (reason === "io server disconnect" && !stopping) socket.connect();
    });
    socket.onAny((event, data) => {
      bump(stats.received, event);
      if (data && typeof data.seq === "number" && (event === "op" || event === "field" || event === "chat")) {
        this.lastSeq = Math.max(this.lastSeq ?? 0, data.seq);
      }
      if (event === "error") bump(stats.error_events, (data && data.code) || "?");
      if (event === "operation-error") stats.operation_errors++;
    });
  }

  join(socket) {
    const payload = this.lastSeq === null ? { room: this.room } : { room: this.room, since: this.lastSeq };
    const rejoin = this.lastSeq !== null;
    socket.timeout(this.opts.ackTimeoutMs).emit("join", payload, (err, ack) => {
      if (socket !== this.socket) return;
      if (err) return bump(stats.join_errors, "timeout");
      if (!ack || !ack.ok) return bump(stats.join_errors, (ack && ack.error && ack.error.code) || "?");
      stats.joins++;
      if (ack.recovered) stats.joins_recovered++;
      else if (rejoin) stats.joins_full_state++;
      if (typeof ack.seq === "number") this.lastSeq = Math.max(this.lastSeq ?? 0, ack.seq);
      this.joined = true;
      this.everJoined();
      if (!this.added) this.sendOp("add");
    });
  }

  startTraffic() {
    const o = this.opts;
    const every = (ms, fn) => {
      // a random phase, so that clients do not send in lockstep
      const t = setTimeout(() => {
        fn();
        this.timers.push(setInterval(fn, ms));
      }, Math.random() * ms);
      this.timers.push(t);
    };
    if (this.kind === "publisher") {
      const pad = "x".repeat(Math.max(0, o.busyBytes - 40));
      every(o.busyMs, () => this.broadcast(pad));
      return;
    }
    every(o.opMs, () => this.added && this.sendOp("update"));
    every(o.cursorMs, () => this.cursor());
    every(o.chatMs, () => Math.random() < 0.5 && this.chat()); // some chat: about one per 2 x chatMs
    if (this.kind === "churn") this.scheduleChurn();
  }

  stopTraffic() {
    for (const t of this.timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this.timers = [];
  }

  sendOp(kind) {
    if (!this.joined || stopping) return;
    const socket = this.socket;
    const payload = {
      room: this.room,
      operationId: crypto.randomUUID(),
      op: kind,
      collection: "shapes",
      id: this.entity,
      // update: a merge patch of two fields, so the document stays the same size
      data: { x: Math.round(Math.random() * 1000), y: Math.round(Math.random() * 1000) },
    };
    stats.ops_sent++;
    this.pending++;
    let done = false;
    const finish = () => {
      if (done) return false;
      done = true;
      this.pending--;
      socket.off("disconnect", onGone);
      return true;
    };
    // an ack lost to a closed connection is counted apart from a timeout
    const onGone = () => finish() && stats.ops_lost++;
    socket.once("disconnect", onGone);
    const sentAt = performance.now();
    socket.timeout(this.opts.ackTimeoutMs).emit("op", payload, (err, ack) => {
      if (!finish()) return;
      if (err) {
        stats.ops_timeout++;
        return;
      }
      if (ack && ack.ok) {
        stats.ops_ok++;
        ackMs.push(performance.now() - sentAt);
        if (kind === "add") this.added = true;
        if (typeof ack.seq === "number") this.lastSeq = Math.max(this.lastSeq ?? 0, ack.seq);
      } else {
        const code = (ack && ack.error && ack.error.code) || "?";
        // a churn client's add may have been stored just before it left: the entity exists
        if (kind === "add" && code === "DUPLICATE") {
          this.added = true;
          stats.ops_ok++;
          return;
        }
        stats.ops_failed++;
        bump(stats.op_errors, `${kind}:${code}`);
      }
    });
  }

  cursor() {
    if (!this.joined || stopping) return;
    stats.cursors_sent++;
    this.socket.emit("cursor", { room: this.room, cursor: { x: Math.random() * 1000, y: Math.random() * 1000 } });
  }

  chat() {
    if (!this.joined || stopping) return;
    stats.chats_sent++;
    this.socket.emit("chat", { room: this.room, text: `hello from ${this.entity}`, clientId: crypto.randomUUID() });
  }

  broadcast(pad) {
    if (!this.joined || stopping) return;
    stats.broadcasts_sent++;
    this.socket.emit("broadcast", { room: this.room, event: "busy", data: { t: Date.now(), pad } });
  }

  scheduleChurn() {
    const o = this.opts;
    const wait = o.churnMinMs + Math.random() * (o.churnMaxMs - o.churnMinMs);
    this.timers.push(setTimeout(() => this.churnOnce(), wait));
  }

  async churnOnce() {
    if (stopping) return;
    this.stopTraffic();
    // let outstanding acks arrive, so that churn does not count as failed ops
    const until = performance.now() + 2000;
    while (this.pending > 0 && performance.now() < until) await sleep(20);
    const engine = this.socket.io.engine;
    const first = this.transportsForCycle() ? "websocket" : "polling";
    bump(stats.churn_sessions, `${first}->${engine && engine.transport ? engine.transport.name : "closed"}`);
    this.leaving = true;
    this.socket.disconnect();
    this.leaving = false;
    this.joined = false;
    stats.churn_cycles++;
    await sleep(100 + Math.random() * 400);
    if (stopping) return;
    this.cycle++;
    this.open();
    this.startTraffic();
  }

  close() {
    this.stopTraffic();
    this.leaving = true;
    if (this.socket) this.socket.disconnect();
  }

  connected() {
    return this.joined ? 1 : 0;
  }
}

function summarize(sorted) {
  const n = sorted.length;
  if (n === 0) return { count: 0 };
  const pct = (p) => Math.round(sorted[Math.min(n - 1, Math.ceil((p / 100) * n) - 1)] * 10) / 10;
  return { count: n, p50: pct(50), p90: pct(90), p99: pct(99), max: Math.round(sorted[n - 1] * 10) / 10 };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------------
// the slow reader: Engine.IO v4 + Socket.IO v5 by hand on `ws`, so that it can stop reading
// its TCP socket (socket.io-client always reads)

class SlowReader {
  constructor(opts, room) {
    this.opts = opts;
    this.room = room;
    this.lastSeq = null;
    this.ws = null;
    this.joined = false;
    this.timer = null;
  }

  connect() {
    if (stopping) return;
    const WebSocket = require("ws");
    const url = `${this.opts.url.replace(/^http/, "ws")}/socket.io/?EIO=4&transport=websocket`;
    const ws = new WebSocket(url, { perMessageDeflate: false });
    this.ws = ws;
    this.joined = false;
    this.paused = false;
    this.closing = false;
    ws.on("message", (raw, isBinary) => {
      if (isBinary) return;
      const text = raw.toString();
      if (text[0] === "0") {
        ws.send("40"); // Socket.IO CONNECT to "/"
      } else if (text === "2") {
        ws.send("3"); // pong (only while it reads, as a stuck client would)
      } else if (text.startsWith("40")) {
        const join = this.lastSeq === null ? { room: this.room } : { room: this.room, since: this.lastSeq };
        ws.send(`421${JSON.stringify(["join", join])}`);
      } else if (text.startsWith("431")) {
        const [ack] = JSON.parse(text.slice(3));
        if (!ack || !ack.ok) {
          bump(stats.join_errors, `slow:${(ack && ack.error && ack.error.code) || "?"}`);
          return;
        }
        stats.joins++;
        if (ack.recovered) stats.joins_recovered++;
        else if (this.lastSeq !== null) stats.joins_full_state++;
        if (typeof ack.seq === "number") this.lastSeq = Math.max(this.lastSeq ?? 0, ack.seq);
        this.joined = true;
        stats.slow_cycles++;
        this.timer = setTimeout(() => this.pause(), this.opts.slowReadMs);
      } else if (text.startsWith("42")) {
        const [event, data] = JSON.parse(text.slice(2));
        bump(stats.received, `slow:${event}`);
        if (data && typeof data.seq === "number") this.lastSeq = Math.max(this.lastSeq ?? 0, data.seq);
        if (event === "error" && data && data.code === "SLOW_CONSUMER") stats.slow_error_events++;
      }
    });
    ws.on("error", (err) => bump(stats.slow_closes, `error ${err.code || err.message}`));
    ws.on("close", (code, reason) => {
      clearTimeout(this.timer);
      const why = reason.toString();
      bump(stats.slow_closes, `${code} ${why}`.trim());
      // a stuck reader cannot tell why; the server log says (soak.py counts its lines)
      if (this.paused && !this.closing) stats.slow_dropped++;
      this.joined = false;
      this.ws = null;
      if (!stopping) this.timer = setTimeout(() => this.connect(), 200);
    });
  }

  pause() {
    const sock = this.ws && this.ws._socket;
    if (!sock) return;
    // stop reading: the kernel's buffers fill, then the server's queue for this client
    sock.pause();
    this.paused = true;
    this.timer = setTimeout(() => this.resume(), this.opts.slowPauseMs);
  }

  resume() {
    const ws = this.ws;
    if (!ws || !ws._socket) return;
    ws._socket.resume();
    // still open after draining what was buffered: the pause was not long enough to overflow
    this.timer = setTimeout(() => {
      if (this.ws !== ws) return;
      stats.slow_not_dropped++;
      this.closing = true;
      ws.close();
    }, 3000);
  }

  close() {
    clearTimeout(this.timer);
    if (this.ws) this.ws.terminate();
  }

  connected() {
    return this.joined ? 1 : 0;
  }
}

// ---------------------------------------------------------------------------------------------

function snapshot(phase, t0) {
  let connected = 0;
  let pending = 0;
  for (const c of allClients) {
    connected += c.connected();
    pending += c.pending || 0;
  }
  return { phase, t_s: Math.round((performance.now() - t0) / 100) / 10, connected, pending_acks: pending, ...stats };
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    log(err.message);
    process.exit(2);
  }
  const rooms = Array.from({ length: opts.rooms }, (_, r) => `${opts.prefix}-${r}`);
  const members = [];
  for (let r = 0; r < opts.rooms; r++) {
    for (let c = 0; c < opts.clients; c++) members.push(new Member(opts, rooms[r], r * opts.clients + c, "member"));
  }
  for (let i = 0; i < opts.churn; i++) members.push(new Member(opts, rooms[i % opts.rooms], i, "churn"));
  if (opts.busyBytes > 0) members.push(new Member(opts, rooms[0], 0, "publisher"));
  allClients.push(...members);

  const t0 = performance.now();
  // open in small batches: the server limits sessions that have not CONNECTed yet per address
  for (let i = 0; i < members.length; i += 25) {
    const batch = members.slice(i, i + 25);
    for (const m of batch) m.open();
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`clients did not join within ${opts.connectTimeout}s`)), opts.connectTimeout * 1000);
    });
    try {
      await Promise.race([Promise.all(batch.map((m) => m.everJoinedPromise)), timeout]);
    } catch (err) {
      emitLine({ phase: "result", error: err.message });
      process.exit(1);
    } finally {
      clearTimeout(timer);
    }
  }
  for (const m of members) m.startTraffic();
  if (opts.slowReader) {
    const slow = new SlowReader(opts, rooms[0]);
    allClients.push(slow);
    slow.connect();
  }
  emitLine({ phase: "ready", clients: members.length, setup_ms: Math.round(performance.now() - t0) });

  const statsTimer = setInterval(() => emitLine(snapshot("stats", t0)), opts.statsMs);
  await new Promise((resolve) => {
    process.stdin.resume();
    process.stdin.on("end", resolve);
    process.stdin.on("close", resolve);
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  stopping = true;
  clearInterval(statsTimer);
  for (const c of allClients) if (c.stopTraffic) c.stopTraffic();
  const until = performance.now() + 5000;
  const pending = () => allClients.reduce((n, c) => n + (c.pending || 0), 0);
  while (pending() > 0 && performance.now() < until) await sleep(50);
  stats.ack_ms = summarize(ackMs.sort((a, b) => a - b));
  emitLine(snapshot("result", t0));
  for (const c of allClients) c.close();
  setTimeout(() => process.exit(0), 300).unref();
}

main().catch((err) => {
  emitLine({ phase: "result", error: String(err && err.message ? err.message : err) });
  log(err && err.stack ? err.stack : err);
  process.exit(1);
});
