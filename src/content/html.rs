//! HTML import: html5gum's WHATWG tokenizer (entities, attributes, broken markup) feeds the
//! same tree builder as Markdown. Tags the editor has become nodes and marks; any other tag
//! is transparent (its text is kept), and scripts and styles are dropped with their text.

use html5gum::{Token, Tokenizer};
use serde_json::Value;

use super::markdown::{Builder, mark};
use super::tree::Node;
use crate::error::Error;

pub(crate) fn parse_html(html: &str) -> Result<Node, Error> {
    let mut b = Builder::new();
    // Inside <pre>: whitespace is kept and <code> is the block's, not a mark.
    let mut pre = 0usize;
    // Inside <script>/<style>/<template>/<head>: nothing is content.
    let mut hidden = 0usize;
    let mut last_space = true;
    for token in Tokenizer::new(html).flatten() {
        match token {
            Token::StartTag(tag) => {
                let name = String::from_utf8_lossy(&tag.name).to_ascii_lowercase();
                let attr = |key: &str| {
                    tag.attributes
                        .get(key.as_bytes())
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                if matches!(name.as_str(), "script" | "style" | "template" | "head" | "title") {
                    if !tag.self_closing {
                        hidden += 1;
                    }
                    continue;
                }
                if hidden > 0 {
                    continue;
                }
                match name.as_str() {
                    "p" => b.open(Node::new("paragraph"))?,
                    "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                        let level = name[1..].parse::<u8>().unwrap_or(1);
                        b.open(Node::new("heading").with_attr("level", Value::from(level)))?;
                    }
                    "blockquote" => b.open(Node::new("blockquote"))?,
                    "ul" => b.open(Node::new("bulletList"))?,
                    "ol" => {
                        let start =
                            attr("start").and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(1);
                        b.open(Node::new("orderedList").with_attr("start", Value::from(start)))?;
                    }
                    "li" => b.open(Node::new("listItem"))?,
                    "pre" => {
                        pre += 1;
                        b.open(Node::new("codeBlock").with_attr("language", Value::Null))?;
                        b.set_code_block(true);
                    }
                    "code" if pre > 0 => {
                        if let Some(language) = attr("class").and_then(|c| {
                            c.split_whitespace()
                                .find_map(|c| c.strip_prefix("language-").map(str::to_string))
                        }) {
                            b.set_language(language);
                        }
                    }
                    "code" => b.push_mark(mark("code")),
                    "strong" | "b" => b.push_mark(mark("bold")),
                    "em" | "i" => b.push_mark(mark("italic")),
                    "s" | "del" | "strike" => b.push_mark(mark("strike")),
                    "u" => b.push_mark(mark("underline")),
                    "a" => {
                        let mut link = mark("link");
                        link.attrs
                            .insert("href".into(), Value::String(attr("href").unwrap_or_default()));
                        b.push_mark(link);
                    }
                    "br" => {
                        b.hard_break();
                        last_space = true;
                    }
                    "hr" => b.leaf("horizontalRule"),
                    _ => {}
                }
                if matches!(
                    name.as_str(),
                    "p" | "h1"
                        | "h2"
                        | "h3"
                        | "h4"
                        | "h5"
                        | "h6"
                        | "li"
                        | "blockquote"
                        | "ul"
                        | "ol"
                        | "pre"
                        | "hr"
                ) {
                    last_space = true;
                }
            }
            Token::EndTag(tag) => {
                let name = String::from_utf8_lossy(&tag.name).to_ascii_lowercase();
                if matches!(name.as_str(), "script" | "style" | "template" | "head" | "title") {
                    hidden = hidden.saturating_sub(1);
                    continue;
                }
                if hidden > 0 {
                    continue;
                }
                match name.as_str() {
                    "p" => b.close("paragraph"),
                    "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => b.close("heading"),
                    "blockquote" => b.close("blockquote"),
                    "ul" => b.close("bulletList"),
                    "ol" => b.close("orderedList"),
                    "li" => b.close("listItem"),
                    "pre" => {
                        pre = pre.saturating_sub(1);
                        b.set_code_block(false);
                        b.close("codeBlock");
                    }
                    "code" if pre > 0 => {}
                    "code" => b.pop_mark("code"),
                    "strong" | "b" => b.pop_mark("bold"),
                    "em" | "i" => b.pop_mark("italic"),
                    "s" | "del" | "strike" => b.pop_mark("strike"),
                    "u" => b.pop_mark("underline"),
                    "a" => b.pop_mark("link"),
                    _ => {}
                }
            }
            Token::String(text) if hidden == 0 => {
                let text = String::from_utf8_lossy(&text);
                if pre > 0 {
                    b.text(&text);
                    continue;
                }
                // Outside <pre>, runs of whitespace are one space, and none at a block's start.
                let mut collapsed = String::with_capacity(text.len());
                for c in text.chars() {
                    if c.is_whitespace() {
                        if !last_space {
                            collapsed.push(' ');
                            last_space = true;
                        }
                    } else {
                        collapsed.push(c);
                        last_space = false;
                    }
                }
                if !collapsed.is_empty() && collapsed != " " {
                    b.text(&collapsed);
                } else if collapsed == " " && b.in_inline() {
                    b.text(" ");
                }
            }
            _ => {}
        }
    }
    let mut doc = b.finish();
    trim_block_ends(&mut doc);
    Ok(doc)
}

/// Whitespace before a closing block tag (`<p>a </p>`) is not content.
fn trim_block_ends(node: &mut Node) {
    if matches!(node.kind.as_str(), "paragraph" | "heading") {
        if let Some(last) = node.content.last_mut()
            && let Some(text) = &mut last.text
        {
            let trimmed = text.trim_end().len();
            text.truncate(trimmed);
        }
        node.content.retain(|n| n.text.as_deref() != Some(""));
    }
    for child in &mut node.content {
        trim_block_ends(child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::markdown::{parse_markdown, to_html};

    #[test]
    fn the_editors_html_reads_back_as_the_same_tree() {
        let tree = parse_markdown(
            "# T\n\nA **b** *i* ~~s~~ `c` <u>u</u> [l](https://x.test/)\\\nbreak\n\n- one\n- two\n\n> q\n\n```js\nlet a = 1 < 2;\n```\n\n---\n",
        )
        .expect("markdown");
        let html = to_html(&tree);
        assert_eq!(parse_html(&html).expect("html"), tree, "{html}");
    }

    #[test]
    fn messy_html_is_tolerated() {
        let tree =
            parse_html("<div>loose <b>text<p>para &amp; more<script>x()</script>").expect("html");
        let mut text = String::new();
        tree.plain_text(&mut text);
        assert_eq!(text, "loose textpara & more");
    }
}
