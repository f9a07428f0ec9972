// Hocuspocus (the most used Yjs server) as a baseline for bench/compare.sh: in memory, or
// with its SQLite extension when HP_SQLITE names a database file (it stores a document 2 s
// after its last edit, at most every 10 s: its defaults). HOST and PORT as for the others.
import { Server } from '@hocuspocus/server'
import { SQLite } from '@hocuspocus/extension-sqlite'

const extensions = process.env.HP_SQLITE ? [new SQLite({ database: process.env.HP_SQLITE })] : []
const server = new Server({
  port: Number(process.env.PORT),
  address: process.env.HOST || '127.0.0.1',
  quiet: true,
  extensions
})
await server.listen()
console.log(`hocuspocus listening on ${process.env.PORT}${process.env.HP_SQLITE ? ' with SQLite' : ' in memory'}`)
