// Stock y-websocket WebsocketProvider (3.x, yjs 13) peers and socket.io-client Yjs peers
// typing at random positions (seeded) into one Y.Text of a collabtrio room, for a test
// that runs other peers of its own at the same time.
//
// Usage: node yjs_typing.mjs, then JSON lines on stdin; it answers JSON lines on stdout.
//
// 1. stdin: the scenario {"url", "room", "timeoutMs", "durationMs", "seed",
//    "providers": [{"name", "token", "letter"}], "socketio": [{"name", "token", "letter"}]}.
//    Every provider connects to <url>/yjs with params {token} and waits for `sync`; every
//    Socket.IO peer joins and syncs with yjs-sync. stdout: {"ready": {name: clientId}}.
// 2. stdin: {"go": true}. For durationMs each peer, every 20-60 ms, either inserts 1-3
//    copies of its own letter at a random position or (3 times in 10, when it has one)
//    deletes one of its own letters; a Socket.IO peer sends each update as an acked
//    yjs-update. stdout: {"typed": {name: {letter, clientId, inserted, deleted, edits,
//    acks: [ok, refused]}}} once every ack is in.
// 3. stdin: {"expect": {"counts": {letter: n}, "clocks": {clientId: clock}}}: what every
//    document must end with (each letter's count, and each client's clock, i.e. how many
//    characters it inserted). Once every document matches, stdout: {"results": {name:
//    text}}, and it exits 0. On an error or a timeout: {"error": "..."} and exit 1.

import readline from "node:readline";
import { io } from "socket.io-client";
import WebSocket from "ws";
import * as Y from "yjs";
import { WebsocketProvider } from "y-websocket";

const lines = [];
const waiters = [];
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const waiter = waiters.shift();
  if (waiter) waiter(JSON.parse(line));
  else lines.push(JSON.parse(line));
});

function nextMessage() {
  if (lines.length) return Promise.resolve(lines.shift());
  return new Promise((resolve) => waiters.push(resolve));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(check, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

// mulberry32: a small seeded PRNG, so a run can be repeated
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function call(socket, event, data, timeoutMs) {
  return socket.timeout(timeoutMs).emitWithAck(event, data);
}

async function connectProvider(sc, spec) {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(sc.url.replace(/^http/, "ws") + "/yjs", sc.room, doc, {
    WebSocketPolyfill: WebSocket, params: { token: spec.token }, disableBc: true,
  });
  await until(() => provider.synced, sc.timeoutMs, `${spec.name} synced`);
  return { ...spec, doc, close: () => provider.destroy(), pending: [], acks: [0, 0] };
}

async function connectSocketio(sc, spec) {
  const doc = new Y.Doc();
  const peer = { ...spec, doc, pending: [], acks: [0, 0] };
  const socket = io(sc.url, { auth: { token: spec.token }, reconnection: false });
  peer.close = () => socket.disconnect();
  socket.on("yjs-update", ({ update }) => Y.applyUpdate(doc, new Uint8Array(update), "remote"));
  doc.on("update", (update, origin) => {
    if (origin === "remote") return;
    peer.pending.push(call(socket, "yjs-update", { room: sc.room, update: Buffer.from(update) },
                           sc.timeoutMs)
      .then((ack) => { peer.acks[ack && ack.ok === true ? 0 : 1] += 1; },
            () => { peer.acks[1] += 1; }));
  });
  await new Promise((resolve, reject) => {
    socket.on("connect", resolve);
    socket.on("connect_error", reject);
  });
  const joined = await call(socket, "join", { room: sc.room }, sc.timeoutMs);
  if (!joined.ok) throw new Error(`${spec.name} join: ${JSON.stringify(joined)}`);
  const synced = await call(socket, "yjs-sync",
    { room: sc.room, stateVector: Buffer.from(Y.encodeStateVector(doc)) }, sc.timeoutMs);
  if (!synced.ok) throw new Error(`${spec.name} sync: ${JSON.stringify(synced)}`);
  Y.applyUpdate(doc, new Uint8Array(synced.update), "remote");
  return peer;
}

async function type(peer, rng, durationMs) {
  const text = peer.doc.getText("text");
  peer.inserted = 0;
  peer.deleted = 0;
  peer.edits = 0;
  const end = Date.now() + durationMs;
  while (Date.now() < end) {
    const s = text.toString();
    const mine = [];
    for (let i = 0; i < s.length; i++) if (s[i] === peer.letter) mine.push(i);
    if (mine.length && rng() < 0.3) {
      text.delete(mine[Math.floor(rng() * mine.length)], 1);
      peer.deleted += 1;
    } else {
      const n = 1 + Math.floor(rng() * 3);
      text.insert(Math.floor(rng() * (s.length + 1)), peer.letter.repeat(n));
      peer.inserted += n;
    }
    peer.edits += 1;
    await sleep(20 + rng() * 40);
  }
  await Promise.all(peer.pending);
}

function matches(doc, expect) {
  const sv = Y.decodeStateVector(Y.encodeStateVector(doc));
  for (const [id, clock] of Object.entries(expect.clocks)) {
    if ((sv.get(Number(id)) || 0) !== clock) return false;
  }
  const counts = {};
  for (const ch of doc.getText("text").toString()) counts[ch] = (counts[ch] || 0) + 1;
  const letters = new Set([...Object.keys(counts), ...Object.keys(expect.counts)]);
  for (const letter of letters) {
    if ((counts[letter] || 0) !== (expect.counts[letter] || 0)) return false;
  }
  return true;
}

async function main() {
  const sc = await nextMessage();
  const timer = setTimeout(() => {
    console.log(JSON.stringify({ error: "global timeout" }));
    process.exit(1);
  }, sc.durationMs + 6 * sc.timeoutMs);
  timer.unref();
  const peers = [
    ...(await Promise.all(sc.providers.map((spec) => connectProvider(sc, spec)))),
    ...(await Promise.all(sc.socketio.map((spec) => connectSocketio(sc, spec)))),
  ];
  console.log(JSON.stringify({
    ready: Object.fromEntries(peers.map((p) => [p.name, p.doc.clientID])),
  }));
  const go = await nextMessage();
  if (!go.go) throw new Error(`expected go, got ${JSON.stringify(go)}`);
  await Promise.all(peers.map((p, i) => type(p, prng(sc.seed + i), sc.durationMs)));
  console.log(JSON.stringify({
    typed: Object.fromEntries(peers.map((p) => [p.name, {
      letter: p.letter, clientId: p.doc.clientID, inserted: p.inserted, deleted: p.deleted,
      edits: p.edits, acks: p.acks,
    }])),
  }));
  const { expect } = await nextMessage();
  for (const p of peers) {
    await until(() => matches(p.doc, expect), sc.timeoutMs, `${p.name} to have everything`);
  }
  const results = Object.fromEntries(peers.map((p) => [p.name, p.doc.getText("text").toString()]));
  for (const p of peers) p.close();
  console.log(JSON.stringify({ results }));
  process.exit(0);
}

main().catch((err) => {
  console.log(JSON.stringify({ error: String((err && err.stack) || err) }));
  process.exit(1);
});
