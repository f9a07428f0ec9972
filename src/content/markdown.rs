//! Markdown and HTML through pulldown-cmark's event stream, in both directions:
//! a ProseMirror tree becomes events, which pulldown-cmark renders as HTML and
//! pulldown-cmark-to-cmark writes as Markdown; Markdown parsed by pulldown-cmark becomes a
//! tree. No Markdown is parsed or printed by hand here.
//!
//! Underline has no Markdown syntax: it is written as `<u>…</u>` and read back from it.

use pulldown_cmark::{
    CodeBlockKind, CowStr, Event, HeadingLevel, LinkType, Options, Parser, Tag, TagEnd,
};
use serde_json::Value;

use super::tree::{MAX_DEPTH, Mark, Node, mark_rank};
use crate::error::Error;

fn parser_options() -> Options {
    Options::ENABLE_STRIKETHROUGH
}

// ---- tree → events ----------------------------------------------------------------------

/// The events of a document's blocks. `tight` drops the paragraph tags directly inside
/// list items when every item holds one paragraph (Markdown's tight lists); HTML keeps them,
/// as the editor's own HTML does.
fn events(doc: &Node, tight: bool) -> Vec<Event<'static>> {
    let mut out = Vec::new();
    for block in &doc.content {
        block_events(block, tight, false, &mut out);
    }
    out
}

fn block_events(node: &Node, tight: bool, in_tight_item: bool, out: &mut Vec<Event<'static>>) {
    match node.kind.as_str() {
        "paragraph" => {
            if !in_tight_item {
                out.push(Event::Start(Tag::Paragraph));
            }
            inline_events(&node.content, out);
            if !in_tight_item {
                out.push(Event::End(TagEnd::Paragraph));
            }
        }
        "heading" => {
            let level = match node.attrs.get("level").and_then(Value::as_u64).unwrap_or(1) {
                1 => HeadingLevel::H1,
                2 => HeadingLevel::H2,
                3 => HeadingLevel::H3,
                4 => HeadingLevel::H4,
                5 => HeadingLevel::H5,
                _ => HeadingLevel::H6,
            };
            out.push(Event::Start(Tag::Heading {
                level,
                id: None,
                classes: Vec::new(),
                attrs: Vec::new(),
            }));
            inline_events(&node.content, out);
            out.push(Event::End(TagEnd::Heading(level)));
        }
        "blockquote" => {
            out.push(Event::Start(Tag::BlockQuote(None)));
            for child in &node.content {
                block_events(child, tight, false, out);
            }
            out.push(Event::End(TagEnd::BlockQuote(None)));
        }
        "bulletList" | "orderedList" => {
            let ordered = node.kind == "orderedList";
            let start =
                ordered.then(|| node.attrs.get("start").and_then(Value::as_u64).unwrap_or(1));
            let tight_list = tight
                && node.content.iter().all(|item| {
                    item.content.iter().filter(|c| c.kind == "paragraph").count() <= 1
                        && item.content.first().is_none_or(|c| c.kind == "paragraph")
                });
            out.push(Event::Start(Tag::List(start)));
            for item in &node.content {
                out.push(Event::Start(Tag::Item));
                for child in &item.content {
                    block_events(child, tight, tight_list, out);
                }
                out.push(Event::End(TagEnd::Item));
            }
            out.push(Event::End(TagEnd::List(ordered)));
        }
        "codeBlock" => {
            let language = node.attrs.get("language").and_then(Value::as_str).unwrap_or("");
            out.push(Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(CowStr::from(
                language.to_string(),
            )))));
            let mut text = String::new();
            node.plain_text(&mut text);
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            out.push(Event::Text(text.into()));
            out.push(Event::End(TagEnd::CodeBlock));
        }
        "horizontalRule" => out.push(Event::Rule),
        // A node the editor does not have (another schema's): its text, as a paragraph.
        _ => {
            if node.content.iter().any(|c| c.is_text() || c.kind == "hardBreak") {
                let para = Node { kind: "paragraph".into(), ..node.clone() };
                block_events(&para, tight, in_tight_item, out);
            } else {
                for child in &node.content {
                    block_events(child, tight, in_tight_item, out);
                }
            }
        }
    }
}

/// Inline content with marks nested as a stack: a mark stays open across text nodes that
/// share it, so `**a *b***` is one bold run around an italic one.
fn inline_events(nodes: &[Node], out: &mut Vec<Event<'static>>) {
    let mut open: Vec<Mark> = Vec::new();
    for node in nodes {
        let mut marks: Vec<Mark> = if node.is_text() { node.marks.clone() } else { Vec::new() };
        marks.sort_by_key(|m| mark_rank(&m.kind));
        // Code is not a container in Markdown: it is the text event itself.
        let code = marks.iter().position(|m| m.kind == "code").map(|i| marks.remove(i));
        let keep = open.iter().zip(&marks).take_while(|(a, b)| a == b).count();
        while open.len() > keep {
            if let Some(mark) = open.pop() {
                out.push(close_mark(&mark));
            }
        }
        for mark in &marks[keep..] {
            out.push(open_mark(mark));
            open.push(mark.clone());
        }
        match node.kind.as_str() {
            "text" => {
                let text = node.text.clone().unwrap_or_default();
                out.push(if code.is_some() {
                    Event::Code(text.into())
                } else {
                    Event::Text(text.into())
                });
            }
            "hardBreak" => out.push(Event::HardBreak),
            _ => {
                let mut text = String::new();
                node.plain_text(&mut text);
                if !text.is_empty() {
                    out.push(Event::Text(text.into()));
                }
            }
        }
    }
    while let Some(mark) = open.pop() {
        out.push(close_mark(&mark));
    }
}

fn open_mark(mark: &Mark) -> Event<'static> {
    match mark.kind.as_str() {
        "bold" => Event::Start(Tag::Strong),
        "italic" => Event::Start(Tag::Emphasis),
        "strike" => Event::Start(Tag::Strikethrough),
        "underline" => Event::InlineHtml("<u>".into()),
        "link" => Event::Start(Tag::Link {
            link_type: LinkType::Inline,
            dest_url: mark
                .attrs
                .get("href")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
                .into(),
            title: mark.attrs.get("title").and_then(Value::as_str).unwrap_or("").to_string().into(),
            id: "".into(),
        }),
        // A mark the editor does not have: nothing to write for it.
        _ => Event::InlineHtml("".into()),
    }
}

fn close_mark(mark: &Mark) -> Event<'static> {
    match mark.kind.as_str() {
        "bold" => Event::End(TagEnd::Strong),
        "italic" => Event::End(TagEnd::Emphasis),
        "strike" => Event::End(TagEnd::Strikethrough),
        "underline" => Event::InlineHtml("</u>".into()),
        "link" => Event::End(TagEnd::Link),
        _ => Event::InlineHtml("".into()),
    }
}

pub(crate) fn to_html(doc: &Node) -> String {
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events(doc, false).into_iter());
    html
}

pub(crate) fn to_markdown(doc: &Node) -> Result<String, Error> {
    let mut markdown = String::new();
    let options = pulldown_cmark_to_cmark::Options {
        code_block_token_count: 3,
        list_token: '-',
        increment_ordered_list_bullets: true,
        ..Default::default()
    };
    pulldown_cmark_to_cmark::cmark_with_options(
        events(doc, true).iter(),
        &mut markdown,
        parser_options(),
        options,
    )
    .map_err(|e| {
        tracing::error!(error = %e, "could not write Markdown");
        Error::Internal
    })?;
    if !markdown.is_empty() && !markdown.ends_with('\n') {
        markdown.push('\n');
    }
    Ok(markdown)
}

// ---- Markdown → tree --------------------------------------------------------------------

/// Builds a tree from events: a stack of open block nodes and of active marks. Inline
/// content that arrives where a block is expected (a tight list item, a quote) gets the
/// paragraph the editor's schema wants around it.
#[derive(Default)]
pub(crate) struct Builder {
    stack: Vec<Node>,
    marks: Vec<Mark>,
    in_code_block: bool,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder { stack: vec![Node::new("doc")], ..Default::default() }
    }

    pub(crate) fn open(&mut self, node: Node) -> Result<(), Error> {
        if self.stack.len() > MAX_DEPTH {
            return Err(Error::BadRequest(format!(
                "content nested deeper than {MAX_DEPTH} levels"
            )));
        }
        self.close_implicit_paragraph(&node.kind);
        self.stack.push(node);
        Ok(())
    }

    /// Closes the innermost node of this kind (and whatever is open inside it).
    pub(crate) fn close(&mut self, kind: &str) {
        let Some(at) = self.stack.iter().rposition(|n| n.kind == kind) else { return };
        if at == 0 {
            return;
        }
        while self.stack.len() > at {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if self.stack.len() <= 1 {
            return;
        }
        if let Some(node) = self.stack.pop()
            && let Some(parent) = self.stack.last_mut()
        {
            // The editor's schema wants a paragraph in every list item and quote.
            let mut node = node;
            if matches!(node.kind.as_str(), "listItem" | "blockquote") && node.content.is_empty() {
                node.content.push(Node::new("paragraph"));
            }
            parent.content.push(node);
        }
    }

    fn close_implicit_paragraph(&mut self, opening: &str) {
        let block = !matches!(opening, "hardBreak");
        if block
            && self
                .stack
                .last()
                .is_some_and(|n| n.kind == "paragraph" && n.attrs.contains_key("_implicit"))
        {
            self.pop();
        }
    }

    /// Where inline content goes: the open paragraph, heading or code block, or a fresh
    /// paragraph when a container is open.
    fn inline_parent(&mut self) -> &mut Node {
        let needs_paragraph = self.stack.last().is_none_or(|n| {
            matches!(
                n.kind.as_str(),
                "doc" | "listItem" | "blockquote" | "bulletList" | "orderedList"
            )
        });
        if needs_paragraph {
            self.stack.push(Node::new("paragraph").with_attr("_implicit", Value::Bool(true)));
        }
        let last = self.stack.len() - 1;
        &mut self.stack[last]
    }

    pub(crate) fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let marks = if self.in_code_block { Vec::new() } else { self.marks.clone() };
        let parent = self.inline_parent();
        if let Some(last) = parent.content.last_mut()
            && last.is_text()
            && last.marks == marks
            && let Some(existing) = &mut last.text
        {
            existing.push_str(text);
            return;
        }
        parent.content.push(Node::text(text.to_string(), marks));
    }

    pub(crate) fn hard_break(&mut self) {
        self.inline_parent().content.push(Node::new("hardBreak"));
    }

    pub(crate) fn leaf(&mut self, kind: &str) {
        self.close_implicit_paragraph(kind);
        if let Some(parent) = self.stack.last_mut() {
            parent.content.push(Node::new(kind));
        }
    }

    pub(crate) fn push_mark(&mut self, mark: Mark) {
        self.marks.push(mark);
    }

    pub(crate) fn pop_mark(&mut self, kind: &str) {
        if let Some(at) = self.marks.iter().rposition(|m| m.kind == kind) {
            self.marks.remove(at);
        }
    }

    /// Sets the language of the innermost open code block.
    pub(crate) fn set_language(&mut self, language: String) {
        if let Some(block) = self.stack.iter_mut().rev().find(|n| n.kind == "codeBlock") {
            block.attrs.insert("language".into(), Value::String(language));
        }
    }

    /// Whether inline content is being gathered (a space there is content).
    pub(crate) fn in_inline(&self) -> bool {
        self.stack.last().is_some_and(|n| matches!(n.kind.as_str(), "paragraph" | "heading"))
    }

    pub(crate) fn set_code_block(&mut self, on: bool) {
        self.in_code_block = on;
    }

    pub(crate) fn finish(mut self) -> Node {
        while self.stack.len() > 1 {
            self.pop();
        }
        let mut doc = self.stack.pop().unwrap_or_else(|| Node::new("doc"));
        strip_implicit(&mut doc);
        if doc.content.is_empty() {
            doc.content.push(Node::new("paragraph"));
        }
        doc
    }
}

fn strip_implicit(node: &mut Node) {
    node.attrs.remove("_implicit");
    if node.kind == "codeBlock" {
        // The fence's closing newline is not part of the code.
        if let Some(last) = node.content.last_mut()
            && let Some(text) = &mut last.text
            && text.ends_with('\n')
        {
            text.pop();
        }
        node.content.retain(|n| n.text.as_deref() != Some(""));
    }
    for child in &mut node.content {
        strip_implicit(child);
    }
}

pub(crate) fn parse_markdown(markdown: &str) -> Result<Node, Error> {
    let mut b = Builder::new();
    for event in Parser::new_ext(markdown, parser_options()) {
        match event {
            Event::Start(tag) => match tag {
                Tag::Paragraph => b.open(Node::new("paragraph"))?,
                Tag::Heading { level, .. } => {
                    b.open(Node::new("heading").with_attr("level", Value::from(level as u8)))?
                }
                Tag::BlockQuote(_) => b.open(Node::new("blockquote"))?,
                Tag::CodeBlock(kind) => {
                    let language = match kind {
                        CodeBlockKind::Fenced(info) => {
                            info.split_whitespace().next().map(str::to_string)
                        }
                        CodeBlockKind::Indented => None,
                    };
                    b.open(
                        Node::new("codeBlock")
                            .with_attr("language", language.map_or(Value::Null, Value::String)),
                    )?;
                    b.set_code_block(true);
                }
                Tag::List(Some(start)) => {
                    b.open(Node::new("orderedList").with_attr("start", Value::from(start)))?
                }
                Tag::List(None) => b.open(Node::new("bulletList"))?,
                Tag::Item => b.open(Node::new("listItem"))?,
                Tag::Emphasis => b.push_mark(mark("italic")),
                Tag::Strong => b.push_mark(mark("bold")),
                Tag::Strikethrough => b.push_mark(mark("strike")),
                Tag::Link { dest_url, title, .. } => {
                    let mut link = mark("link");
                    link.attrs.insert("href".into(), Value::String(dest_url.to_string()));
                    if !title.is_empty() {
                        link.attrs.insert("title".into(), Value::String(title.to_string()));
                    }
                    b.push_mark(link);
                }
                // Images, tables and the like are not in the editor's schema: their text
                // (an image's alt text) still arrives as text events.
                _ => {}
            },
            Event::End(end) => match end {
                TagEnd::Paragraph => b.close("paragraph"),
                TagEnd::Heading(_) => b.close("heading"),
                TagEnd::BlockQuote(_) => b.close("blockquote"),
                TagEnd::CodeBlock => {
                    b.set_code_block(false);
                    b.close("codeBlock");
                }
                TagEnd::List(true) => b.close("orderedList"),
                TagEnd::List(false) => b.close("bulletList"),
                TagEnd::Item => b.close("listItem"),
                TagEnd::Emphasis => b.pop_mark("italic"),
                TagEnd::Strong => b.pop_mark("bold"),
                TagEnd::Strikethrough => b.pop_mark("strike"),
                TagEnd::Link => b.pop_mark("link"),
                _ => {}
            },
            Event::Text(text) => b.text(&text),
            Event::Code(code) => {
                b.push_mark(mark("code"));
                b.text(&code);
                b.pop_mark("code");
            }
            Event::InlineHtml(html) => match html.trim().to_ascii_lowercase().as_str() {
                "<u>" => b.push_mark(mark("underline")),
                "</u>" => b.pop_mark("underline"),
                "<br>" | "<br/>" | "<br />" => b.hard_break(),
                // Other inline HTML is kept as the text it is, not dropped.
                _ => b.text(&html),
            },
            Event::Html(html) => b.text(html.trim_end_matches('\n')),
            Event::SoftBreak => b.text(" "),
            Event::HardBreak => b.hard_break(),
            Event::Rule => b.leaf("horizontalRule"),
            _ => {}
        }
    }
    Ok(b.finish())
}

pub(crate) fn mark(kind: &str) -> Mark {
    Mark { kind: kind.to_string(), attrs: serde_json::Map::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Title\n\nSome **bold**, *italic*, ~~struck~~, `code`, <u>under</u> and a [link](https://example.com/a).\\\nAfter a hard break.\n\n## Lists\n\n- one\n- two **b *bi***\n  - nested\n\n3. three\n4. four\n\n> quoted\n> text\n\n```rust\nfn main() {}\n```\n\n---\n\nEnd.\n";

    #[test]
    fn markdown_round_trips_the_editor_subset() {
        let tree = parse_markdown(SAMPLE).expect("parse");
        let kinds: Vec<&str> = tree.content.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "heading",
                "paragraph",
                "heading",
                "bulletList",
                "orderedList",
                "blockquote",
                "codeBlock",
                "horizontalRule",
                "paragraph"
            ]
        );
        let markdown = to_markdown(&tree).expect("write");
        let again = parse_markdown(&markdown).expect("parse again");
        assert_eq!(again, tree, "written as:\n{markdown}");
        assert!(markdown.contains("<u>under</u>"), "{markdown}");
        assert!(markdown.contains("- one\n"), "tight list: {markdown}");
    }

    #[test]
    fn html_has_every_node_and_mark() {
        let html = to_html(&parse_markdown(SAMPLE).expect("parse"));
        for needle in [
            "<h1>Title</h1>",
            "<strong>bold</strong>",
            "<em>italic</em>",
            "<del>struck</del>",
            "<code>code</code>",
            "<u>under</u>",
            "<a href=\"https://example.com/a\">link</a>",
            "<br />",
            "<ul>",
            "<ol start=\"3\">",
            "<blockquote>",
            "<pre><code class=\"language-rust\">fn main() {}",
            "<hr />",
            "<li>\n<p>one</p>\n</li>",
        ] {
            assert!(html.contains(needle), "{needle} missing from {html}");
        }
    }

    /// Text that looks like Markdown or HTML stays text through a round trip.
    #[test]
    fn markup_characters_in_text_are_escaped() {
        let mut doc = Node::new("doc");
        for line in [
            "2 * 3 = 6 and _under_ #1",
            "<u>not underline</u> & [not](a link)",
            "# not a heading",
            "- not a list",
            "1. not a list",
            "`not code`",
        ] {
            let mut p = Node::new("paragraph");
            p.content.push(Node::text(line.to_string(), Vec::new()));
            doc.content.push(p);
        }
        let markdown = to_markdown(&doc).expect("write");
        assert_eq!(parse_markdown(&markdown).expect("parse"), doc, "written as:\n{markdown}");
        let html = to_html(&doc);
        assert!(html.contains("&lt;u&gt;not underline&lt;/u&gt; &amp;"), "{html}");
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let deep = "> ".repeat(MAX_DEPTH + 5) + "x";
        assert!(parse_markdown(&deep).is_err());
    }
}
