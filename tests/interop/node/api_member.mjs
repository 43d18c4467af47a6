// Room members for the HTTP API tests (test_api_clients.py): stock socket.io-client
// sockets (default options: polling, then the upgrade; reconnection on) and, optionally,
// a stock y-websocket WebsocketProvider, which a back end then publishes to and
// disconnects over HTTP.
//
// Usage: node api_member.mjs '<scenario json>'
//
// Scenario: {"url", "timeoutMs", "lingerMs",
//            "members": [{"name", "token", "rooms": [...]}],
//            "yws": {"name", "token", "room"} | null}
// Once every socket has connected and joined its rooms (and the provider has synced) it
// prints {"ready": true} on a line of its own. Then it records, per member, every
// `broadcast` and `disconnect-reason` event and the `disconnect` reason, and for the
// provider the close code; when every member named in "expectDisconnect" has been
// disconnected (and the provider closed, if any), it waits lingerMs more (to see whether
// anything reconnects) and prints {"results": {name: {events, disconnect, connects}},
// "yws": {closeCode, closeReason, connects}}.

import { io } from "socket.io-client";
import WebSocket from "ws";
import * as Y from "yjs";
import { WebsocketProvider } from "y-websocket";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(check, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function main() {
  const sc = JSON.parse(process.argv[2]);
  const timeoutMs = sc.timeoutMs ?? 10000;
  const results = {};
  const sockets = [];
  for (const member of sc.members) {
    const record = { events: [], disconnect: null, connects: 0 };
    results[member.name] = record;
    const socket = io(sc.url, { auth: { token: member.token } });
    sockets.push(socket);
    socket.on("broadcast", (payload) => record.events.push(["broadcast", payload]));
    socket.on("disconnect-reason", (payload) => record.events.push(["disconnect-reason", payload]));
    socket.on("disconnect", (reason) => { record.disconnect = reason; });
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    });
    socket.on("connect", () => { record.connects += 1; });  // reconnections only
    record.connects = 1;
    for (const room of member.rooms) {
      const ack = await socket.timeout(timeoutMs).emitWithAck("join", { room });
      if (!ack.ok) throw new Error(`join ${room}: ${JSON.stringify(ack.error)}`);
    }
  }
  let yws = null;
  if (sc.yws) {
    yws = { closeCode: null, closeReason: null, connects: 0 };
    const provider = new WebsocketProvider(sc.url.replace(/^http/, "ws") + "/yjs", sc.yws.room,
      new Y.Doc(), { WebSocketPolyfill: WebSocket, params: { token: sc.yws.token },
                     disableBc: true });
    provider.on("status", ({ status }) => { if (status === "connected") yws.connects += 1; });
    provider.on("connection-close", (event) => {
      if (event && yws.closeCode === null) {
        yws.closeCode = event.code;
        yws.closeReason = event.reason;
      }
    });
    await until(() => provider.synced, timeoutMs, "the provider's sync");
    yws.provider = provider;
  }
  console.log(JSON.stringify({ ready: true }));
  const expected = sc.expectDisconnect ?? [];
  await until(() => expected.every((name) => results[name].disconnect !== null)
                    && (!yws || !sc.expectYwsClose || yws.closeCode !== null),
              timeoutMs, "the disconnects");
  const broadcasts = sc.expectBroadcasts ?? {};
  await until(() => Object.entries(broadcasts).every(([name, count]) =>
    results[name].events.filter(([e]) => e === "broadcast").length >= count),
  timeoutMs, "the broadcasts");
  await sleep(sc.lingerMs ?? 1500);
  const provider = yws?.provider;
  if (yws) delete yws.provider;
  const output = JSON.stringify({ results, yws });  // before this script's own disconnects
  for (const socket of sockets) socket.disconnect();
  provider?.destroy();
  console.log(output);
  process.exit(0);
}

main().catch((err) => {
  console.log(JSON.stringify({ error: String(err?.stack ?? err) }));
  process.exit(1);
});
