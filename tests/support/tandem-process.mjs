// Starts the real `tandem` binary for the Node suites (tests/interop, tests/browser) and
// resolves once it prints `listening addr=HOST:PORT` (a plain stdout line, printed once the
// store is open; the Rust suites and .ci/run wait for the same line). Node built-ins only,
// so either suite can import it without installing anything.
import { spawn } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const BIN = process.env.TANDEM_BIN || join(ROOT, 'target', 'debug', 'tandem')

/**
 * @param {string} dataDir
 * @param {{ listen?: string, webDir?: string|null, args?: string[] }} options  webDir ''
 *   disables the pages, null serves the editor built into the binary; args are extra flags
 * @returns {Promise<{ child, addr: string, exited: Promise<number|null> }>}
 */
export function startServer (dataDir, { listen = '127.0.0.1:0', webDir = '', args: extra = [] } = {}) {
  return new Promise((resolve, reject) => {
    const args = ['--listen', listen, '--data-dir', dataDir, ...extra]
    if (webDir !== null) args.push(`--web-dir=${webDir}`)
    const child = spawn(BIN, args, {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn,tandem=info' },
      stdio: ['ignore', 'pipe', 'inherit']
    })
    let log = ''
    const exited = new Promise(resolve => child.on('exit', code => resolve(code)))
    const timer = setTimeout(() => reject(new Error('tandem did not start: ' + log)), 15000)
    child.stdout.on('data', chunk => {
      log += chunk
      const m = log.match(/^listening addr=(\S+)$/m)
      if (m && !child.addr) {
        child.addr = m[1]
        clearTimeout(timer)
        resolve({ child, addr: m[1], exited })
      }
    })
    child.on('error', reject)
  })
}

/**
 * Runs `tandem token …` or `tandem share …` (the CLI the README documents) and returns
 * what it printed on stdout, trimmed.
 * @param {string[]} args
 * @param {Record<string, string>} env
 */
export function tandemCli (args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', c => { out += c })
    child.stderr.on('data', c => { err += c })
    child.on('error', reject)
    child.on('exit', code => code === 0 ? resolve(out.trim()) : reject(new Error(`tandem ${args[0]} exited ${code}: ${err}`)))
  })
}
