// Runs stock socket.io-client (v4) sockets through a scripted scenario and prints JSON.
//
// Usage: node client.mjs '<scenario json>'   (or the scenario on stdin)
//
// Scenario: {"url": "http://127.0.0.1:PORT", "timeoutMs": 5000, "steps": [...]}
// Each step is an object with an "action" and a "client" name; its result goes, in
// order, into the printed {"results": [...]} (or {"error": ...} with exit code 1).
//
//   connect    {client, auth?, query?, options?, defaults?}
//                                                 -> {ok: true, id} | {ok: false, message, data}
//                                                    (defaults: true leaves socket.io-client's
//                                                    own transports: polling, then upgrade)
//   transport  {client}                           -> the Engine.IO transport now in use
//   waitUpgrade {client}                          -> the transport once upgraded ("websocket")
//   call       {client, event, data}              -> the ack payload
//   emit       {client, event, data}              -> null (no ack asked for)
//   emitRaw    {client, event, args: [...]}       -> null (several arguments, no ack)
//   wait       {client, event, match?}            -> the first recorded payload of `event`
//                                                    whose fields equal those of `match`
//   waitDisconnect {client}                       -> the disconnect reason
//   events     {client, event?}                   -> [[name, payload], ...] received so far
//   sleep      {ms}                               -> null
//   disconnect {client}                           -> null
//
// Actions for the long-polling tests (test_node_polling.py):
//
//   connectTracked {client, auth?, query?, options?, holdUpgrade?}
//                                                 -> like connect with defaults: true, plus
//                                                    openedWith (the transport the session
//                                                    opened on); the transport each event
//                                                    arrives on is recorded (see collect).
//                                                    holdUpgrade: true opens the WebSocket
//                                                    the upgrade probes only at releaseUpgrade
//                                                    (the transports are then engine.io-
//                                                    client's own NodeXHR and a NodeWebSocket
//                                                    whose open waits)
//   releaseUpgrade {client}                       -> null (the held WebSocket opens now)
//   publish    {client, room, count, event?, every?, batch?}
//                                                 -> null at once; in the background, emits
//                                                    `count` acked broadcast {room, event,
//                                                    data: {n: 0..count-1}}, `batch` at a
//                                                    time, `every` ms apart (0: as fast as
//                                                    the event loop goes)
//   sentSoFar  {client}                           -> how many its publish has emitted so far
//   published  {client}                           -> {sent, ok, errors} once every ack of
//                                                    the client's publish arrived
//   collect    {client, event, count?, until?}    -> [[payload, transport], ...]: the first
//                                                    `count` events named `event` once that
//                                                    many arrived, or (until: a match, as in
//                                                    wait) all of them up to the first that
//                                                    matches; each with the transport it
//                                                    arrived on (null unless connectTracked)
//
// Bytes travel as {"$bytes": "<hex>"} in the scenario and in the results; they are real
// Buffers (Socket.IO binary attachments) on the wire.

import { io } from "socket.io-client";
// a dependency of socket.io-client (its Engine.IO transports), for holdUpgrade
import { NodeWebSocket, NodeXHR } from "engine.io-client";

function fromJson(value) {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value && typeof value === "object") {
    if (typeof value.$bytes === "string" && Object.keys(value).length === 1) {
      return Buffer.from(value.$bytes, "hex");
    }
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromJson(v)]));
  }
  return value;
}

function toJson(value) {
  if (Buffer.isBuffer(value)) return { $bytes: value.toString("hex") };
  if (value instanceof ArrayBuffer) return { $bytes: Buffer.from(value).toString("hex") };
  if (ArrayBuffer.isView(value)) {
    return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("hex") };
  }
  if (Array.isArray(value)) return value.map(toJson);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  }
  return value === undefined ? null : value;
}

function matches(payload, match) {
  if (!match) return true;
  if (!payload || typeof payload !== "object") return false;
  return Object.entries(match).every(
    ([k, v]) => JSON.stringify(toJson(payload[k])) === JSON.stringify(v),
  );
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A WebSocket transport whose open waits for `gate`: the upgrade probe starts at once,
// as engine.io-client does, but its WebSocket connects only when the gate opens.
function heldWebSocket(gate) {
  return class HeldWebSocket extends NodeWebSocket {
    doOpen() {
      gate.then(() => {
        if (this.readyState === "opening") super.doOpen();
      });
    }
  };
}

async function readScenario() {
  if (process.argv[2]) return JSON.parse(process.argv[2]);
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

async function main() {
  const scenario = await readScenario();
  const timeoutMs = scenario.timeoutMs ?? 5000;
  const clients = new Map();
  const results = [];

  function client(name) {
    const c = clients.get(name);
    if (!c) throw new Error(`unknown client ${name}`);
    return c;
  }

  async function waitUntil(check, what) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = check();
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`timeout after ${timeoutMs} ms: ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  try {
    for (const step of scenario.steps) {
      const name = step.client;
      switch (step.action) {
        case "connect": {
          const query = step.query ?? undefined;
          const socket = io(scenario.url, {
            ...(step.defaults ? {} : { transports: ["websocket"] }),
            reconnection: false,
            forceNew: true,
            timeout: timeoutMs,
            ...(step.auth !== undefined ? { auth: step.auth } : {}),
            ...(query ? { query } : {}),
            ...(step.options ?? {}),
          });
          const record = { socket, events: [], disconnects: [] };
          clients.set(name, record);
          socket.onAny((event, ...args) => {
            record.events.push([event, args.length === 1 ? args[0] : args]);
          });
          socket.on("disconnect", (reason) => record.disconnects.push(reason));
          const outcome = await withTimeout(
            new Promise((resolve) => {
              socket.once("connect", () => resolve({ ok: true, id: socket.id }));
              socket.once("connect_error", (err) =>
                resolve({ ok: false, message: err.message, data: err.data ?? null }),
              );
            }),
            timeoutMs + 1000,
            `connect ${name}`,
          );
          results.push(outcome);
          break;
        }
        case "call": {
          const ack = await client(name)
            .socket.timeout(timeoutMs)
            .emitWithAck(step.event, fromJson(step.data));
          results.push(toJson(ack));
          break;
        }
        case "emit":
          client(name).socket.emit(step.event, fromJson(step.data));
          results.push(null);
          break;
        case "emitRaw":
          client(name).socket.emit(step.event, ...fromJson(step.args));
          results.push(null);
          break;
        case "wait": {
          const c = client(name);
          const found = await waitUntil(
            () => c.events.find(([event, payload]) => event === step.event && matches(payload, step.match)),
            `${name} waiting for ${step.event} ${JSON.stringify(step.match ?? {})}; ` +
              `got ${JSON.stringify(toJson(c.events))}`,
          );
          results.push(toJson(found[1]));
          break;
        }
        case "waitDisconnect": {
          const c = client(name);
          results.push(await waitUntil(() => c.disconnects[0], `${name} disconnect`));
          break;
        }
        case "events": {
          const c = client(name);
          const events = step.event ? c.events.filter(([e]) => e === step.event) : c.events;
          results.push(toJson(events));
          break;
        }
        case "sleep":
          await new Promise((resolve) => setTimeout(resolve, step.ms));
          results.push(null);
          break;
        case "disconnect":
          client(name).socket.disconnect();
          results.push(null);
          break;
        case "transport":
          results.push(client(name).socket.io.engine.transport.name);
          break;
        case "waitUpgrade": {
          const engine = client(name).socket.io.engine;
          if (engine.transport.name !== "websocket") {
            await withTimeout(new Promise((resolve) => engine.once("upgrade", resolve)),
              timeoutMs, `${name}: upgrade`);
          }
          results.push(engine.transport.name);
          break;
        }
        case "connectTracked": {
          let release = null;
          const gate = new Promise((resolve) => {
            release = resolve;
          });
          const socket = io(scenario.url, {
            reconnection: false,
            forceNew: true,
            timeout: timeoutMs,
            ...(step.auth !== undefined ? { auth: step.auth } : {}),
            ...(step.query ? { query: step.query } : {}),
            ...(step.options ?? {}),
            ...(step.holdUpgrade ? { transports: [NodeXHR, heldWebSocket(gate)] } : {}),
          });
          const record = { socket, events: [], disconnects: [], transports: [], release };
          clients.set(name, record);
          socket.io.once("open", () => {
            record.openedWith = socket.io.engine.transport.name;
          });
          socket.onAny((event, ...args) => {
            record.events.push([event, args.length === 1 ? args[0] : args]);
            record.transports.push(socket.io.engine.transport.name);
          });
          socket.on("disconnect", (reason) => record.disconnects.push(reason));
          const outcome = await withTimeout(
            new Promise((resolve) => {
              socket.once("connect", () =>
                resolve({ ok: true, id: socket.id, openedWith: record.openedWith ?? null }),
              );
              socket.once("connect_error", (err) =>
                resolve({ ok: false, message: err.message, data: err.data ?? null }),
              );
            }),
            timeoutMs + 1000,
            `connect ${name}`,
          );
          results.push(outcome);
          break;
        }
        case "releaseUpgrade": {
          const c = client(name);
          if (!c.release) throw new Error(`${name} was not connected with connectTracked`);
          c.release();
          results.push(null);
          break;
        }
        case "publish": {
          const c = client(name);
          const batch = step.batch ?? 1;
          const every = step.every ?? 0;
          c.sent = 0;
          c.publishing = (async () => {
            const acks = [];
            for (let n = 0; n < step.count; n++) {
              c.sent = n + 1;
              acks.push(
                c.socket
                  .timeout(timeoutMs)
                  .emitWithAck("broadcast", { room: step.room, event: step.event ?? "n", data: { n } })
                  .catch((err) => ({ ok: false, error: String(err) })),
              );
              if ((n + 1) % batch === 0) {
                await new Promise((resolve) =>
                  every > 0 ? setTimeout(resolve, every) : setImmediate(resolve),
                );
              }
            }
            const answers = await Promise.all(acks);
            const errors = answers.filter((a) => !a || a.ok !== true).slice(0, 5);
            return { sent: step.count, ok: answers.filter((a) => a && a.ok === true).length, errors };
          })();
          results.push(null);
          break;
        }
        case "sentSoFar":
          results.push(client(name).sent ?? 0);
          break;
        case "published": {
          const c = client(name);
          if (!c.publishing) throw new Error(`${name} is not publishing`);
          results.push(toJson(await c.publishing));
          break;
        }
        case "collect": {
          const c = client(name);
          const picked = () => {
            const out = [];
            c.events.forEach(([event, payload], i) => {
              if (event === step.event) out.push([payload, c.transports?.[i] ?? null]);
            });
            return out;
          };
          const found = await waitUntil(
            () => {
              const out = picked();
              if (step.until) {
                const end = out.findIndex(([payload]) => matches(payload, step.until));
                return end >= 0 ? out.slice(0, end + 1) : undefined;
              }
              return out.length >= step.count ? out.slice(0, step.count) : undefined;
            },
            `${name} collecting ${step.count ?? JSON.stringify(step.until)} ${step.event}; ` +
              `got ${picked().length}`,
          );
          results.push(toJson(found));
          break;
        }
        default:
          throw new Error(`unknown action ${step.action}`);
      }
    }
    process.stdout.write(JSON.stringify({ results }) + "\n");
    process.exitCode = 0;
  } catch (err) {
    process.stdout.write(JSON.stringify({ error: String(err?.stack ?? err), results }) + "\n");
    process.exitCode = 1;
  } finally {
    for (const { socket } of clients.values()) socket.disconnect();
  }
}

await main();
