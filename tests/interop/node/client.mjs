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
// Bytes travel as {"$bytes": "<hex>"} in the scenario and in the results; they are real
// Buffers (Socket.IO binary attachments) on the wire.

import { io } from "socket.io-client";

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
