// Stock y-websocket WebsocketProvider (3.x, yjs 13) peers and a socket.io-client peer
// editing one room's Yjs document on collabtrio, then printing what each ended with.
//
// Usage: node ywsclient.mjs '<scenario json>'   (or the scenario on stdin)
//
// Scenario: {"url", "room", "timeoutMs", "providers": [{"name", "token", "text"}],
//            "socketio": {"token", "text"}}
// Each provider connects to <url>/yjs with params {token}, waits for `sync`, inserts its
// text at the start; the Socket.IO peer joins, syncs with yjs-sync and inserts its text.
// Once every document holds every text it prints {"results": {name: text, ...,
// "awarenessGone": ms}}: the last provider is then destroyed and the first provider's
// awareness must lose that provider's client id (awarenessGone: how long it took).

import { io } from "socket.io-client";
import WebSocket from "ws";
import * as Y from "yjs";
import { WebsocketProvider } from "y-websocket";

function readScenario() {
  if (process.argv[2]) return Promise.resolve(JSON.parse(process.argv[2]));
  return new Promise((resolve) => {
    let data = "";
    process.stdin.on("data", (c) => (data += c));
    process.stdin.on("end", () => resolve(JSON.parse(data)));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(check, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function main() {
  const sc = await readScenario();
  const wsUrl = sc.url.replace(/^http/, "ws") + "/yjs";
  const peers = [];
  for (const spec of sc.providers) {
    const doc = new Y.Doc();
    const provider = new WebsocketProvider(wsUrl, sc.room, doc, {
      WebSocketPolyfill: WebSocket, params: { token: spec.token }, disableBc: true,
    });
    provider.awareness.setLocalStateField("user", { name: spec.name });
    peers.push({ name: spec.name, doc, provider, text: spec.text });
  }
  for (const p of peers) {
    await until(() => p.provider.synced, sc.timeoutMs, `${p.name} synced`);
  }
  // the Socket.IO peer
  const sdoc = new Y.Doc();
  const socket = io(sc.url, { auth: { token: sc.socketio.token }, reconnection: false });
  socket.on("yjs-update", ({ update }) => Y.applyUpdate(sdoc, new Uint8Array(update), "remote"));
  const acks = [];
  sdoc.on("update", (update, origin) => {
    if (origin === "remote") return;
    socket.emitWithAck("yjs-update", { room: sc.room, update: Buffer.from(update) })
      .then((ack) => acks.push(ack));
  });
  await new Promise((resolve, reject) => {
    socket.on("connect", resolve);
    socket.on("connect_error", reject);
  });
  await socket.emitWithAck("join", { room: sc.room });
  const synced = await socket.emitWithAck("yjs-sync",
    { room: sc.room, stateVector: Buffer.from(Y.encodeStateVector(sdoc)) });
  Y.applyUpdate(sdoc, new Uint8Array(synced.update), "remote");
  // everyone types at once
  for (const p of peers) p.doc.getText("text").insert(0, p.text);
  sdoc.getText("text").insert(0, sc.socketio.text);
  const total = peers.reduce((n, p) => n + p.text.length, 0) + sc.socketio.text.length;
  const docs = [...peers.map((p) => p.doc), sdoc];
  await until(() => docs.every((d) => d.getText("text").length === total), sc.timeoutMs,
              "every document to hold every text");
  await until(() => acks.length === 1, sc.timeoutMs, "the Socket.IO ack");
  const results = { socketio: sdoc.getText("text").toString(), acks };
  for (const p of peers) results[p.name] = p.doc.getText("text").toString();
  // awareness: the first provider sees the last one, then sees it go
  const first = peers[0].provider;
  const last = peers[peers.length - 1].provider;
  const lastId = last.awareness.clientID;
  await until(() => first.awareness.getStates().has(lastId), sc.timeoutMs,
              "the last provider's awareness");
  const started = Date.now();
  last.destroy();
  await until(() => !first.awareness.getStates().has(lastId), sc.timeoutMs,
              "the last provider's awareness to go");
  results.awarenessGone = Date.now() - started;
  for (const p of peers) p.provider.destroy();
  socket.disconnect();
  console.log(JSON.stringify({ results }));
  process.exit(0);
}

const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: "global timeout" }));
  process.exit(1);
}, 60000);
timer.unref();

main().catch((err) => {
  console.log(JSON.stringify({ error: String((err && err.stack) || err) }));
  process.exit(1);
});
