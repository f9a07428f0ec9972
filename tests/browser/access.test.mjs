// The editor under access control, in Debian's Chromium: share links carry the token in
// the fragment, a read-only link shows a view-only document with live carets, and a
// refused link says why once instead of reconnecting in a loop.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import { ROOT, startServer, tandemCli } from '../support/tandem-process.mjs'

const SECRET = 'browser test secret'
const ARTIFACTS = process.env.ARTIFACTS || join(ROOT, 'target', 'artifacts')
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const env = { TANDEM_AUTH_SECRET: SECRET }

let browser, dataDir, server, base
const contexts = []

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true })
  dataDir = mkdtempSync(join(tmpdir(), 'tandem-access-'))
  server = await startServer(dataDir, { webDir: process.env.TANDEM_WEB_DIR ?? null, args: ['--auth-secret', SECRET] })
  base = `http://${server.addr}`
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

async function open (link) {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 } })
  contexts.push(context)
  const page = await context.newPage()
  page.on('pageerror', e => console.error('page error:', e.message))
  const sockets = []
  page.on('websocket', ws => sockets.push(ws.url()))
  await page.goto(link)
  return { page, sockets }
}

const connected = page => page.waitForFunction(
  () => document.getElementById('status')?.dataset.state === 'connected', null, { timeout: 15000 })
  .catch(async e => {
    console.error('state:', await page.evaluate(() => ({ status: document.getElementById('status').dataset.state, text: document.getElementById('status').textContent, synced: window.tandem.provider.synced, ws: window.tandem.provider.wsconnected, blocked: document.getElementById('blocked').textContent })))
    throw e
  })
const text = page => page.evaluate(() => window.tandem.editor.getText())

test('a share link edits; a read-only link watches with live carets and a View only badge', async () => {
  const writeLink = await tandemCli(['share', 'plan', '--base-url', base], env)
  const readLink = await tandemCli(['share', 'plan', '--read-only', '--base-url', base], env)
  assert.match(writeLink, /\/d\/plan#token=/)

  const writer = await open(writeLink)
  await connected(writer.page)
  assert.equal(await writer.page.evaluate(() => location.hash), '', 'the token leaves the address bar')
  assert.match(writer.sockets[0], /[?&]token=/, 'and travels as params.token')
  // Tiptap applies focus on the next animation frame; keys pressed before that go nowhere.
  await writer.page.evaluate(() => window.tandem.editor.commands.focus('end'))
  await writer.page.waitForFunction(() => window.tandem.editor.isFocused)
  await writer.page.keyboard.type('Hello from the writer', { delay: 5 })

  const reader = await open(readLink)
  await connected(reader.page)
  await reader.page.waitForFunction(() => window.tandem.editor.getText().includes('Hello from the writer'), null, { timeout: 15000 })
  assert.equal(await reader.page.isVisible('#view-only'), true, 'View only badge')
  assert.equal(await reader.page.evaluate(() => window.tandem.editor.isEditable), false)
  // Typing into a view-only editor changes nothing, here or for the writer.
  await reader.page.click('#editor')
  await reader.page.keyboard.type('sneaky', { delay: 5 })
  // Live: more typing arrives, and the writer's caret is there (awareness).
  await writer.page.evaluate(() => window.tandem.editor.commands.focus('end'))
  await writer.page.waitForFunction(() => window.tandem.editor.isFocused)
  await writer.page.keyboard.type(' and more', { delay: 5 })
  await reader.page.waitForFunction(() => window.tandem.editor.getText().includes('and more'), null, { timeout: 15000 })
  await reader.page.waitForFunction(() => document.querySelectorAll('.collaboration-carets__caret, .collaboration-cursor__caret').length > 0, null, { timeout: 15000 })
  assert.equal(await text(writer.page), 'Hello from the writer and more')
  assert.equal(await text(reader.page), 'Hello from the writer and more')
  // The writer sees the reader among the people here.
  await writer.page.waitForFunction(() => document.querySelectorAll('#people .person').length === 2, null, { timeout: 15000 })
  await reader.page.screenshot({ path: join(ARTIFACTS, 'access-read-only.png') })
})

async function expectRefusal (link, message) {
  const { page, sockets } = await open(link)
  await page.waitForFunction(() => !document.getElementById('blocked').hidden, null, { timeout: 15000 })
  assert.equal(await page.textContent('#blocked'), message)
  // No reconnect loop: the socket count stays put.
  const seen = sockets.length
  await page.waitForTimeout(3000)
  assert.equal(sockets.length, seen, `reconnected ${sockets.length - seen} times`)
  assert.ok(seen <= 1, `${seen} sockets`)
  return page
}

test('a revoked or expired link says so once; a link for another document too', async () => {
  const revokedLink = await tandemCli(['share', 'secret-plan', '--base-url', base], env)
  const jti = JSON.parse(Buffer.from(revokedLink.split('#token=')[1].split('.')[1], 'base64url')).jti
  const admin = await tandemCli(['token', '--admin', '--sub', 'ops'], env)
  const res = await fetch(`${base}/api/admin/revoke`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: JSON.stringify({ jti })
  })
  assert.equal(res.status, 200)
  const page = await expectRefusal(revokedLink, 'This link has expired or was revoked')
  await page.screenshot({ path: join(ARTIFACTS, 'access-revoked.png') })

  const expired = await tandemCli(['share', 'secret-plan', '--ttl', '1', '--base-url', base], env)
  await new Promise(resolve => setTimeout(resolve, 7000)) // past exp and its 5 s leeway
  await expectRefusal(expired, 'This link has expired or was revoked')

  const other = await tandemCli(['token', '--doc', 'another-doc', '--sub', 'eve'], env)
  await expectRefusal(`${base}/d/secret-plan#token=${other}`, 'You do not have access to this document')
})
