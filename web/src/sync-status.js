// Connection status with reconnect backoff, and the "saved" indicator.
//
// "Saved" means the server has echoed every edit we sent. Tandem echoes an update only
// after committing it to its log, and it relays the exact bytes a client sent, so we
// remember each update frame we send (by content) and cross it off when its echo arrives.
// Edits made while disconnected travel in the SyncStep2 we send on reconnect, which is
// tracked the same way.
import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'

const MSG_SYNC = 0
const SYNC_STEP2 = 1
const SYNC_UPDATE = 2

/** Returns [syncType, payload] for a sync step 2 / update frame, else null. */
function syncPayload (data) {
  try {
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data)
    const decoder = decoding.createDecoder(bytes)
    if (decoding.readVarUint(decoder) !== MSG_SYNC) return null
    const type = decoding.readVarUint(decoder)
    if (type !== SYNC_STEP2 && type !== SYNC_UPDATE) return null
    return [type, decoding.readVarUint8Array(decoder)]
  } catch {
    return null
  }
}

function key (bytes) {
  // FNV-1a over the bytes plus the length: collisions are not a practical concern here.
  let h = 0x811c9dc5
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i]
    h = Math.imul(h, 0x01000193)
  }
  return `${bytes.length}:${h >>> 0}`
}

function isEmptyUpdate (payload) {
  try {
    const { structs, ds } = Y.decodeUpdate(payload)
    return structs.length === 0 && ds.clients.size === 0
  } catch {
    return false
  }
}

/**
 * Drives the provider's connection (with exponential backoff and jitter) and reports
 * { connection: 'connected' | 'connecting' | 'reconnecting' | 'offline', saved: bool }.
 */
export function trackSync (provider, { beforeConnect, onChange, onRefused = () => false }) {
  const pending = new Map() // key -> count of sent, not yet echoed
  let unsent = false // local edits made while no socket could carry them
  let attempts = 0
  let timer = null
  let refused = false // the server said no for good (4401, 4403, …): stop trying
  let state = { connection: 'connecting', saved: false }

  const emit = () => {
    if (refused) return
    const online = navigator.onLine !== false
    const connection = !online ? 'offline'
      : provider.wsconnected && provider.synced ? 'connected'
        : attempts > 0 ? 'reconnecting' : 'connecting'
    const saved = provider.wsconnected && provider.synced && pending.size === 0 && !unsent
    if (connection !== state.connection || saved !== state.saved) {
      state = { connection, saved }
      onChange(state)
    }
  }

  const watchSocket = ws => {
    const send = ws.send.bind(ws)
    ws.send = data => {
      const sync = syncPayload(data)
      if (sync && !isEmptyUpdate(sync[1])) {
        const k = key(sync[1])
        pending.set(k, (pending.get(k) || 0) + 1)
      }
      send(data)
      emit()
    }
    ws.addEventListener('message', event => {
      const sync = syncPayload(event.data)
      if (sync && sync[0] === SYNC_UPDATE) {
        const k = key(sync[1])
        const n = pending.get(k)
        if (n === 1) pending.delete(k)
        else if (n > 1) pending.set(k, n - 1)
      }
      emit()
    })
  }

  provider.on('status', ({ status }) => {
    if (status === 'connecting' && provider.ws) watchSocket(provider.ws)
    if (status === 'disconnected') {
      // Whatever was in flight on that socket is resent on reconnect (as SyncStep2).
      if (pending.size > 0) unsent = true
      pending.clear()
    }
    emit()
  })
  provider.on('sync', synced => {
    if (synced) {
      attempts = 0
      unsent = false // our SyncStep2 (sent before this) carries anything the server lacked
    }
    emit()
  })
  provider.doc.on('update', (_update, origin) => {
    if (origin !== provider && !provider.wsconnected) unsent = true
    emit()
  })

  const connect = async () => {
    clearTimeout(timer)
    timer = null
    if (refused) return
    if (navigator.onLine === false) return emit()
    try { await beforeConnect() } catch { /* the server may be down; try the socket anyway */ }
    provider.connect()
    emit()
  }
  const scheduleReconnect = close => {
    if (close && onRefused(close)) {
      refused = true
      clearTimeout(timer)
      timer = null
      return
    }
    if (refused || timer || navigator.onLine === false) return
    attempts++
    // Exponential backoff from 250 ms to 30 s, with jitter so a restarted server is not
    // hit by every browser at the same instant.
    const base = Math.min(30000, 250 * 2 ** Math.min(attempts, 7))
    timer = setTimeout(connect, base / 2 + Math.random() * base / 2)
    emit()
  }
  // shouldReconnect returns false for every close, so the provider hands reconnection to us.
  provider.on('closed', scheduleReconnect)

  window.addEventListener('offline', () => {
    clearTimeout(timer)
    timer = null
    provider.disconnect()
    emit()
  })
  window.addEventListener('online', () => {
    attempts = Math.max(attempts, 1)
    connect()
  })
  connect()
  return () => state
}
