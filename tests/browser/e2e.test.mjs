// End-to-end: the editor served by a real `tandem` process, used from Debian's Chromium
// through playwright-core. Needs /usr/bin/chromium (or CHROMIUM), Node 18+ and the tandem
// binary with the editor built (TANDEM_BIN, default ../../target/debug/tandem).
// Screenshots go to ARTIFACTS (default ../../target/artifacts).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import { ROOT, startServer as start } from '../support/tandem-process.mjs'

// The editor built into the binary, unless TANDEM_WEB_DIR points at a build to try.
const WEB = process.env.TANDEM_WEB_DIR ?? null
const ARTIFACTS = process.env.ARTIFACTS || join(ROOT, 'target', 'artifacts')
const startServer = (dataDir, listen) => start(dataDir, { listen, webDir: WEB })
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'

async function stopServer (server) {
  server.child.kill('SIGTERM')
  assert.equal(await server.exited, 0, 'tandem exits 0 on SIGTERM')
}

let browser, dataDir, server
const contexts = []

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true })
  dataDir = mkdtempSync(join(tmpdir(), 'tandem-e2e-'))
  server = await startServer(dataDir)
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic']
  })
})

after(async () => {
  for (const c of contexts) await c.close().catch(() => {})
  if (browser) await browser.close()
  if (server) server.child.kill('SIGKILL')
  rmSync(dataDir, { recursive: true, force: true })
})

/** A person: their own browser profile (own localStorage, IndexedDB, identity). */
async function person (name) {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 } })
  contexts.push(context)
  await context.addInitScript(n => { if (!localStorage.getItem('tandem.name')) localStorage.setItem('tandem.name', n) }, name)
  return context
}

const url = path => `http://${server.addr}${path}`

async function openEditor (context, doc) {
  const page = await context.newPage()
  page.on('pageerror', e => console.error('page error:', e.message))
  await page.goto(url(`/d/${doc}`))
  await waitConnected(page)
  return page
}

async function waitConnected (page) {
  await page.waitForFunction(() => document.getElementById('status')?.dataset.state === 'connected', null, { timeout: 15000 })
  await page.waitForFunction(() => document.getElementById('saved')?.dataset.state === 'saved', null, { timeout: 15000 })
}

const text = page => page.evaluate(() => window.tandem.editor.getText())
const myColor = page => page.evaluate(() => window.tandem.provider.awareness.getLocalState().user.color)

async function typeAtEnd (page, s) {
  // Tiptap applies focus on the next animation frame; keys pressed before that go nowhere.
  await page.evaluate(() => window.tandem.editor.commands.focus('end'))
  await page.waitForFunction(() => window.tandem.editor.isFocused)
  await page.keyboard.type(s, { delay: 5 })
}

async function converge (pages, predicate = () => true, timeout = 15000) {
  const deadline = Date.now() + timeout
  for (;;) {
    const texts = await Promise.all(pages.map(text))
    if (texts.every(t => t === texts[0]) && predicate(texts[0])) return texts[0]
    if (Date.now() > deadline) throw new Error('no convergence: ' + JSON.stringify(texts))
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

function isSubsequence (needle, haystack) {
  let i = 0
  for (const ch of haystack) if (ch === needle[i]) i++
  return i === needle.length
}

function rgb (hex) {
  const n = parseInt(hex.slice(1), 16)
  return `rgb(${n >> 16}, ${(n >> 8) & 255}, ${n & 255})`
}

/** Remote carets drawn on `page`: [{ name, color }] */
const carets = page => page.evaluate(() => [...document.querySelectorAll('.collaboration-carets__caret')].map(c => ({
  name: c.querySelector('.collaboration-carets__label')?.textContent,
  color: getComputedStyle(c).borderLeftColor
})))

async function waitCaret (page, name, color) {
  const deadline = Date.now() + 15000
  for (;;) {
    const found = await carets(page)
    if (found.some(c => c.name === name && (!color || c.color === rgb(color)))) return
    if (Date.now() > deadline) throw new Error(`no caret for ${name} ${color}: ${JSON.stringify(found)}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

test('two people type together, see each other\'s carets in server-assigned colours; a third gets a third colour', async () => {
  const ada = await person('Ada Lovelace')
  const bob = await person('Bob Kahn')
  const pa = await openEditor(ada, 'together')
  const pb = await openEditor(bob, 'together')
  await typeAtEnd(pa, 'Hello from Ada.')
  await converge([pa, pb], t => t === 'Hello from Ada.')
  // Both type at once; the CRDT may interleave concurrent keystrokes, but keeps every one.
  const sa = ' Ada again.'
  const sb = ' And Bob here.'
  await Promise.all([typeAtEnd(pa, sa), typeAtEnd(pb, sb)])
  const both = await converge([pa, pb], t => t.length === 15 + sa.length + sb.length)
  assert.ok(both.startsWith('Hello from Ada.') && isSubsequence(sa, both) && isSubsequence(sb, both), both)

  const [ca, cb] = [await myColor(pa), await myColor(pb)]
  assert.match(ca, /^#[0-9a-f]{6}$/)
  assert.notEqual(ca, cb, 'two people, two colours')
  await waitCaret(pa, 'Bob Kahn', cb)
  await waitCaret(pb, 'Ada Lovelace', ca)

  // Two editors side by side with their remote carets, for people to look at.
  const shots = [await pa.screenshot(), await pb.screenshot()]
  const viewer = await (await person('viewer')).newPage()
  await viewer.setViewportSize({ width: 1820, height: 660 })
  await viewer.setContent(`<body style="margin:0;display:flex;gap:20px;background:#cfd4dc;padding:10px">${shots
    .map(s => `<img src="data:image/png;base64,${s.toString('base64')}" style="border:1px solid #999">`).join('')}</body>`)
  await viewer.screenshot({ path: join(ARTIFACTS, 'two-editors.png') })

  const cy = await person('Cy Twombly')
  const pc = await openEditor(cy, 'together')
  const cc = await myColor(pc)
  assert.equal(new Set([ca, cb, cc]).size, 3, `three distinct colours: ${ca} ${cb} ${cc}`)
  await typeAtEnd(pc, ' Cy too.')
  await converge([pa, pb, pc], t => t.includes('Cy too.'))
  await waitCaret(pa, 'Cy Twombly', cc)

  // The same browser coming back gets the same colour.
  await pb.reload()
  await waitConnected(pb)
  assert.equal(await myColor(pb), cb)

  // A closed context's caret leaves the others' screens within seconds.
  await cy.close()
  const deadline = Date.now() + 5000
  while ((await carets(pa)).some(c => c.name === 'Cy Twombly')) {
    assert.ok(Date.now() < deadline, 'closed person\'s caret still shown after 5 s')
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  const people = await pa.evaluate(() => [...document.querySelectorAll('.person')].map(p => p.dataset.name))
  assert.deepEqual(people.sort(), ['Ada Lovelace', 'Bob Kahn'])
})

test('undo takes back only your own edits', async () => {
  // Zoe writes the paragraph both others then type into, so neither owns its structure.
  const pz = await openEditor(await person('Zoe'), 'undo')
  await typeAtEnd(pz, 'Start.')
  const pa = await openEditor(await person('Ada'), 'undo')
  const pb = await openEditor(await person('Bob'), 'undo')
  await converge([pa, pb, pz], t => t === 'Start.')
  await typeAtEnd(pa, ' Ada.')
  await converge([pa, pb], t => t === 'Start. Ada.')
  await typeAtEnd(pb, ' Bob.')
  await converge([pa, pb], t => t === 'Start. Ada. Bob.')
  // Close each person's typing as one undo step (instead of waiting out the capture window).
  await Promise.all([pa, pb].map(p => p.evaluate(() => {
    const { state } = window.tandem.editor
    const undo = state.plugins.find(plugin => plugin.key.startsWith('y-undo'))
    undo.getState(state).undoManager.stopCapturing()
  })))

  await pb.keyboard.press('Control+z') // Bob undoes: his words go, Ada's stay
  await converge([pa, pb], t => t === 'Start. Ada.')
  await pb.keyboard.press('Control+Shift+z')
  await converge([pa, pb], t => t === 'Start. Ada. Bob.')
  await pa.keyboard.press('Control+z') // Ada undoes: only her words go
  await converge([pa, pb, pz], t => t === 'Start. Bob.')
})

test('offline: both sides edit, the offline side comes back, nothing is lost', async () => {
  const ada = await person('Ada')
  const bob = await person('Bob')
  const pa = await openEditor(ada, 'offline')
  const pb = await openEditor(bob, 'offline')
  await typeAtEnd(pa, 'Shared start.')
  await converge([pa, pb], t => t === 'Shared start.')

  await bob.setOffline(true)
  await pb.waitForFunction(() => document.getElementById('status').dataset.state === 'offline')
  await typeAtEnd(pb, ' Bob offline.')
  await typeAtEnd(pa, ' Ada online.')
  // Ada's edit made the round trip (the server echoed it after its commit), so anything
  // Bob could have leaked would have reached her by now.
  await pa.waitForFunction(() => document.getElementById('saved').dataset.state === 'saved')
  assert.ok(!(await text(pa)).includes('Bob offline'), 'offline edits must not arrive while offline')
  assert.equal(await pb.evaluate(() => document.getElementById('saved').dataset.state), 'local')

  await bob.setOffline(false)
  const merged = await converge([pa, pb], t => t.includes('Bob offline.') && t.includes('Ada online.'))
  assert.ok(merged.startsWith('Shared start.'))
  await waitConnected(pb)
})

test('an offline reload keeps the offline edits, which sync later', async () => {
  const ada = await person('Ada')
  const bob = await person('Bob')
  const pa = await openEditor(ada, 'reload-offline')
  const pb = await openEditor(bob, 'reload-offline')
  await typeAtEnd(pa, 'Before.')
  await converge([pa, pb], t => t === 'Before.')
  // Let the service worker take control so the page can load without a network.
  await pb.waitForFunction(() => navigator.serviceWorker?.controller != null || navigator.serviceWorker.ready.then(() => true), null, { timeout: 10000 })
  await pb.reload()
  await waitConnected(pb)

  await bob.setOffline(true)
  await pb.waitForFunction(() => document.getElementById('status').dataset.state === 'offline')
  await typeAtEnd(pb, ' Typed offline, then reloaded.')
  // y-indexeddb writes each update in its own IndexedDB transaction; a read-write
  // transaction opened now completes only after all of them (IndexedDB runs overlapping
  // read-write transactions in order), so then the edit is on disk.
  await pb.evaluate(async () => {
    const db = await window.tandem.local._db
    await new Promise((resolve, reject) => {
      const tx = db.transaction(['updates'], 'readwrite')
      tx.oncomplete = resolve
      tx.onerror = () => reject(tx.error)
    })
  })
  await pb.reload()
  await pb.waitForFunction(() => window.tandem?.editor.getText().includes('Typed offline, then reloaded.'), null, { timeout: 10000 })
  assert.equal(await pb.evaluate(() => document.getElementById('status').dataset.state), 'offline')

  await bob.setOffline(false)
  await converge([pa, pb], t => t.includes('Typed offline, then reloaded.'))
})

test('server restart: a reload shows the document intact, and the editor reconnects by itself', async () => {
  const ada = await person('Ada')
  const pa = await openEditor(ada, 'restart')
  await typeAtEnd(pa, 'Written before the restart.')
  await pa.waitForFunction(() => document.getElementById('saved').dataset.state === 'saved')

  const port = server.addr.split(':').pop()
  await stopServer(server)
  await pa.waitForFunction(() => document.getElementById('status').dataset.state !== 'connected')
  server = await startServer(dataDir, `127.0.0.1:${port}`)
  await waitConnected(pa) // backoff reconnect, no reload

  const fresh = await openEditor(await person('Zoe'), 'restart')
  assert.equal(await text(fresh), 'Written before the restart.')
  await pa.reload()
  await waitConnected(pa)
  assert.equal(await text(pa), 'Written before the restart.')
})

test('the document list shows a document created in the editor, with who is in it', async () => {
  const ada = await person('Ada')
  const pa = await openEditor(ada, 'listed-doc')
  await typeAtEnd(pa, 'Now I exist.')
  await pa.waitForFunction(() => document.getElementById('saved').dataset.state === 'saved')
  const home = await ada.newPage()
  await home.goto(url('/'))
  const row = home.locator('li.doc[data-doc="listed-doc"]')
  await row.waitFor({ timeout: 10000 })
  assert.match(await row.textContent(), /1 person here/)
  await home.setViewportSize({ width: 390, height: 800 })
  await home.screenshot({ path: join(ARTIFACTS, 'home-phone.png') })
  await pa.setViewportSize({ width: 390, height: 800 })
  await pa.screenshot({ path: join(ARTIFACTS, 'editor-phone.png') })
})

test('the documents API reads what is typed in the editor, and a Markdown PUT appears in the open editor', async () => {
  const ada = await person('Ada')
  const pa = await openEditor(ada, 'api-doc')
  await typeAtEnd(pa, 'Typed in the ')
  await pa.keyboard.press('Control+b')
  await pa.keyboard.type('browser', { delay: 5 })
  await pa.keyboard.press('Control+b')
  await pa.keyboard.type('.', { delay: 5 })
  await pa.waitForFunction(() => document.getElementById('saved').dataset.state === 'saved')
  const deadline = Date.now() + 10000
  let markdown
  for (;;) {
    markdown = await (await fetch(url('/api/docs/api-doc/content?format=markdown'))).text()
    if (markdown === 'Typed in the **browser**.\n' || Date.now() > deadline) break
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  assert.equal(markdown, 'Typed in the **browser**.\n')

  await pa.evaluate(() => { window.__notReloaded = true })
  const response = await fetch(url('/api/docs/api-doc/content?format=markdown'), {
    method: 'PUT',
    headers: { 'content-type': 'text/markdown' },
    body: '# From the API\n\nA *new* paragraph and a list:\n\n- one\n- two\n'
  })
  assert.equal(response.status, 200, await response.clone().text())
  await pa.waitForFunction(() => window.tandem.editor.getHTML().includes('<h1>From the API</h1>'), null, { timeout: 10000 })
  const html = await pa.evaluate(() => window.tandem.editor.getHTML())
  assert.match(html, /<em>new<\/em>/)
  assert.match(html, /<ul><li><p>one<\/p><\/li><li><p>two<\/p><\/li><\/ul>/)
  assert.equal(await pa.evaluate(() => window.__notReloaded), true, 'no reload')
  // The editor keeps working on the new content.
  await typeAtEnd(pa, ' And more.')
  await pa.waitForFunction(() => document.getElementById('saved').dataset.state === 'saved')
  await pa.screenshot({ path: join(ARTIFACTS, 'api-put-in-editor.png') })
})
