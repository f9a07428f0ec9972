// The documents API against what the editor really writes: a document built with Tiptap's
// own schema (StarterKit, as web/ uses it) and written into Yjs by y-prosemirror, read back
// over REST as ProseMirror JSON, Markdown and HTML; and Markdown PUT over REST, read by
// y-prosemirror into a document that Tiptap's schema accepts.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { getSchema } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import { prosemirrorJSONToYXmlFragment, yXmlFragmentToProsemirrorJSON } from 'y-prosemirror'
import { startServer } from '../support/tandem-process.mjs'

const schema = getSchema([StarterKit])

const text = (t, ...marks) => ({ type: 'text', text: t, ...(marks.length ? { marks } : {}) })
const para = (...content) => ({ type: 'paragraph', content })
const item = (...content) => ({ type: 'listItem', content })

// Every node and mark the editor has.
const DOC = {
  type: 'doc',
  content: [
    { type: 'heading', attrs: { level: 2 }, content: [text('Release notes')] },
    para(
      text('Plain, '), text('bold', { type: 'bold' }), text(', '), text('italic', { type: 'italic' }),
      text(', '), text('struck', { type: 'strike' }), text(', '), text('code', { type: 'code' }),
      text(', '), text('under', { type: 'underline' }), text(', '),
      text('both', { type: 'bold' }, { type: 'italic' }), text(' and '),
      text('a link', { type: 'link', attrs: { href: 'https://example.com/x' } }),
      { type: 'hardBreak' }, text('after the break.')
    ),
    { type: 'bulletList', content: [item(para(text('one'))), item(para(text('two')), { type: 'bulletList', content: [item(para(text('nested')))] })] },
    { type: 'orderedList', attrs: { start: 3 }, content: [item(para(text('three'))), item(para(text('four')))] },
    { type: 'blockquote', content: [para(text('quoted'))] },
    { type: 'codeBlock', attrs: { language: 'js' }, content: [text('let x = 1 < 2')] },
    { type: 'horizontalRule' },
    para(text('End.'))
  ]
}

const MARKDOWN = [
  '## Release notes',
  '',
  'Plain, **bold**, *italic*, ~~struck~~, `code`, <u>under</u>, **_both_** and [a link](https://example.com/x)  ',
  'after the break.',
  '',
  '- one',
  '- two',
  '  - nested',
  '',
  '3. three',
  '4. four',
  '',
  ' > ',
  ' > quoted',
  '',
  '```js',
  'let x = 1 < 2',
  '```',
  '',
  '---',
  '',
  'End.',
  ''
].join('\n')

// Defaults filled in and marks ordered the way the schema does it.
const normal = json => schema.nodeFromJSON(json).toJSON()

async function waitFor (predicate, what, timeout = 10000) {
  const deadline = Date.now() + timeout
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

process.setMaxListeners(100)
const providers = []
function connect (room) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`ws://${server.addr}/ws`, room, doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, maxBackoffTime: 200
  })
  providers.push(provider)
  return { doc, provider, fragment: doc.getXmlFragment('default') }
}

let dataDir, server
const api = path => `http://${server.addr}/api/docs/${path}`
before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'tandem-content-'))
  server = await startServer(dataDir)
})
after(async () => {
  for (const p of providers) {
    p.destroy()
    p.awareness.destroy()
    p.doc.destroy()
  }
  if (server) server.child.kill('SIGKILL')
  rmSync(dataDir, { recursive: true, force: true })
})

test('what Tiptap and y-prosemirror write reads back over REST in every format', async () => {
  const client = connect('written-by-tiptap')
  await waitFor(() => client.provider.synced, 'sync')
  prosemirrorJSONToYXmlFragment(schema, DOC, client.fragment)
  let json
  await waitFor(async () => {
    const response = await fetch(api('written-by-tiptap/content?format=json'))
    if (response.status !== 200) return false
    json = await response.json()
    return JSON.stringify(json).includes('End.')
  }, 'the document over REST')
  assert.deepEqual(normal(json), normal(DOC))

  const markdown = await fetch(api('written-by-tiptap/content?format=markdown'))
  assert.match(markdown.headers.get('content-type'), /^text\/markdown/)
  assert.equal(await markdown.text(), MARKDOWN)

  const html = await (await fetch(api('written-by-tiptap/content?format=html'))).text()
  for (const tag of ['<h2>Release notes</h2>', '<strong>bold</strong>', '<em>italic</em>', '<del>struck</del>',
    '<code>code</code>', '<u>under</u>', '<a href="https://example.com/x">a link</a>', '<br />',
    '<ol start="3">', '<blockquote>', '<code class="language-js">let x = 1 &lt; 2', '<hr />']) {
    assert.ok(html.includes(tag), `${tag} in ${html}`)
  }
  const meta = await (await fetch(api('written-by-tiptap'))).json()
  assert.deepEqual(meta.types, { default: 'xml' })
})

test('Markdown PUT over REST is a valid Tiptap document in a connected client', async () => {
  const client = connect('written-over-rest')
  await waitFor(() => client.provider.synced, 'sync')
  const response = await fetch(api('written-over-rest/content?format=markdown'), {
    method: 'PUT', headers: { 'content-type': 'text/markdown' }, body: MARKDOWN
  })
  assert.equal(response.status, 200, await response.clone().text())
  await waitFor(() => client.fragment.length > 0, 'the PUT in the client')
  const seen = yXmlFragmentToProsemirrorJSON(client.fragment)
  const node = schema.nodeFromJSON(seen)
  node.check() // throws if the content does not fit the editor's schema
  assert.deepEqual(node.toJSON(), normal(DOC))
})
