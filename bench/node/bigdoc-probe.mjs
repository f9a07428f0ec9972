// Ad-hoc probe (not part of the suite): echo latency of a small room while one 32 MiB
// document is being appended to (issue #8, defect 1). Usage, after bench/compare.sh has
// installed bench/node: node bench/node/bigdoc-probe.mjs path/to/tandem
import { spawn } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'

const bin = process.argv[2]
const dir = mkdtempSync(join(tmpdir(), 'bigdoc-'))
const child = spawn(bin, ['--listen', '127.0.0.1:0', '--data-dir', dir, '--web-dir=', '--compact-bytes', '4000000', '--sync', 'full'], { stdio: ['ignore', 'pipe', 'inherit'] })
const addr = await new Promise(resolve => { let log = ''; child.stdout.on('data', c => { log += c; const m = log.match(/listening addr=(\S+)/); if (m) resolve(m[1]) }) })
function frame (update) { const e = encoding.createEncoder(); encoding.writeVarUint(e, 0); encoding.writeVarUint(e, 2); encoding.writeVarUint8Array(e, update); return encoding.toUint8Array(e) }
async function open (room) { const ws = new WebSocket(`ws://${addr}/ws/${room}`); await new Promise(r => ws.on('open', r)); return ws }
const big = await open('big')
const doc = new Y.Doc(); const text = doc.getText('t')
let echoes = 0; big.on('message', d => { if (d[0] === 0 && d[1] === 2) echoes++ })
const chunk = 'x'.repeat(1 << 20)
for (let i = 0; i < 32; i++) {
  const before = Y.encodeStateVector(doc); text.insert(text.length, chunk)
  big.send(frame(Y.encodeStateAsUpdate(doc, before)))
  while (echoes < i + 1) await new Promise(r => setTimeout(r, 5))
}
await new Promise(r => setTimeout(r, 3000)) // let compaction finish
// Append small edits to the big doc continuously while a small room measures echo latency.
let stop = false
;(async () => { while (!stop) { const b = Y.encodeStateVector(doc); text.insert(text.length, 'y'); big.send(frame(Y.encodeStateAsUpdate(doc, b))); await new Promise(r => setTimeout(r, 5)) } })()
const small = await open('small'); const sdoc = new Y.Doc(); const st = sdoc.getText('t')
const lat = []; let pending = null
small.on('message', d => { if (d[0] === 0 && d[1] === 2 && pending) { lat.push(performance.now() - pending); pending = null } })
for (let i = 0; i < 200; i++) {
  const b = Y.encodeStateVector(sdoc); st.insert(st.length, 'z'); pending = performance.now()
  small.send(frame(Y.encodeStateAsUpdate(sdoc, b)))
  while (pending) await new Promise(r => setTimeout(r, 1))
  await new Promise(r => setTimeout(r, 10))
}
stop = true
lat.sort((a, b) => a - b)
console.log(`${bin}: small-room echo p50 ${lat[100].toFixed(2)} ms, p99 ${lat[197].toFixed(2)} ms`)
child.kill('SIGTERM'); process.exit(0)
