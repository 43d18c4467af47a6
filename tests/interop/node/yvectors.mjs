// y-protocols test vectors from the real yjs, y-protocols, lib0 and y-websocket, as JSON.
//
// Usage:
//   node yvectors.mjs vectors          -> {"vectors": [...]}   (see test_yprotocol_vectors.py)
//   node yvectors.mjs decode < in.json -> {"decoded": [...]}
//
// vectors: every vector is {name, kind, hex, ...expected fields}; hex is one whole
// y-websocket message, built the way y-websocket builds it (its message type, then the
// y-protocols writer), so the bytes are the real packages' own.
//
//   sync       {sub: "step1" | "step2" | "update", payload: hex, text?}
//   awareness  {update: hex, entries: [{clientId, clock, state}]}  (state: the JSON text),
//              and for removals removed: [[clientId, clock before]] and bump (whether the
//              removal carries clock + 1)
//   auth       {reason}
//   query      {}
//
// decode: the input is {"messages": [{name, hex}]}; each message is read with lib0's
// decoder and the y-protocols readers (sync payloads applied to a fresh Y.Doc, every
// awareness update applied in order to one observer Awareness), and reported as
// {name, type, ..., rest} where rest counts the bytes the readers left unread.

import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as authProtocol from 'y-protocols/auth'
import {
  messageSync, messageAwareness, messageAuth, messageQueryAwareness
} from 'y-websocket'

const hex = (u8) => Buffer.from(u8).toString('hex')
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'))

const message = (type, write) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, type)
  write(encoder)
  return encoding.toUint8Array(encoder)
}

const awarenessMessage = (update) =>
  message(messageAwareness, (e) => encoding.writeVarUint8Array(e, update))

// fixed client ids make the vectors the same on every run
const docWithId = (clientID) => {
  const doc = new Y.Doc()
  doc.clientID = clientID
  return doc
}

const entriesOf = (awareness, clients) => clients.map((clientId) => ({
  clientId,
  clock: awareness.meta.get(clientId).clock,
  state: JSON.stringify(awareness.states.get(clientId) || null)
}))

const makeVectors = () => {
  const vectors = []
  const addSync = (name, sub, writer, payload, extra = {}) => {
    vectors.push({
      name, kind: 'sync', sub, payload: hex(payload),
      hex: hex(message(messageSync, writer)), ...extra
    })
  }

  // --- sync ---
  const empty = docWithId(7)
  addSync('step1 of an empty doc', 'step1', (e) => syncProtocol.writeSyncStep1(e, empty),
    Y.encodeStateVector(empty))

  const doc = docWithId(1)
  const text = doc.getText('t')
  const updates = []
  doc.on('update', (update) => updates.push(update))
  text.insert(0, 'hello world')
  text.insert(5, ', dear')
  text.delete(0, 1)
  text.insert(0, 'H\u00e9\u{1F600}')
  const names = ['insert', 'insert in the middle', 'delete', 'insert, multi-byte UTF-8']
  updates.forEach((update, i) => {
    addSync(`update: ${names[i]}`, 'update', (e) => syncProtocol.writeUpdate(e, update), update)
  })
  addSync('step1 of a doc with text', 'step1', (e) => syncProtocol.writeSyncStep1(e, doc),
    Y.encodeStateVector(doc))
  // the answer to the empty doc's step 1, read by the same reader y-websocket's server uses
  const answer = message(messageSync, (e) => {
    const step1 = decoding.createDecoder(message(messageSync, (w) => syncProtocol.writeSyncStep1(w, empty)))
    decoding.readVarUint(step1)
    syncProtocol.readSyncMessage(step1, e, doc, null)
  })
  vectors.push({
    name: 'step2 answering an empty step1', kind: 'sync', sub: 'step2',
    payload: hex(Y.encodeStateAsUpdate(doc, Y.encodeStateVector(empty))),
    hex: hex(answer), text: text.toString()
  })
  // a doc that has the first update only: step 2 sends the difference
  const partial = docWithId(2)
  Y.applyUpdate(partial, updates[0])
  const diff = Y.encodeStateAsUpdate(doc, Y.encodeStateVector(partial))
  addSync('step2 with a difference', 'step2',
    (e) => syncProtocol.writeSyncStep2(e, doc, Y.encodeStateVector(partial)), diff)

  // lengths that need two and three varUint bytes
  const big = docWithId(300)
  big.getText('t').insert(0, 'x'.repeat(100) + '\u00fc'.repeat(10))
  addSync('step2 over 127 bytes', 'step2', (e) => syncProtocol.writeSyncStep2(e, big),
    Y.encodeStateAsUpdate(big), { text: big.getText('t').toString() })
  const huge = docWithId(2 ** 32 - 1)
  huge.getText('t').insert(0, 'abcdefghij'.repeat(2000))
  addSync('step2 over 16383 bytes', 'step2', (e) => syncProtocol.writeSyncStep2(e, huge),
    Y.encodeStateAsUpdate(huge), { text: huge.getText('t').toString() })

  // --- awareness ---
  const awarenesses = []
  const peer = (clientID, state) => {
    const a = new awarenessProtocol.Awareness(docWithId(clientID))
    awarenesses.push(a)
    if (state !== undefined) a.setLocalState(state)
    return a
  }
  const alice = peer(1, { user: { name: 'Alice', color: '#ff0000' }, cursor: { index: 3 } })
  const bob = peer(300, { user: { name: 'B\u00f6b \u{1F600}' }, cursor: null })
  // clocks past 127 take two bytes
  const carol = peer(2 ** 32 - 1)
  for (let i = 0; i < 200; i++) carol.setLocalState({ n: i, list: [1, 2.5, 'x', true, null] })
  const addAwareness = (name, update, extra = {}) => {
    vectors.push({ name, kind: 'awareness', update: hex(update), hex: hex(awarenessMessage(update)), ...extra })
  }
  addAwareness('one client', awarenessProtocol.encodeAwarenessUpdate(alice, [1]),
    { entries: entriesOf(alice, [1]) })

  // y-websocket's server: a state-less Awareness that every client's update is applied to
  const server = peer(99)
  server.setLocalState(null)
  for (const a of [alice, bob, carol]) {
    awarenessProtocol.applyAwarenessUpdate(server, awarenessProtocol.encodeAwarenessUpdate(a, [a.clientID]), 'conn')
  }
  const all = Array.from(server.getStates().keys())
  addAwareness('three clients, as the server sends them on connect',
    awarenessProtocol.encodeAwarenessUpdate(server, all), { entries: entriesOf(server, all) })

  // what the server broadcasts when a connection closes: removeAwarenessStates on the
  // clients that connection controlled, encoded from the 'update' event
  const clocksBefore = entriesOf(server, [1, 300])
  let removal = null
  const onUpdate = ({ added, updated, removed }) => {
    removal = awarenessProtocol.encodeAwarenessUpdate(server, added.concat(updated, removed))
  }
  server.on('update', onUpdate)
  awarenessProtocol.removeAwarenessStates(server, [1, 300], null)
  server.off('update', onUpdate)
  addAwareness('removal of remote clients (removeAwarenessStates)', removal, {
    entries: entriesOf(server, [1, 300]),
    removed: clocksBefore.map(({ clientId, clock }) => [clientId, clock]), bump: false
  })

  // removeAwarenessStates on the awareness' own client id bumps its clock
  const ownBefore = bob.meta.get(300).clock
  removal = null
  const onOwn = ({ added, updated, removed }) => {
    removal = awarenessProtocol.encodeAwarenessUpdate(bob, added.concat(updated, removed))
  }
  bob.on('update', onOwn)
  awarenessProtocol.removeAwarenessStates(bob, [300], 'app closed')
  bob.off('update', onOwn)
  addAwareness('removal of the own client (removeAwarenessStates)', removal, {
    entries: entriesOf(bob, [300]), removed: [[300, ownBefore]], bump: true
  })

  // y-websocket's client on disconnect: its own id, current clock, state null
  addAwareness('disconnect (y-websocket disconnectBc)',
    awarenessProtocol.encodeAwarenessUpdate(alice, [1], new Map()),
    {
      entries: [{ clientId: 1, clock: alice.meta.get(1).clock, state: 'null' }],
      removed: [[1, alice.meta.get(1).clock]],
      bump: false
    })
  addAwareness('no clients', awarenessProtocol.encodeAwarenessUpdate(alice, []), { entries: [] })

  // --- auth and query-awareness ---
  for (const reason of ['', 'Permission denied: read-only room \u2713 \u{1F6AB}']) {
    vectors.push({
      name: `auth permission denied "${reason.slice(0, 17)}"`, kind: 'auth', reason,
      hex: hex(message(messageAuth, (e) => authProtocol.writePermissionDenied(e, reason)))
    })
  }
  vectors.push({ name: 'query-awareness', kind: 'query', hex: hex(message(messageQueryAwareness, () => {})) })

  awarenesses.forEach((a) => a.destroy())
  return vectors
}

const decodeAll = (messages) => {
  const observerDoc = docWithId(424242)
  const observer = new awarenessProtocol.Awareness(observerDoc)
  observer.setLocalState(null)
  const out = messages.map(({ name, hex: h }) => {
    const decoder = decoding.createDecoder(unhex(h))
    const type = decoding.readVarUint(decoder)
    const result = { name, type }
    if (type === messageSync) {
      // read the fields by hand first, then once more through y-protocols' reader
      const copy = decoding.clone(decoder)
      result.sub = decoding.readVarUint(copy)
      result.payload = hex(decoding.readVarUint8Array(copy))
      const doc = docWithId(5)
      let failed = null
      const reply = encoding.createEncoder()
      syncProtocol.readSyncMessage(decoder, reply, doc, null, (err) => { failed = String(err) })
      if (failed !== null) result.error = failed
      if (result.sub === syncProtocol.messageYjsSyncStep1) {
        result.stateVector = Object.fromEntries(Y.decodeStateVector(unhex(result.payload)))
      } else {
        result.text = doc.getText('t').toString()
      }
    } else if (type === messageAwareness) {
      const update = decoding.readVarUint8Array(decoder)
      const entries = []
      const inner = decoding.createDecoder(update)
      const count = decoding.readVarUint(inner)
      for (let i = 0; i < count; i++) {
        entries.push({
          clientId: decoding.readVarUint(inner),
          clock: decoding.readVarUint(inner),
          state: JSON.parse(decoding.readVarString(inner))
        })
      }
      result.entries = entries
      result.updateRest = inner.arr.length - inner.pos
      awarenessProtocol.applyAwarenessUpdate(observer, update, 'python')
      result.observed = Array.from(observer.getStates().entries())
        .map(([clientId, state]) => ({ clientId, clock: observer.meta.get(clientId).clock, state }))
    } else if (type === messageAuth) {
      authProtocol.readAuthMessage(decoder, observerDoc, (_doc, reason) => { result.reason = reason })
    } else if (type !== messageQueryAwareness) {
      result.error = `unknown message type ${type}`
    }
    result.rest = decoder.arr.length - decoder.pos
    return result
  })
  observer.destroy()
  return out
}

const readStdin = async () => {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8')
}

const main = async () => {
  const mode = process.argv[2]
  if (mode === 'vectors') {
    process.stdout.write(JSON.stringify({ vectors: makeVectors() }) + '\n')
  } else if (mode === 'decode') {
    const { messages } = JSON.parse(await readStdin())
    process.stdout.write(JSON.stringify({ decoded: decodeAll(messages) }) + '\n')
  } else {
    throw new Error(`usage: node yvectors.mjs vectors|decode, not ${mode}`)
  }
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }) + '\n')
  process.exitCode = 1
})
