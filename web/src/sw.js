// Service worker: keeps the editor's app shell available offline, so a reload without a
// network still opens the editor, which then reads the document from IndexedDB.
// build.mjs fills in ASSETS and VERSION; the document data never goes through here.
const VERSION = '__VERSION__'
const ASSETS = __ASSETS__
const SHELL = '/__editor_shell__'

self.addEventListener('install', event => {
  event.waitUntil((async () => {
    const cache = await caches.open(VERSION)
    await cache.addAll(ASSETS)
    const shell = await fetch('/d/offline-shell', { cache: 'no-store' })
    if (shell.ok) await cache.put(SHELL, shell)
    await self.skipWaiting()
  })())
})

self.addEventListener('activate', event => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) if (key !== VERSION) await caches.delete(key)
    await self.clients.claim()
  })())
})

self.addEventListener('fetch', event => {
  const url = new URL(event.request.url)
  if (event.request.method !== 'GET' || url.origin !== location.origin) return
  if (url.pathname.startsWith('/assets/')) {
    // Content-hashed: a cached copy is always right.
    event.respondWith(caches.match(event.request).then(hit => hit || fetch(event.request)))
  } else if (event.request.mode === 'navigate' && url.pathname.startsWith('/d/')) {
    // Network first, so a new build shows at once; the cached shell when offline.
    event.respondWith(fetch(event.request).catch(async () => (await caches.match(SHELL)) || Response.error()))
  }
})
