#!/usr/bin/env node
// Yjs load generator for bench/yjs.py: the same raw y-protocols client against every
// y-websocket server (collabtrio's /yjs/<room>, @y/websocket-server, pycrdt-websocket), and
// stock socket.io-client for collabtrio's `yjs-update` events.
//
//   node bench/yjsgen.mjs --mode MODE [options]
//
// Prints JSON lines on stdout (progress and errors go to stderr). With --wait-go a mode prints
// {"phase":"ready",...} once its clients are connected and synced and waits for a line on
// stdin, so the driver can snapshot CPU counters; the result line comes last.
//
// y-websocket clients speak y-protocols with lib0 framing over `ws`, without a Y.Doc: on open
// a client sends sync step 1 with an empty state vector and answers the server's step 1 with
// an empty step 2, as y-websocket's WebsocketProvider does; it is `synced` when the server's
// step 2 arrives (the provider's definition). No awareness. The socket URL is
// --yws-base + room (the driver passes the base each server needs).
//
// Modes:
//   trace    write a deterministic editing trace to --out: a single author typing into one
//            Y.Text ("text") with cursor jumps and backspaces (B4-like, less run-friendly),
//            until Y.encodeStateAsUpdate(doc) reaches --doc-bytes. The file holds the trace as
//            chunks (Y.mergeUpdates of consecutive edits, ~--chunk-bytes of raw updates each)
//            and a JSON header {ops, chars, doc_bytes, chunks}.
//   relay    one writer and --readers N readers in one room (--proto yws|sio). The writer
//            sends precomputed one-character inserts (each its own update, appended to the
//            text): --rate R per second for --duration S seconds, or, with --flat, --updates N
//            back to back. A reader reads the update's clock (the writer's inserts are clocks
//            0, 1, 2, ...) to match it to its send time. Reports deliveries, their latency
//            percentiles (send to receipt) and, flat out, deliveries/s.
//   sync     a preloader sends the trace (--trace FILE) to the room chunk by chunk and checks
//            the server's step 2 holds it all (it stays connected). Then, after go: --single N
//            fresh clients one after another, then --clients C fresh clients at once; each
//            reports open -> synced (and connect start -> synced). The first client of each
//            group decodes what it got and checks the text's length.
//   ingest   --clients C socket.io-client connections in ONE room, each keeping --window W
//            acked `yjs-update`s (one-character inserts from its own Y.Doc) outstanding until it
//            has sent --updates N. Reports acked updates/s and ack latency percentiles.
//   rooms    --rooms R y-websocket clients, one per room (prefix-r<i>), each sends the trace
//            (a small document), then syncs (step 1 -> step 2) and stays open; prints ready.
//            A line on stdin closes them all; prints the result.
import { readFileSync, writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import readline from "node:readline";
import * as decoding from "lib0/decoding";
import * as encoding from "lib0/encoding";
import { io } from "socket.io-client";
import WebSocket from "ws";
import * as Y from "yjs";

const MSG_SYNC = 0;
const STEP1 = 0;
const STEP2 = 1;
const UPDATE = 2;
const EMPTY_SV = Y.encodeStateVector(new Y.Doc());
const EMPTY_UPDATE = Y.encodeStateAsUpdate(new Y.Doc());
const WRITER_CLIENT_ID = 424242;

function parseArgs(argv) {
  const opts = {
    mode: null, proto: "yws", ywsBase: null, sioUrl: null, room: "bench", prefix: "bench",
    readers: 10, rate: 100, duration: 10, updates: 5000, flat: false, trace: null, out: null,
    docBytes: 10000, chunkBytes: 48 * 1024, seed: 1, single: 5, clients: 20, window: 64,
    rooms: 1000, concurrency: 50, timeout: 300, connectTimeout: 30, waitGo: false,
  };
  const numeric = new Set([
    "readers", "rate", "duration", "updates", "docBytes", "chunkBytes", "seed", "single",
    "clients", "window", "rooms", "concurrency", "timeout", "connectTimeout",
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
  if (!["trace", "relay", "sync", "ingest", "rooms"].includes(opts.mode)) {
    throw new Error("--mode trace|relay|sync|ingest|rooms");
  }
  if (!["yws", "sio"].includes(opts.proto)) throw new Error("--proto yws|sio");
  return opts;
}

const log = (...args) => process.stderr.write(`yjsgen: ${args.join(" ")}\n`);
const emitLine = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const r3 = (x) => Math.round(x * 1000) / 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${seconds}s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function summarize(samples, n) {
  if (n === 0) return { count: 0 };
  const sorted = Float64Array.from(samples.slice(0, n)).sort();
  const pct = (p) => sorted[Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += sorted[i];
  return {
    count: n, min_ms: r3(sorted[0]), mean_ms: r3(sum / n), p50_ms: r3(pct(50)),
    p90_ms: r3(pct(90)), p99_ms: r3(pct(99)), max_ms: r3(sorted[n - 1]),
  };
}

function waitForLine(prompt) {
  if (prompt) emitLine(prompt);
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

const waitForGo = (opts, extra) => (opts.waitGo ? waitForLine({ phase: "ready", ...extra }) : Promise.resolve());

// ---------------------------------------------------------------------------------------------
// y-protocols framing

function syncMessage(type, payload) {
  const enc = encoding.createEncoder();
  encoding.writeVarUint(enc, MSG_SYNC);
  encoding.writeVarUint(enc, type);
  encoding.writeVarUint8Array(enc, payload);
  return encoding.toUint8Array(enc);
}

// {type, subtype, payload} of a sync message, or {type} for anything else
function readMessage(data) {
  const dec = decoding.createDecoder(data);
  const type = decoding.readVarUint(dec);
  if (type !== MSG_SYNC) return { type };
  const subtype = decoding.readVarUint(dec);
  return { type, subtype, payload: decoding.readVarUint8Array(dec) };
}

// The clock of an update's first struct (update v1: groups, structs, client, clock): the
// writer's k-th one-character insert has clock k.
function firstClock(update) {
  const dec = decoding.createDecoder(update);
  if (decoding.readVarUint(dec) < 1) return -1;
  decoding.readVarUint(dec); // structs in the group
  decoding.readVarUint(dec); // client
  return decoding.readVarUint(dec);
}

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data));
  return new Uint8Array(data);
}

// One raw y-websocket client. `synced` resolves with the server's step 2 payload.
class YwsClient {
  constructor(opts, room, { onUpdate = null, sendStep1 = true } = {}) {
    this.room = room;
    this.t0 = performance.now();
    this.tOpen = null;
    this.tSynced = null;
    this.closed = false;
    this.closeCode = null;
    this.onUpdate = onUpdate;
    this.ws = new WebSocket(opts.ywsBase + room, { perMessageDeflate: false, maxPayload: 0 });
    this.ws.binaryType = "nodebuffer";
    let syncedResolve;
    let syncedReject;
    this.synced = new Promise((res, rej) => {
      syncedResolve = res;
      syncedReject = rej;
    });
    this.synced.catch(() => {});
    this.opened = new Promise((res, rej) => {
      this.ws.once("open", () => {
        this.tOpen = performance.now();
        if (sendStep1) this.ws.send(syncMessage(STEP1, EMPTY_SV));
        res();
      });
      this.ws.once("error", (err) => {
        rej(err);
        syncedReject(err);
      });
    });
    this.opened.catch(() => {});
    this.stepWaiters = [];
    this.ws.on("message", (data) => {
      const now = performance.now();
      const msg = readMessage(toBytes(data));
      if (msg.type !== MSG_SYNC) return;
      if (msg.subtype === STEP1) {
        this.ws.send(syncMessage(STEP2, EMPTY_UPDATE));
      } else if (msg.subtype === STEP2) {
        if (this.tSynced === null) {
          this.tSynced = now;
          syncedResolve(msg.payload);
        }
        const w = this.stepWaiters.shift();
        if (w) w.res(msg.payload);
      } else if (msg.subtype === UPDATE && this.onUpdate) {
        this.onUpdate(msg.payload, now);
      }
    });
    this.ws.on("close", (code, reason) => {
      this.closed = true;
      this.closeCode = code;
      const why = `${room}: the server closed the socket with ${code} ${reason || ""}`.trim();
      syncedReject(new Error(`${why} before synced`));
      for (const w of this.stepWaiters.splice(0)) w.rej(new Error(`${why} before its sync step 2`));
    });
  }

  sendUpdate(update) {
    this.ws.send(syncMessage(UPDATE, update));
  }

  // step 1 with an empty state vector; resolves with the server's next step 2
  requestState() {
    const p = new Promise((res, rej) => this.stepWaiters.push({ res, rej }));
    this.ws.send(syncMessage(STEP1, EMPTY_SV));
    return p;
  }

  close() {
    try {
      this.ws.close();
    } catch (_) {
      // already gone
    }
  }
}

// One socket.io-client connection joined to `room`.
class SioClient {
  constructor(opts, room, { onUpdate = null } = {}) {
    this.room = room;
    this.disconnects = 0;
    this.socket = io(opts.sioUrl, { transports: ["websocket"], forceNew: true, reconnection: false });
    this.socket.on("disconnect", () => this.disconnects++);
    if (onUpdate) {
      this.socket.on("yjs-update", (msg) => onUpdate(toBytes(msg.update), performance.now()));
    }
    this.ready = new Promise((resolve, reject) => {
      this.socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message}`)));
      this.socket.once("connect", () => {
        this.socket.emit("join", { room }, (ack) => {
          if (!(ack && ack.ok)) {
            reject(new Error(`join refused: ${JSON.stringify(ack)}`));
            return;
          }
          // load the room's Yjs document before anything is measured
          this.socket.emit("yjs-sync", { room, stateVector: Buffer.from(EMPTY_SV) }, (s) => {
            if (s && s.ok) resolve(s);
            else reject(new Error(`yjs-sync refused: ${JSON.stringify(s)}`));
          });
        });
      });
    });
    this.ready.catch(() => {});
  }

  sendUpdate(update, ack) {
    if (ack) this.socket.emit("yjs-update", { room: this.room, update: Buffer.from(update) }, ack);
    else this.socket.emit("yjs-update", { room: this.room, update: Buffer.from(update) });
  }

  close() {
    try {
      this.socket.disconnect();
    } catch (_) {
      // already gone
    }
  }
}

async function openAll(opts, make, count, what) {
  const clients = [];
  const batch = Math.max(1, opts.concurrency);
  try {
    // the first client alone: the room exists before the others arrive (pycrdt-websocket can
    // miss a client that connects while the room's first client is still setting it up)
    if (count > 0) {
      const first = make(0);
      clients.push(first);
      await withTimeout(first.ready || first.synced, opts.connectTimeout, `${what} 0`);
    }
    for (let i = 1; i < count; i += batch) {
      const group = [];
      for (let k = i; k < Math.min(count, i + batch); k++) {
        const c = make(k);
        clients.push(c);
        group.push(withTimeout(c.ready || c.synced, opts.connectTimeout, `${what} ${k}`));
      }
      await Promise.all(group);
    }
  } catch (err) {
    clients.forEach((c) => c.close());
    throw err;
  }
  return clients;
}

// Precomputed one-character inserts appended to the text of a doc with `clientId`.
function insertUpdates(n, clientId) {
  const doc = new Y.Doc();
  doc.clientID = clientId;
  const text = doc.getText("text");
  const out = [];
  doc.on("update", (u) => out.push(u));
  const alpha = "abcdefghijklmnopqrstuvwxyz ";
  for (let k = 0; k < n; k++) text.insert(k, alpha[k % alpha.length]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// trace: a deterministic editing trace of one author

function mulberry32(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function makeTrace(opts) {
  const t0 = performance.now();
  const doc = new Y.Doc();
  doc.clientID = 1;
  const text = doc.getText("text");
  const rand = mulberry32(opts.seed);
  const alpha = "abcdefghijklmnopqrstuvwxyz     eeettaaoinshr\n";
  const chunks = [];
  let pending = [];
  let pendingBytes = 0;
  doc.on("update", (u) => {
    pending.push(u);
    pendingBytes += u.length;
  });
  let cursor = 0;
  let ops = 0;
  let nextCheck = 200;
  let size = 0;
  for (;;) {
    const len = text.length;
    const x = rand();
    if (x < 0.08 || len === 0) cursor = Math.floor(rand() * (len + 1)); // the cursor jumps
    if (x > 0.85 && cursor > 0) {
      const n = Math.min(cursor, 1 + Math.floor(rand() * 3)); // backspace 1-3 characters
      text.delete(cursor - n, n);
      cursor -= n;
    } else {
      text.insert(cursor, alpha[Math.floor(rand() * alpha.length)]);
      cursor++;
    }
    ops++;
    if (pendingBytes >= opts.chunkBytes) {
      chunks.push(Y.mergeUpdates(pending));
      pending = [];
      pendingBytes = 0;
    }
    if (ops >= nextCheck) {
      size = Y.encodeStateAsUpdate(doc).length;
      if (size >= opts.docBytes) break;
      nextCheck = ops + Math.max(200, Math.min(5000, Math.floor(ops / 10)));
    }
  }
  if (pending.length) chunks.push(Y.mergeUpdates(pending));
  const header = {
    ops, chars: text.length, doc_bytes: size, chunks: chunks.length,
    chunk_bytes_total: chunks.reduce((a, c) => a + c.length, 0), seed: opts.seed,
  };
  const head = Buffer.from(JSON.stringify(header));
  const parts = [u32(head.length), head];
  for (const c of chunks) parts.push(u32(c.length), Buffer.from(c));
  writeFileSync(opts.out, Buffer.concat(parts));
  return { mode: "trace", ...header, gen_ms: Math.round(performance.now() - t0) };
}

function u32(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function readTrace(path) {
  const buf = readFileSync(path);
  let off = 0;
  const next = () => {
    const n = buf.readUInt32BE(off);
    const out = buf.subarray(off + 4, off + 4 + n);
    off += 4 + n;
    return out;
  };
  const header = JSON.parse(next().toString());
  const chunks = [];
  while (off < buf.length) chunks.push(new Uint8Array(next()));
  return { header, chunks };
}

function textLength(update) {
  const doc = new Y.Doc();
  Y.applyUpdate(doc, update);
  return doc.getText("text").length;
}

// send the trace to `room` over y-websocket and check the server has it all; the client stays open
async function preload(opts, trace, room) {
  const c = new YwsClient(opts, room);
  await withTimeout(c.synced, opts.connectTimeout, `preloader ${room}`);
  for (const chunk of trace.chunks) c.sendUpdate(chunk);
  const state = await withTimeout(c.requestState(), opts.timeout, `preload ${room}`).catch((e) => {
    throw new Error(`preloader: ${e.message}`);
  });
  const chars = textLength(state);
  if (chars !== trace.header.chars) {
    throw new Error(`preload ${room}: the server's document has ${chars} characters, not ${trace.header.chars}`);
  }
  return { client: c, stateBytes: state.length };
}

// ---------------------------------------------------------------------------------------------
// relay

async function relay(opts) {
  const R = opts.readers;
  const N = opts.flat ? opts.updates : Math.round(opts.rate * opts.duration);
  const updates = insertUpdates(N, WRITER_CLIENT_ID);
  const sendTimes = new Float64Array(N);
  const got = new Uint8Array(R * N);
  const samples = new Float64Array(R * N);
  let deliveries = 0;
  let duplicates = 0;
  let foreign = 0;
  let lastRecv = 0;
  let measuring = false;
  let resolveDone;
  const done = new Promise((r) => (resolveDone = r));
  const onUpdateFor = (ri) => (update, now) => {
    if (!measuring) return;
    const k = firstClock(update);
    if (k < 0 || k >= N) {
      foreign++;
      return;
    }
    const slot = ri * N + k;
    if (got[slot]) {
      duplicates++;
      return;
    }
    got[slot] = 1;
    samples[deliveries++] = now - sendTimes[k];
    lastRecv = now;
    if (deliveries === R * N) resolveDone("complete");
  };
  const Client = opts.proto === "sio" ? SioClient : YwsClient;
  const setupStart = performance.now();
  const readers = await openAll(opts, (i) => new Client(opts, opts.room, { onUpdate: onUpdateFor(i) }), R, "reader");
  const [writer] = await openAll(opts, () => new Client(opts, opts.room), 1, "writer");
  const setupMs = performance.now() - setupStart;
  await waitForGo(opts, { readers: R });
  measuring = true;
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  let late = 0;
  if (opts.flat) {
    for (let k = 0; k < N; k++) {
      sendTimes[k] = performance.now();
      writer.sendUpdate(updates[k]);
    }
  } else {
    const interval = 1000 / opts.rate;
    let k = 0;
    await new Promise((resolve) => {
      const tick = () => {
        const now = performance.now();
        while (k < N && start + k * interval <= now) {
          if (now - (start + k * interval) > 2) late++;
          sendTimes[k] = performance.now();
          writer.sendUpdate(updates[k]);
          k++;
        }
        if (k >= N) {
          resolve();
          return;
        }
        setTimeout(tick, Math.max(0, start + k * interval - performance.now()));
      };
      tick();
    });
  }
  let timer;
  const outcome = await Promise.race([
    done,
    new Promise((r) => (timer = setTimeout(() => r("timeout"), opts.timeout * 1000))),
  ]);
  clearTimeout(timer);
  const cpu = process.cpuUsage(cpu0);
  const elapsed = Math.max((lastRecv || performance.now()) - start, 1e-3);
  const closedEarly = readers.filter((c) => c.closed || c.disconnects).length;
  [...readers, writer].forEach((c) => c.close());
  return {
    mode: "relay", proto: opts.proto, flat: opts.flat, readers: R, updates: N,
    rate: opts.flat ? null : opts.rate, update_bytes: updates[N - 1].length,
    setup_ms: Math.round(setupMs), expected: R * N, deliveries, missing: R * N - deliveries,
    duplicates, foreign, late_sends: late, readers_closed: closedEarly,
    timed_out: outcome === "timeout", elapsed_ms: r3(elapsed),
    deliveries_per_s: Math.round(deliveries / (elapsed / 1000)),
    node_cpu_s: r3((cpu.user + cpu.system) / 1e6), latency: summarize(samples, deliveries),
  };
}

// ---------------------------------------------------------------------------------------------
// sync: open -> synced on a preloaded document

async function syncGroup(opts, count, expectChars) {
  const clients = [];
  for (let i = 0; i < count; i++) clients.push(new YwsClient(opts, opts.room));
  const states = await withTimeout(
    Promise.all(clients.map((c, i) => c.synced.catch((e) => {
      throw new Error(`${count === 1 ? "single" : "concurrent"} client ${i}: ${e.message}`);
    }))),
    opts.timeout,
    "sync",
  );
  const fromOpen = clients.map((c) => c.tSynced - c.tOpen);
  const fromStart = clients.map((c) => c.tSynced - c.t0);
  clients.forEach((c) => c.close());
  const chars = textLength(states[0]);
  if (chars !== expectChars) throw new Error(`synced document has ${chars} characters, not ${expectChars}`);
  return { fromOpen, fromStart, bytes: states[0].length };
}

async function sync(opts) {
  const trace = readTrace(opts.trace);
  const t0 = performance.now();
  const pre = await preload(opts, trace, opts.room);
  const preloadMs = performance.now() - t0;
  await waitForGo(opts, { preload_ms: Math.round(preloadMs), state_bytes: pre.stateBytes });
  const cpu0 = process.cpuUsage();
  const single = { fromOpen: [], fromStart: [] };
  let bytes = 0;
  for (let i = 0; i < opts.single; i++) {
    const g = await syncGroup(opts, 1, trace.header.chars);
    single.fromOpen.push(...g.fromOpen);
    single.fromStart.push(...g.fromStart);
    bytes = g.bytes;
    await sleep(100);
  }
  await sleep(300);
  const many = await syncGroup(opts, opts.clients, trace.header.chars);
  const cpu = process.cpuUsage(cpu0);
  const preloaderOpen = !pre.client.closed;
  pre.client.close();
  const stats = (xs) => summarize(Float64Array.from(xs), xs.length);
  return {
    mode: "sync", doc_bytes: trace.header.doc_bytes, chars: trace.header.chars,
    chunks: trace.chunks.length, preload_ms: Math.round(preloadMs), step2_bytes: bytes,
    preloader_still_open: preloaderOpen, node_cpu_s: r3((cpu.user + cpu.system) / 1e6),
    single: { clients: opts.single, open_to_synced: stats(single.fromOpen), start_to_synced: stats(single.fromStart) },
    concurrent: { clients: opts.clients, open_to_synced: stats(many.fromOpen), start_to_synced: stats(many.fromStart) },
  };
}

// ---------------------------------------------------------------------------------------------
// ingest: acked yjs-update into one room

async function ingest(opts) {
  const C = opts.clients;
  const N = opts.updates;
  const W = Math.max(1, opts.window);
  const perClient = Array.from({ length: C }, (_, i) => insertUpdates(N, 1000 + i));
  const setupStart = performance.now();
  const clients = await openAll(opts, () => new SioClient(opts, opts.room), C, "client");
  const setupMs = performance.now() - setupStart;
  const samples = new Float64Array(C * N);
  let acked = 0;
  let failed = 0;
  const errors = {};
  let lastAck = 0;
  let clientsDone = 0;
  let relayed = 0;
  clients.forEach((c) => c.socket.on("yjs-update", () => relayed++));
  let resolveDone;
  const done = new Promise((r) => (resolveDone = r));
  await waitForGo(opts, { clients: C });
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  clients.forEach((client, ci) => {
    let sent = 0;
    let answered = 0;
    const sendOne = () => {
      const n = sent++;
      const t = performance.now();
      client.sendUpdate(perClient[ci][n], (ack) => {
        const now = performance.now();
        lastAck = now;
        answered++;
        if (ack && ack.ok) samples[acked++] = now - t;
        else {
          failed++;
          const code = (ack && ack.error && (ack.error.code || ack.error)) || "no-ack";
          errors[code] = (errors[code] || 0) + 1;
        }
        if (sent < N) sendOne();
        if (answered === N && ++clientsDone === C) resolveDone("complete");
      });
    };
    for (let k = 0; k < Math.min(W, N); k++) sendOne();
  });
  let timer;
  const outcome = await Promise.race([
    done,
    new Promise((r) => (timer = setTimeout(() => r("timeout"), opts.timeout * 1000))),
  ]);
  clearTimeout(timer);
  const elapsed = Math.max((lastAck || performance.now()) - start, 1e-3);
  const cpu = process.cpuUsage(cpu0);
  const disconnects = clients.reduce((s, c) => s + c.disconnects, 0);
  clients.forEach((c) => c.close());
  return {
    mode: "ingest", clients: C, updates_per_client: N, window: W, setup_ms: Math.round(setupMs),
    expected: C * N, acked, failed, errors, missing: C * N - acked - failed, relayed,
    timed_out: outcome === "timeout", disconnects, elapsed_ms: r3(elapsed),
    acked_per_s: Math.round(acked / (elapsed / 1000)),
    node_cpu_s: r3((cpu.user + cpu.system) / 1e6), latency: summarize(samples, acked),
  };
}

// ---------------------------------------------------------------------------------------------
// rooms: many rooms with a small document each

async function rooms(opts) {
  const trace = readTrace(opts.trace);
  const t0 = performance.now();
  const clients = [];
  const batch = Math.max(1, opts.concurrency);
  for (let i = 0; i < opts.rooms; i += batch) {
    const group = [];
    for (let k = i; k < Math.min(opts.rooms, i + batch); k++) {
      group.push(preload(opts, trace, `${opts.prefix}-r${k}`).then((p) => clients.push(p.client)));
    }
    await Promise.all(group);
  }
  const setupMs = performance.now() - t0;
  await waitForLine({ phase: "ready", rooms: clients.length, setup_ms: Math.round(setupMs) });
  const open = clients.filter((c) => !c.closed).length;
  clients.forEach((c) => c.close());
  await withTimeout(
    (async () => {
      while (clients.some((c) => !c.closed)) await sleep(50);
    })(),
    30,
    "closing",
  ).catch(() => {});
  return {
    mode: "rooms", rooms: opts.rooms, doc_bytes: trace.header.doc_bytes, chars: trace.header.chars,
    setup_ms: Math.round(setupMs), still_open_at_close: open,
  };
}

let currentMode = null;

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  currentMode = opts.mode;
  const modes = { trace: makeTrace, relay, sync, ingest, rooms };
  const result = await modes[opts.mode](opts);
  emitLine(result);
  process.exit(0);
}

main().catch((err) => {
  log(err && err.stack ? err.stack : String(err));
  emitLine({ mode: currentMode, error: String((err && err.message) || err) });
  process.exit(1);
});
