// The document list: what exists, when it was last edited, who is in it now.
import './style.css'
import { DOC_NAME, timeAgo } from './common.js'

const form = document.getElementById('open-form')
const input = document.getElementById('doc-name')
const error = document.getElementById('name-error')
const list = document.getElementById('docs')
const empty = document.getElementById('empty')

form.addEventListener('submit', event => {
  event.preventDefault()
  const name = input.value.trim()
  if (!DOC_NAME.test(name)) {
    error.hidden = false
    return
  }
  location.href = `/d/${encodeURIComponent(name)}`
})
input.addEventListener('input', () => { error.hidden = true })

async function refresh () {
  try {
    const res = await fetch('/api/docs?limit=1000', { cache: 'no-store' })
    if (res.status === 401) {
      // Access control is on and this page carries no token: documents open from links.
      empty.textContent = 'This server needs a link with access to a document.'
      empty.hidden = false
      return
    }
    if (!res.ok) return
    const { docs } = await res.json()
    docs.sort((a, b) => (b.peers - a.peers) || ((b.updated_at || 0) - (a.updated_at || 0)))
    list.replaceChildren(...docs.map(doc => {
      const li = document.createElement('li')
      li.className = 'doc'
      li.dataset.doc = doc.name
      const link = document.createElement('a')
      link.href = `/d/${encodeURIComponent(doc.name)}`
      link.textContent = doc.name
      const meta = document.createElement('span')
      meta.className = 'doc-meta'
      meta.textContent = timeAgo(doc.updated_at)
      const people = document.createElement('span')
      people.className = 'doc-people'
      people.dataset.peers = doc.peers
      people.textContent = doc.peers === 0 ? '' : doc.peers === 1 ? '1 person here' : `${doc.peers} people here`
      li.append(link, meta, people)
      return li
    }))
    empty.hidden = docs.length > 0
  } catch {
    // offline: keep what is shown
  }
}

refresh()
setInterval(refresh, 5000)
