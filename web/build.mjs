// Builds the editor into dist/: two HTML pages and content-hashed bundles under assets/.
// Run by the crate's build.rs (or `npm run build`). Output is never committed.
import * as esbuild from 'esbuild'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const dist = join(here, 'dist')
rmSync(dist, { recursive: true, force: true })
mkdirSync(join(dist, 'assets'), { recursive: true })

const result = await esbuild.build({
  entryPoints: { index: join(here, 'src/index.js'), editor: join(here, 'src/editor.js') },
  bundle: true,
  minify: true,
  sourcemap: true,
  format: 'esm',
  target: ['es2020'],
  outdir: join(dist, 'assets'),
  entryNames: '[name]-[hash]',
  metafile: true,
  logLevel: 'warning'
})

// Map each entry to its hashed JS and CSS file names, then fill in the HTML templates.
const assets = {}
for (const [out, meta] of Object.entries(result.metafile.outputs)) {
  if (!meta.entryPoint) continue
  const entry = basename(meta.entryPoint, '.js')
  assets[`${entry}.js`] = `/assets/${basename(out)}`
  if (meta.cssBundle) assets[`${entry}.css`] = `/assets/${basename(meta.cssBundle)}`
}
for (const page of ['index', 'editor']) {
  let html = readFileSync(join(here, `src/${page}.html`), 'utf8')
  html = html.replace(/\{\{([\w.]+)\}\}/g, (_, name) => {
    if (!assets[name]) throw new Error(`no asset for {{${name}}} in ${page}.html`)
    return assets[name]
  })
  writeFileSync(join(dist, `${page}.html`), html)
}
// The service worker precaches the editor's bundles; its version changes with them.
const editorAssets = [assets['editor.js'], assets['editor.css']].filter(Boolean)
const sw = readFileSync(join(here, 'src/sw.js'), 'utf8')
  .replace('__VERSION__', 'tandem-' + editorAssets.map(a => basename(a)).join('-'))
  .replace('__ASSETS__', JSON.stringify(editorAssets))
writeFileSync(join(dist, 'sw.js'), sw)

console.log('built web/dist:', Object.values(assets).join(' '))
