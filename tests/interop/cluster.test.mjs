// Interop on several nodes (issue #11): stock npm yjs + y-websocket clients spread over three
// `tandem` processes sharing one PostgreSQL database. Needs TANDEM_TEST_DATABASE_URL (an
// empty database; .ci/run creates one); without it the file skips.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { startServer } from '../support/tandem-process.mjs'

const DB = process.env.TANDEM_TEST_DATABASE_URL
const skip = DB ? false : 'TANDEM_TEST_DATABASE_URL is not set (an empty PostgreSQL database)'

async function waitFor (predicate, what, timeout = 15000) {
  const deadline = Date.now() + timeout
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

process.setMaxListeners(100)
const providers = []
function connect (node, room, doc = new Y.Doc()) {
  const provider = new WebsocketProvider(`ws://${node.addr}/ws`, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    maxBackoffTime: 200
  })
  providers.push(provider)
  return { doc, provider, text: doc.getText('t') }
}
const synced = c => waitFor(() => c.provider.synced, 'sync')

let dataDir
const nodes = []
before(async () => {
  if (skip) return
  dataDir = mkdtempSync(join(tmpdir(), 'tandem-cluster-'))
  for (let i = 0; i < 3; i++) {
    nodes.push(await startServer(dataDir, { args: ['--database-url', DB, '--node-id', `node-${i}`] }))
  }
})
after(async () => {
  for (const p of providers) {
    p.destroy()
    p.awareness.destroy()
    p.doc.destroy()
  }
  for (const n of nodes) n.child.kill('SIGKILL')
  if (dataDir) rmSync(dataDir, { recursive: true, force: true })
})

test('stock clients on three nodes converge, and a late joiner on any node has it all', { skip }, async () => {
  const clients = nodes.flatMap(n => [connect(n, 'spread'), connect(n, 'spread')])
  await Promise.all(clients.map(synced))
  for (let round = 0; round < 10; round++) {
    clients.forEach((c, i) => c.text.insert(c.text.length, `<${i}.${round}>`))
    await new Promise(resolve => setTimeout(resolve, 5))
  }
  const all = clients.length * 10
  await waitFor(() => clients.every(c => (c.text.toString().match(/</g) || []).length === all), 'every edit everywhere')
  const text = clients[0].text.toString()
  for (const c of clients) assert.equal(c.text.toString(), text)
  for (const n of nodes) {
    const late = connect(n, 'spread')
    await synced(late)
    await waitFor(() => late.text.toString() === text, `late joiner on ${n.addr}`)
  }
})

test('presence crosses nodes and goes when its client leaves', { skip }, async () => {
  const a = connect(nodes[0], 'cursors')
  const b = connect(nodes[1], 'cursors')
  await Promise.all([synced(a), synced(b)])
  a.provider.awareness.setLocalStateField('user', { name: 'Ada' })
  const aId = a.doc.clientID
  await waitFor(() => b.provider.awareness.getStates().get(aId)?.user?.name === 'Ada', "Ada's cursor on node 1")
  a.provider.disconnect()
  await waitFor(() => !b.provider.awareness.getStates().has(aId), "Ada's cursor gone from node 1")
})

test('a client whose node is killed moves to another node and loses nothing', { skip }, async () => {
  const victim = nodes[2]
  const mover = connect(victim, 'move')
  const stayer = connect(nodes[0], 'move')
  await Promise.all([synced(mover), synced(stayer)])
  mover.text.insert(0, 'before ')
  await waitFor(() => stayer.text.toString() === 'before ', 'the first edit on node 0')
  victim.child.kill('SIGKILL')
  await victim.exited
  // Offline while it finds a new node, it keeps typing; then a new provider on node 1
  // (what a load balancer would pick) resyncs it by state vector.
  mover.text.insert(mover.text.length, 'offline ')
  mover.provider.destroy()
  const moved = connect(nodes[1], 'move', mover.doc)
  await synced(moved)
  stayer.text.insert(stayer.text.length, 'meanwhile ')
  const expected = t => t.includes('before ') && t.includes('offline ') && t.includes('meanwhile ')
  await waitFor(() => expected(moved.text.toString()) && expected(stayer.text.toString()), 'both edits on both nodes')
  assert.equal(moved.text.toString(), stayer.text.toString())
})
