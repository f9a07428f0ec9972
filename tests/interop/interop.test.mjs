// Interop: the stock npm `yjs` + `y-websocket` client (exactly what browsers run) against a
// real `tandem` process. Needs only Node 18+ and the tandem binary
// (TANDEM_BIN, default ../../target/debug/tandem). Run: npm test (after `cargo build`).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { startServer, tandemCli } from '../support/tandem-process.mjs'


async function waitFor (predicate, what, timeout = 10000) {
  const deadline = Date.now() + timeout
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

// Every provider registers a process 'exit' listener; a test file opens more than ten.
process.setMaxListeners(100)
const providers = []
function connect (server, room, doc = new Y.Doc(), params = {}) {
  const provider = new WebsocketProvider(`ws://${server.addr}/ws`, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    maxBackoffTime: 200,
    params
  })
  providers.push(provider)
  return { doc, provider, text: doc.getText('t') }
}
const synced = c => waitFor(() => c.provider.synced, 'sync')

let dataDir, server
before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'tandem-interop-'))
  server = await startServer(dataDir)
})
after(async () => {
  for (const p of providers) {
    p.destroy()
    p.awareness.destroy() // clears its renewal timer, which would keep Node alive
    p.doc.destroy()
  }
  if (server) server.child.kill('SIGKILL')
  rmSync(dataDir, { recursive: true, force: true })
})

test('two stock clients converge', async () => {
  const a = connect(server, 'converge')
  const b = connect(server, 'converge')
  await Promise.all([synced(a), synced(b)])
  a.text.insert(0, 'hello ')
  b.text.insert(0, 'world')
  await waitFor(() => a.text.length === 11 && b.text.length === 11, 'both edits everywhere')
  assert.equal(a.text.toString(), b.text.toString())
})

test('late joiner receives the whole document', async () => {
  const a = connect(server, 'late')
  await synced(a)
  for (let i = 0; i < 100; i++) a.text.insert(a.text.length, `${i},`)
  const expected = a.text.toString()
  const late = connect(server, 'late')
  await waitFor(() => late.text.toString() === expected, 'late joiner content')
})

test('offline edits merge when the connection returns', async () => {
  const a = connect(server, 'offline')
  const b = connect(server, 'offline')
  await Promise.all([synced(a), synced(b)])
  a.text.insert(0, 'base')
  await waitFor(() => b.text.toString() === 'base', 'base')
  b.provider.disconnect()
  a.text.insert(4, ' online')
  b.text.insert(0, 'offline ')
  // A fresh client seeing a's edit means the server committed and relayed it; had b's
  // offline edit leaked, it would be there too.
  const watcher = connect(server, 'offline')
  await waitFor(() => watcher.text.toString().includes('online'), 'a\'s edit at a fresh client')
  assert.equal(watcher.text.toString(), 'base online', 'offline edit must not leak')
  assert.equal(a.text.toString(), 'base online', 'offline edit must not leak')
  b.provider.connect()
  await waitFor(() => a.text.toString() === 'offline base online' && b.text.toString() === a.text.toString(), 'merge')
})

test('awareness arrives and is removed on clean close and on abrupt drop', async () => {
  const a = connect(server, 'presence')
  const b = connect(server, 'presence')
  const c = connect(server, 'presence')
  await Promise.all([synced(a), synced(b), synced(c)])
  a.provider.awareness.setLocalStateField('user', { name: 'Ada', color: '#e6194b' })
  c.provider.awareness.setLocalStateField('user', { name: 'Cy', color: '#3cb44b' })
  const seen = id => b.provider.awareness.getStates().get(id)
  await waitFor(() => seen(a.doc.clientID)?.user?.name === 'Ada' && seen(c.doc.clientID)?.user?.name === 'Cy', 'awareness')

  // Clean: the provider is destroyed (what closing a tab does).
  a.provider.destroy()
  await waitFor(() => !seen(a.doc.clientID), 'removal after clean close')

  // Abrupt: the TCP connection dies without a close frame or a goodbye awareness update;
  // only the server can retract the cursor.
  c.provider.shouldConnect = false
  c.provider.ws.terminate()
  await waitFor(() => !seen(c.doc.clientID), 'removal after abrupt drop')
})

test('garbage from one socket closes only that socket', async () => {
  const a = connect(server, 'hostile')
  await synced(a)
  a.text.insert(0, 'intact')
  const raw = new WebSocket(`ws://${server.addr}/ws/hostile`)
  await new Promise(resolve => raw.on('open', resolve))
  const closed = new Promise(resolve => raw.on('close', (code, reason) => resolve({ code, reason: reason.toString() })))
  raw.send(Buffer.from([0, 2, 50, 1, 2, 3]))
  const { code, reason } = await closed
  assert.equal(code, 1002, reason)
  a.text.insert(6, '!')
  const fresh = connect(server, 'hostile')
  await waitFor(() => fresh.text.toString() === 'intact!', 'room still healthy')
})

test('an invalid update inside a valid frame is refused with 1007', async () => {
  const a = connect(server, 'hostile2')
  await synced(a)
  a.text.insert(0, 'keep')
  const raw = new WebSocket(`ws://${server.addr}/ws/hostile2`)
  await new Promise(resolve => raw.on('open', resolve))
  const closed = new Promise(resolve => raw.on('close', code => resolve(code)))
  // messageSync, messageYjsUpdate, length 6, then bytes that are not a Yjs update.
  raw.send(Buffer.from([0, 2, 6, 3, 200, 7, 7, 7, 7]))
  assert.equal(await closed, 1007)
  const fresh = connect(server, 'hostile2')
  await waitFor(() => fresh.text.toString() === 'keep', 'room still healthy')
})

test('bad document name is an HTTP 400 with a reason', async () => {
  const res = await fetch(`http://${server.addr}/ws/bad%20name`)
  assert.equal(res.status, 400)
  assert.match(await res.text(), /invalid document name/)
})

test('SIGTERM closes sockets with 1001, exits 0, and a restart keeps every document', async () => {
  const a = connect(server, 'restart')
  await synced(a)
  a.text.insert(0, 'survives restarts')
  // Peers receive an update only after its commit: once a second client has it, it is durable.
  const watcher = connect(server, 'restart')
  await waitFor(() => watcher.text.toString() === 'survives restarts', 'the committed edit')
  watcher.provider.shouldConnect = false
  const raw = new WebSocket(`ws://${server.addr}/ws/restart`)
  await new Promise(resolve => raw.on('open', resolve))
  const closed = new Promise(resolve => raw.on('close', code => resolve(code)))
  a.provider.shouldConnect = false
  server.child.kill('SIGTERM')
  assert.equal(await closed, 1001)
  assert.equal(await server.exited, 0)

  server = await startServer(dataDir)
  const b = connect(server, 'restart')
  await waitFor(() => b.text.toString() === 'survives restarts', 'content after restart')
  const c = connect(server, 'converge')
  await synced(c)
  assert.equal(c.text.length, 11)
})

// Access control, with tokens minted by the CLI (`tandem token`), carried as the stock
// provider's `params.token`.
const SECRET = 'interop secret'
test('with a token the stock provider edits, and a read-only one only watches', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tandem-interop-auth-'))
  const secured = await startServer(dir, { args: ['--auth-secret', SECRET] })
  try {
    const env = { TANDEM_AUTH_SECRET: SECRET }
    const rw = await tandemCli(['token', '--doc', 'team.*', '--sub', 'writer'], env)
    const ro = await tandemCli(['token', '--doc', 'team.plan:r', '--sub', 'reader'], env)
    const writer = connect(secured, 'team.plan', new Y.Doc(), { token: rw })
    const reader = connect(secured, 'team.plan', new Y.Doc(), { token: ro })
    await Promise.all([synced(writer), synced(reader)])
    writer.text.insert(0, 'from the writer')
    await waitFor(() => reader.text.toString() === 'from the writer', 'the reader sees the edit')
    // The reader edits locally; the server applies, stores and relays none of it.
    let denied = null
    reader.provider.on('connection-close', () => {})
    const originalWarn = console.warn
    console.warn = (...a) => { denied = a.join(' '); }
    reader.text.insert(0, 'sneaky ')
    await waitFor(() => denied !== null, 'permission denied from the server')
    console.warn = originalWarn
    assert.match(denied, /read-only/)
    writer.text.insert(writer.text.length, '!')
    await waitFor(() => reader.text.toString().endsWith('!'), 'the reader still follows')
    assert.equal(writer.text.toString(), 'from the writer!', 'the read-only edit reached nobody')
    const late = connect(secured, 'team.plan', new Y.Doc(), { token: rw })
    await synced(late)
    assert.equal(late.text.toString(), 'from the writer!')
    assert.ok(reader.provider.wsconnected, 'the read-only provider stays connected')
    // Without a token the stock provider is closed with 4401 and, by its default
    // shouldReconnect, stops trying.
    const anonymous = connect(secured, 'team.plan')
    const closed = await new Promise(resolve => anonymous.provider.on('connection-close', e => resolve(e)))
    assert.equal(closed.code, 4401)
  } finally {
    secured.child.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
})
