// Formatting toolbar: one button per command, showing which marks/nodes are active.
const BUTTONS = [
  { label: 'P', title: 'Paragraph', run: c => c.setParagraph(), active: e => e.isActive('paragraph') },
  { label: 'H1', title: 'Heading 1', run: c => c.toggleHeading({ level: 1 }), active: e => e.isActive('heading', { level: 1 }) },
  { label: 'H2', title: 'Heading 2', run: c => c.toggleHeading({ level: 2 }), active: e => e.isActive('heading', { level: 2 }) },
  { label: 'H3', title: 'Heading 3', run: c => c.toggleHeading({ level: 3 }), active: e => e.isActive('heading', { level: 3 }) },
  { sep: true },
  { label: 'B', title: 'Bold (Ctrl+B)', cls: 'b', run: c => c.toggleBold(), active: e => e.isActive('bold') },
  { label: 'I', title: 'Italic (Ctrl+I)', cls: 'i', run: c => c.toggleItalic(), active: e => e.isActive('italic') },
  { label: 'S', title: 'Strikethrough', cls: 's', run: c => c.toggleStrike(), active: e => e.isActive('strike') },
  { label: '</>', title: 'Inline code', run: c => c.toggleCode(), active: e => e.isActive('code') },
  { label: 'Link', title: 'Link', run: null, active: e => e.isActive('link') },
  { sep: true },
  { label: '•', title: 'Bullet list', run: c => c.toggleBulletList(), active: e => e.isActive('bulletList') },
  { label: '1.', title: 'Numbered list', run: c => c.toggleOrderedList(), active: e => e.isActive('orderedList') },
  { label: '❝', title: 'Quote', run: c => c.toggleBlockquote(), active: e => e.isActive('blockquote') },
  { label: '{ }', title: 'Code block', run: c => c.toggleCodeBlock(), active: e => e.isActive('codeBlock') },
  { sep: true },
  { label: '↶', title: 'Undo your last edit (Ctrl+Z)', run: c => c.undo(), active: () => false },
  { label: '↷', title: 'Redo (Ctrl+Shift+Z)', run: c => c.redo(), active: () => false }
]

function editLink (editor) {
  const previous = editor.getAttributes('link').href || ''
  const url = window.prompt('Link address (empty removes the link)', previous)
  if (url === null) return
  const chain = editor.chain().focus().extendMarkRange('link')
  if (url.trim() === '') chain.unsetLink().run()
  else chain.setLink({ href: /^[a-z]+:/i.test(url) ? url : `https://${url}` }).run()
}

export function buildToolbar (root, editor) {
  const buttons = []
  for (const spec of BUTTONS) {
    if (spec.sep) {
      const sep = document.createElement('span')
      sep.className = 'sep'
      root.append(sep)
      continue
    }
    const button = document.createElement('button')
    button.type = 'button'
    button.textContent = spec.label
    button.title = spec.title
    button.setAttribute('aria-label', spec.title)
    if (spec.cls) button.classList.add(spec.cls)
    // mousedown keeps the editor's selection while clicking.
    button.addEventListener('mousedown', e => e.preventDefault())
    button.addEventListener('click', () => {
      if (spec.run) spec.run(editor.chain().focus()).run()
      else editLink(editor)
    })
    root.append(button)
    buttons.push([button, spec])
  }
  const refresh = () => {
    for (const [button, spec] of buttons) button.classList.toggle('active', spec.active(editor))
  }
  editor.on('transaction', refresh)
  editor.on('selectionUpdate', refresh)
  refresh()
}
