// The editor page: Tiptap (ProseMirror) bound to a Yjs document that syncs with Tandem
// over y-websocket and persists locally in IndexedDB, with server-assigned cursor colours.
import './style.css'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { IndexeddbPersistence } from 'y-indexeddb'
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Placeholder from '@tiptap/extension-placeholder'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { browserId, myName, saveName } from './common.js'
import { trackSync } from './sync-status.js'
import { buildToolbar } from './toolbar.js'
import { takeToken, accessFor, REFUSALS } from './access.js'

const docName = decodeURIComponent(location.pathname.replace(/^\/d\//, ''))
document.title = `${docName} · Tandem`
document.getElementById('doc-title').textContent = docName

const token = takeToken(docName)
const readOnly = accessFor(token, docName) === 'r'

const ydoc = new Y.Doc()
// Local copy first: a reload while offline still shows (and keeps) every edit.
const local = new IndexeddbPersistence(`tandem:${docName}`, ydoc)

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`
const provider = new WebsocketProvider(wsUrl, docName, ydoc, {
  connect: false,
  params: token ? { browser: browserId(), token } : { browser: browserId() },
  // We reconnect ourselves, with jitter (see sync-status.js).
  shouldReconnect: () => false
})

const colourKey = `tandem.colour.${docName}`
const me = {
  name: myName(),
  color: (() => { try { return localStorage.getItem(colourKey) } catch { return null } })() || '#6b7280'
}

const editor = new Editor({
  element: document.getElementById('editor'),
  extensions: [
    // Collaboration brings its own undo/redo, which undoes only this person's edits.
    StarterKit.configure({ undoRedo: false, link: { openOnClick: false, autolink: true } }),
    Placeholder.configure({ placeholder: 'Start writing…' }),
    Collaboration.configure({ document: ydoc }),
    CollaborationCaret.configure({ provider, user: me })
  ],
  editable: !readOnly,
  editorProps: { attributes: { 'aria-label': `Document ${docName}`, spellcheck: 'true' } }
})
if (readOnly) {
  document.getElementById('view-only').hidden = false
  document.body.classList.add('read-only')
}
window.tandem = { editor, ydoc, provider, local } // for the end-to-end tests and the curious

buildToolbar(document.getElementById('toolbar'), editor)

/** Asks the server for this browser's colour in this document (before every connect). */
async function fetchIdentity () {
  const headers = { 'content-type': 'application/json' }
  if (token) headers.authorization = `Bearer ${token}`
  const res = await fetch(`/api/docs/${encodeURIComponent(docName)}/identity`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ browser: browserId() })
  })
  if (!res.ok) throw new Error(`identity: ${res.status}`)
  const { color, name } = await res.json()
  if (name && name !== me.name) {
    // The token names this person: use it (the field stays editable for this tab).
    me.name = name.slice(0, 40)
    nameInput.value = me.name
    editor.commands.updateUser({ ...me })
    renderPeople()
  }
  if (color !== me.color) {
    me.color = color
    try { localStorage.setItem(colourKey, color) } catch {}
    editor.commands.updateUser({ ...me })
  }
  renderMe()
}

// Name: editable, remembered by the browser.
const nameInput = document.getElementById('my-name')
nameInput.value = me.name
nameInput.addEventListener('change', () => {
  const name = nameInput.value.trim().slice(0, 40) || myName()
  nameInput.value = name
  me.name = name
  saveName(name)
  editor.commands.updateUser({ ...me })
  renderPeople()
})
const meDot = document.getElementById('me-dot')
function renderMe () {
  meDot.style.background = me.color
}
renderMe()

// Who is here: everyone with a user in awareness, me first.
const people = document.getElementById('people')
function renderPeople () {
  const states = [...provider.awareness.getStates().entries()]
    .filter(([, s]) => s && s.user && s.user.name)
    .sort(([a], [b]) => (a === ydoc.clientID ? -1 : b === ydoc.clientID ? 1 : a - b))
  people.replaceChildren(...states.map(([id, { user }]) => {
    const chip = document.createElement('span')
    chip.className = 'person'
    chip.dataset.name = user.name
    chip.style.background = user.color
    chip.title = id === ydoc.clientID ? `${user.name} (you)` : user.name
    chip.textContent = user.name.split(/\s+/).map(w => w[0]).join('').slice(0, 2).toUpperCase()
    return chip
  }))
}
provider.awareness.on('change', renderPeople)
renderPeople()

// Connection and saved state.
const status = document.getElementById('status')
const saved = document.getElementById('saved')
const LABELS = { connected: 'Connected', connecting: 'Connecting…', reconnecting: 'Reconnecting…', offline: 'Offline' }
const blocked = document.getElementById('blocked')
trackSync(provider, {
  beforeConnect: fetchIdentity,
  onRefused: ({ code, reason }) => {
    const message = REFUSALS[code]
    if (!message) return false // not final: reconnect with backoff
    blocked.textContent = message
    blocked.dataset.code = String(code)
    blocked.title = reason || ''
    blocked.hidden = false
    editor.setEditable(false)
    status.dataset.state = 'offline'
    status.textContent = 'Not connected'
    return true
  },
  onChange: ({ connection, saved: isSaved }) => {
    status.dataset.state = connection
    status.textContent = LABELS[connection]
    saved.dataset.state = isSaved ? 'saved' : connection === 'connected' ? 'saving' : 'local'
    saved.textContent = isSaved ? 'Saved' : connection === 'connected' ? 'Saving…' : 'Kept in this browser'
  }
})

// Keep the app shell available offline (see sw.js).
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('/sw.js').catch(() => {})
}
