// The editor under access control: the token travels in the link's fragment
// (`#token=…`, which browsers never send to the server), is kept for this tab only
// (sessionStorage) and goes to the server as the provider's `params.token` and as the
// identity call's bearer token. What the token grants is read here only to shape the
// page (view-only mode); the server decides.

/** The token for `docName`, from the link (then dropped from the address bar) or the tab. */
export function takeToken (docName) {
  const key = `tandem.token.${docName}`
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/)
  if (match) {
    const token = decodeURIComponent(match[1])
    try { sessionStorage.setItem(key, token) } catch {}
    history.replaceState(history.state, '', location.pathname + location.search)
    return token
  }
  try { return sessionStorage.getItem(key) } catch { return null }
}

function claims (token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    return JSON.parse(atob(part.padEnd(part.length + (4 - part.length % 4) % 4, '=')))
  } catch {
    return null
  }
}

function matches (pattern, doc) {
  if (pattern === '*') return true
  if (pattern.endsWith('*')) return doc.startsWith(pattern.slice(0, -1))
  return pattern === doc
}

/** 'rw', 'r' or null (no grant) for this document; 'rw' without a token (open server). */
export function accessFor (token, docName) {
  if (!token) return 'rw'
  const c = claims(token)
  if (!c) return 'rw' // not ours to judge: the server will say
  if (c.admin) return 'rw'
  let best = null
  for (const grant of c.docs || []) {
    if (!grant || !matches(String(grant.p), docName)) continue
    if (grant.a === 'rw') return 'rw'
    if (grant.a === 'r') best = 'r'
  }
  return best
}

/** What to tell the person when the server refuses them for good (no reconnect loop). */
export const REFUSALS = {
  4401: 'This link has expired or was revoked',
  4403: 'You do not have access to this document',
  4404: 'This document was deleted',
  4413: 'This document is too large to accept more changes'
}
