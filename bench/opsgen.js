#!/usr/bin/env node
// Persistence load generator for bench/ops.py and bench/fields.py.
//
//   node bench/opsgen.js --url http://127.0.0.1:PORT --mode ops|fields [options]
//
// Stock socket.io-client v4, websocket transport only, anonymous. Every client joins its room
// with an ack before anything is measured. Prints exactly one JSON result line on stdout
// (progress and errors go to stderr). With --wait-go it first prints {"phase":"ready"} once
// every client has joined (and the fields entity exists) and waits for a line on stdin, so a
// driver can snapshot CPU counters at the right moment.
//
// Modes:
//   ops     --clients C clients, each in its own room (PREFIX-ops-i). Each keeps --window W
//           `op add` operations outstanding (a new one goes out as soon as one is acked) until
//           it has sent --ops N. Each op adds a new id to collection "items" with ~--payload-bytes
//           of JSON data. The ack arrives only once the transaction committed. Reports acked
//           ops/s = acks / (last ack - first send) and the ack latency percentiles.
//   fields  --clients C clients in ONE room (PREFIX-fields). Client 0 first creates the entity
//           items/doc with an `op add`. Then every client sends --writes N `field` writes at
//           --rate R per second on a fixed schedule (a late timer sends a catch-up burst; clients
//           are staggered by 1/(R*C) s). Write k of client i goes to path ["f", "p<(i+k)%P>"],
//           P = --paths. Every write asks for an ack (sent once the flush committed). Reports the
//           send-to-ack percentiles and the `field` events the members received.
"use strict";

const { performance } = require("node:perf_hooks");
const readline = require("node:readline");

function parseArgs(argv) {
  const opts = {
    url: null,
    mode: null,
    clients: 10,
    ops: 2000,
    window: 64,
    payloadBytes: 100,
    writes: 1000,
    rate: 200,
    paths: 10,
    prefix: "bench",
    timeout: 300,
    settle: 1.0,
    connectTimeout: 20,
    waitGo: false,
  };
  const numeric = new Set([
    "clients", "ops", "window", "payloadBytes", "writes", "rate", "paths", "timeout", "settle",
    "connectTimeout",
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
  if (!["ops", "fields"].includes(opts.mode)) throw new Error("--mode ops|fields");
  if (!opts.url) throw new Error("--url http://127.0.0.1:PORT is required");
  return opts;
}

function log(...args) {
  process.stderr.write(`opsgen: ${args.join(" ")}\n`);
}

function emitLine(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function withTimeout(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${seconds}s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// One socket.io-client connection joined to `room`. `ready` resolves after the join ack.
class Client {
  constructor(url, room) {
    const { io } = require("socket.io-client");
    this.room = room;
    this.disconnects = 0;
    this.socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
    this.socket.on("disconnect", () => this.disconnects++);
    this.ready = new Promise((resolve, reject) => {
      this.socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message}`)));
      this.socket.once("connect", () => {
        this.socket.emit("join", { room }, (ack) => {
          if (ack && ack.ok) resolve(ack);
          else reject(new Error(`join refused: ${JSON.stringify(ack)}`));
        });
      });
    });
  }

  close() {
    try {
      this.socket.disconnect();
    } catch (_) {
      // already gone
    }
  }
}

async function openClients(opts, rooms) {
  const clients = rooms.map((room) => new Client(opts.url, room));
  try {
    await Promise.all(
      clients.map((c, i) => withTimeout(c.ready, opts.connectTimeout, `client ${i} join ${c.room}`)),
    );
  } catch (err) {
    clients.forEach((c) => c.close());
    throw err;
  }
  return clients;
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

function summarize(samples, n) {
  if (n === 0) return { count: 0 };
  const sorted = samples.slice(0, n).sort();
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

function timeoutPromise(seconds) {
  let timer;
  const p = new Promise((resolve) => (timer = setTimeout(() => resolve("timeout"), seconds * 1000)));
  return { p, cancel: () => clearTimeout(timer) };
}

const r3 = (x) => Math.round(x * 1000) / 1000;

// ---------------------------------------------------------------------------------------------
// ops: C clients x C rooms, window W of outstanding acked `op add`

async function ops(opts) {
  const C = opts.clients;
  const N = opts.ops;
  const W = Math.max(1, opts.window);
  const rooms = Array.from({ length: C }, (_, i) => `${opts.prefix}-ops-${i}`);
  const setupStart = performance.now();
  const clients = await openClients(opts, rooms);
  const setupMs = performance.now() - setupStart;

  // ~payloadBytes of JSON data per op
  const probe = JSON.stringify({ n: 1000, title: "", done: false }).length;
  const pad = "x".repeat(Math.max(0, opts.payloadBytes - probe));
  const samples = new Float64Array(C * N);
  let acked = 0;
  let failed = 0;
  const errors = {};
  let firstSend = 0;
  let lastAck = 0;
  let clientsDone = 0;
  let resolveDone;
  const done = new Promise((resolve) => (resolveDone = resolve));

  await waitForGo(opts, { clients: C });
  const cpu0 = process.cpuUsage();
  firstSend = performance.now();

  clients.forEach((client, ci) => {
    let sent = 0;
    let answered = 0;
    const sendOne = () => {
      const n = sent++;
      const t = performance.now();
      const operationId = `c${ci}-o${n}`;
      client.socket.emit(
        "op",
        {
          room: client.room,
          operationId,
          op: "add",
          collection: "items",
          id: `i${ci}-${n}`,
          data: { n, title: pad, done: false },
        },
        (ack) => {
          const now = performance.now();
          lastAck = now;
          answered++;
          if (ack && ack.ok) {
            samples[acked++] = now - t;
          } else {
            failed++;
            const code = (ack && ack.error && (ack.error.code || ack.error)) || "no-ack";
            errors[code] = (errors[code] || 0) + 1;
          }
          if (sent < N) sendOne();
          if (answered === N) {
            clientsDone++;
            if (clientsDone === C) resolveDone("complete");
          }
        },
      );
    };
    for (let k = 0; k < Math.min(W, N); k++) sendOne();
  });

  const to = timeoutPromise(opts.timeout);
  const outcome = await Promise.race([done, to.p]);
  to.cancel();
  const end = lastAck || performance.now();
  const elapsedMs = Math.max(end - firstSend, 1e-3);
  const cpu = process.cpuUsage(cpu0);
  const result = {
    mode: "ops",
    clients: C,
    rooms: C,
    ops_per_client: N,
    window: W,
    payload_bytes: JSON.stringify({ n: 1000, title: pad, done: false }).length,
    setup_ms: Math.round(setupMs),
    elapsed_ms: r3(elapsedMs),
    expected: C * N,
    acked,
    failed,
    errors,
    missing: C * N - acked - failed,
    acked_per_s: Math.round(acked / (elapsedMs / 1000)),
    timed_out: outcome === "timeout",
    disconnects: clients.reduce((s, c) => s + c.disconnects, 0),
    node_cpu_s: r3((cpu.user + cpu.system) / 1e6),
    latency: summarize(samples, acked),
  };
  return { result, clients };
}

// ---------------------------------------------------------------------------------------------
// fields: C clients in one room, each N paced field writes at R/s over P paths

async function fields(opts) {
  const C = opts.clients;
  const N = opts.writes;
  const P = opts.paths;
  const room = `${opts.prefix}-fields`;
  const setupStart = performance.now();
  const clients = await openClients(opts, new Array(C).fill(room));
  const setupMs = performance.now() - setupStart;

  // the entity the writes go into
  const initial = { f: {} };
  for (let p = 0; p < P; p++) initial.f[`p${p}`] = 0;
  const created = await withTimeout(
    new Promise((resolve) =>
      clients[0].socket.emit(
        "op",
        { room, operationId: "setup-doc", op: "add", collection: "items", id: "doc", data: initial },
        resolve,
      ),
    ),
    opts.connectTimeout,
    "creating items/doc",
  );
  if (!created || !created.ok) throw new Error(`op add items/doc refused: ${JSON.stringify(created)}`);

  const total = C * N;
  const samples = new Float64Array(total);
  let acked = 0;
  let failed = 0;
  const errors = {};
  let answered = 0;
  let lastAck = 0;
  const received = new Uint32Array(C); // `field` events each client received
  let receivedTotal = 0;
  const seqs = new Set(); // distinct seqs confirmed: one per flushed (path) value
  const fieldSeqs = new Set(); // distinct seqs broadcast as `field`
  let resolveDone;
  const done = new Promise((resolve) => (resolveDone = resolve));
  let measuring = false;
  clients.forEach((client, ci) => {
    client.socket.on("field", (msg) => {
      if (!measuring) return;
      received[ci]++;
      receivedTotal++;
      if (msg && msg.seq !== undefined) fieldSeqs.add(msg.seq);
    });
  });

  await waitForGo(opts, { clients: C });
  measuring = true;
  const cpu0 = process.cpuUsage();
  const intervalMs = 1000 / opts.rate;
  const stagger = intervalMs / C;
  const sentCount = new Uint32Array(C);
  let sentTotal = 0;
  let lateSends = 0; // writes sent more than 2 ms after their slot
  let maxLagMs = 0;
  const start = performance.now();
  const slot = (ci, k) => start + ci * stagger + k * intervalMs;

  const sendWrite = (ci, k) => {
    const client = clients[ci];
    const t = performance.now();
    const lag = t - slot(ci, k);
    if (lag > 2) lateSends++;
    if (lag > maxLagMs) maxLagMs = lag;
    client.socket.emit(
      "field",
      {
        room,
        operationId: `c${ci}-w${k}`,
        collection: "items",
        id: "doc",
        path: ["f", `p${(ci + k) % P}`],
        value: { by: ci, k },
      },
      (ack) => {
        const now = performance.now();
        lastAck = now;
        answered++;
        if (ack && ack.ok) {
          samples[acked++] = now - t;
          if (ack.seq !== undefined) seqs.add(ack.seq);
        } else {
          failed++;
          const code = (ack && ack.error && (ack.error.code || ack.error)) || "no-ack";
          errors[code] = (errors[code] || 0) + 1;
        }
        if (answered === total) resolveDone("complete");
      },
    );
  };

  await new Promise((resolve) => {
    const tick = () => {
      const now = performance.now();
      let next = Infinity;
      for (let ci = 0; ci < C; ci++) {
        while (sentCount[ci] < N && slot(ci, sentCount[ci]) <= now) {
          sendWrite(ci, sentCount[ci]++);
          sentTotal++;
        }
        if (sentCount[ci] < N) next = Math.min(next, slot(ci, sentCount[ci]));
      }
      if (sentTotal >= total) return resolve();
      setTimeout(tick, Math.max(0, next - performance.now()));
    };
    tick();
  });
  const sendSpanMs = performance.now() - start;
  const to = timeoutPromise(opts.timeout);
  const outcome = await Promise.race([done, to.p]);
  to.cancel();
  // let the last `field` broadcasts arrive (they may trail the final acks slightly)
  await new Promise((resolve) => setTimeout(resolve, opts.settle * 1000));
  const end = lastAck || performance.now();
  const elapsedMs = Math.max(end - start, 1e-3);
  const cpu = process.cpuUsage(cpu0);

  const result = {
    mode: "fields",
    clients: C,
    room,
    writes_per_client: N,
    rate_per_client: opts.rate,
    paths: P,
    expected: total,
    sent: sentTotal,
    send_span_ms: r3(sendSpanMs),
    late_sends: lateSends,
    max_send_lag_ms: r3(maxLagMs),
    elapsed_ms: r3(elapsedMs),
    acked,
    failed,
    errors,
    missing: total - acked - failed,
    timed_out: outcome === "timeout",
    distinct_confirmed_seqs: seqs.size,
    distinct_broadcast_seqs: fieldSeqs.size,
    field_events_received: receivedTotal,
    field_events_received_per_client: Array.from(received),
    // what a relay without coalescing would send: each write to every other member
    field_events_uncoalesced: total * (C - 1),
    disconnects: clients.reduce((s, c) => s + c.disconnects, 0),
    setup_ms: Math.round(setupMs),
    node_cpu_s: r3((cpu.user + cpu.system) / 1e6),
    latency: summarize(samples, acked),
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
  const modes = { ops, fields };
  try {
    const { result, clients } = await modes[opts.mode](opts);
    emitLine(result);
    clients.forEach((c) => c.close());
    setTimeout(() => process.exit(0), 200).unref();
    process.exitCode = 0;
  } catch (err) {
    emitLine({ mode: opts.mode, error: String(err && err.message ? err.message : err) });
    log(err && err.stack ? err.stack : err);
    process.exit(1);
  }
}

main();
