// Identity shared by both pages: a stable random browser id and a readable default name,
// both kept in localStorage. The browser id only picks a cursor colour; it is not a login.
const ADJECTIVES = ['Amber', 'Brave', 'Calm', 'Clever', 'Eager', 'Gentle', 'Happy', 'Jolly',
  'Keen', 'Lively', 'Lucky', 'Merry', 'Nimble', 'Quiet', 'Swift', 'Witty']
const ANIMALS = ['Otter', 'Falcon', 'Panda', 'Heron', 'Lynx', 'Badger', 'Koala', 'Fox',
  'Puffin', 'Gecko', 'Bison', 'Marten', 'Wren', 'Ibex', 'Seal', 'Robin']

const pick = list => list[Math.floor(Math.random() * list.length)]

function stored (key, make) {
  try {
    let value = localStorage.getItem(key)
    if (!value) {
      value = make()
      localStorage.setItem(key, value)
    }
    return value
  } catch {
    return make() // storage disabled: still work, just without memory
  }
}

export const browserId = () => stored('tandem.browser', () =>
  (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2)).replace(/[^A-Za-z0-9_-]/g, ''))

export const myName = () => stored('tandem.name', () => `${pick(ADJECTIVES)} ${pick(ANIMALS)}`)

export function saveName (name) {
  try { localStorage.setItem('tandem.name', name) } catch {}
}

export const DOC_NAME = /^[A-Za-z0-9._-]{1,200}$/

export function timeAgo (ms) {
  if (!ms) return 'not saved yet'
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000))
  if (s < 45) return 'just now'
  const m = Math.round(s / 60)
  if (m < 60) return `${m} min ago`
  const h = Math.round(m / 60)
  if (h < 24) return `${h} h ago`
  return new Date(ms).toLocaleDateString()
}
