// Stock socket.io-client sockets, each with a real Y.Doc (yjs 13), editing one room's
// Yjs document over collabtrio's yjs-* events, then printing what each ended with.
//
// Usage: node yjsclient.mjs '<scenario json>'   (or the scenario on stdin)
//
// Scenario: {"url", "room", "timeoutMs", "expectLength",
//            "clients": [{"name", "token", "edits": [[position, "text"], ...]}]}
// Each client connects (socket.io-client defaults: polling, then the upgrade), joins,
// syncs with yjs-sync, then makes its edits (each position taken modulo the current
// length, so clients type into one another's text), sending each update as an acked
// yjs-update; remote updates arrive as yjs-update events. Once every client's text has
// `expectLength` characters it prints {"results": {name: {text, acks, sawUpdates}}}.

import { io } from "socket.io-client";
import * as Y from "yjs";

function readScenario() {
  if (process.argv[2]) return Promise.resolve(JSON.parse(process.argv[2]));
  return new Promise((resolve) => {
    let data = "";
    process.stdin.on("data", (c) => (data += c));
    process.stdin.on("end", () => resolve(JSON.parse(data)));
  });
}

function call(socket, event, data, timeoutMs) {
  return socket.timeout(timeoutMs).emitWithAck(event, data);
}

async function runClient(sc, spec) {
  const doc = new Y.Doc();
  const text = doc.getText("text");
  const socket = io(sc.url, { auth: { token: spec.token }, reconnection: false });
  const acks = [];
  let sawUpdates = 0;
  socket.on("yjs-update", ({ update }) => {
    sawUpdates += 1;
    Y.applyUpdate(doc, new Uint8Array(update), "remote");
  });
  const pending = [];
  doc.on("update", (update, origin) => {
    if (origin === "remote" || origin === "sync") return;
    pending.push(call(socket, "yjs-update", { room: sc.room, update: Buffer.from(update) },
                      sc.timeoutMs).then((ack) => acks.push(ack)));
  });
  await new Promise((resolve, reject) => {
    socket.on("connect", resolve);
    socket.on("connect_error", reject);
  });
  const joined = await call(socket, "join", { room: sc.room }, sc.timeoutMs);
  if (!joined.ok) throw new Error(`join: ${JSON.stringify(joined)}`);
  const synced = await call(socket, "yjs-sync",
    { room: sc.room, stateVector: Buffer.from(Y.encodeStateVector(doc)) }, sc.timeoutMs);
  if (!synced.ok) throw new Error(`sync: ${JSON.stringify(synced)}`);
  Y.applyUpdate(doc, new Uint8Array(synced.update), "sync");
  for (const [position, chars] of spec.edits) {
    text.insert(text.length ? position % (text.length + 1) : 0, chars);
    await new Promise((r) => setTimeout(r, 5));
  }
  await Promise.all(pending);
  return { socket, doc, text, acks, sawUpdates: () => sawUpdates };
}

async function main() {
  const sc = await readScenario();
  const timer = setTimeout(() => {
    console.log(JSON.stringify({ error: "timeout" }));
    process.exit(1);
  }, sc.timeoutMs * 4);
  const states = await Promise.all(sc.clients.map((spec) => runClient(sc, spec)));
  // wait until every document has everything
  while (states.some((s) => s.text.length < sc.expectLength)) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const results = {};
  sc.clients.forEach((spec, i) => {
    const s = states[i];
    results[spec.name] = { text: s.text.toString(), acks: s.acks, sawUpdates: s.sawUpdates() };
    s.socket.disconnect();
  });
  clearTimeout(timer);
  console.log(JSON.stringify({ results }));
  process.exit(0);
}

main().catch((err) => {
  console.log(JSON.stringify({ error: String(err && err.stack || err) }));
  process.exit(1);
});
