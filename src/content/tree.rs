//! ProseMirror's document model as y-prosemirror (and so Tiptap's Collaboration extension)
//! stores it in a `Y.XmlFragment`: an element per node (its name is the node type, its
//! attributes the node's attrs), a `Y.XmlText` per run of text whose formatting attributes
//! are the marks (`{"bold": {}}`, `{"link": {"href": ...}}`).
//!
//! `Node` is ProseMirror's JSON form, so the `json` format is this tree with serde, and the
//! Markdown and HTML formats are conversions of it. Reading and writing are bounded in depth:
//! a hostile client can nest elements as deep as its update allows, and recursion on that
//! would overflow the room's stack (which no `catch_unwind` survives).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use yrs::types::text::YChange;
use yrs::{
    Any, Number, Out, Text, TransactionMut, Xml, XmlElementPrelim, XmlFragment, XmlOut,
    XmlTextPrelim, XmlTextRef,
};

use crate::error::Error;

/// Deepest nesting read or written (ProseMirror documents are a few levels deep; lists
/// in lists in quotes reach ten or so).
pub(crate) const MAX_DEPTH: usize = 100;

/// A ProseMirror node in its JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Node {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub(crate) attrs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub(crate) content: Vec<Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) marks: Vec<Mark>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Mark {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub(crate) attrs: Map<String, Value>,
}

impl Node {
    pub(crate) fn new(kind: &str) -> Node {
        Node {
            kind: kind.to_string(),
            attrs: Map::new(),
            content: Vec::new(),
            text: None,
            marks: Vec::new(),
        }
    }

    pub(crate) fn text(text: String, marks: Vec<Mark>) -> Node {
        Node { text: Some(text), marks, ..Node::new("text") }
    }

    pub(crate) fn with_attr(mut self, key: &str, value: Value) -> Node {
        self.attrs.insert(key.to_string(), value);
        self
    }

    pub(crate) fn is_text(&self) -> bool {
        self.kind == "text"
    }

    /// The text of this node and everything in it (blocks are not separated).
    pub(crate) fn plain_text(&self, out: &mut String) {
        if let Some(text) = &self.text {
            out.push_str(text);
        }
        if self.kind == "hardBreak" {
            out.push('\n');
        }
        for child in &self.content {
            child.plain_text(out);
        }
    }

    /// Checks a tree that came from outside (ProseMirror JSON): depth, and text nodes that
    /// are text and nothing else.
    pub(crate) fn validate(&self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        if self.kind.is_empty() || (self.is_text() != self.text.is_some()) {
            return Err(Error::BadRequest(format!(
                "node {:?}: a node has a non-empty \"type\", and \"text\" exactly when its type is \"text\"",
                self.kind
            )));
        }
        if self.is_text() && !self.content.is_empty() {
            return Err(Error::BadRequest("a text node has no content".into()));
        }
        self.content.iter().try_for_each(|child| child.validate(depth + 1))
    }
}

fn too_deep() -> Error {
    Error::BadRequest(format!("content nested deeper than {MAX_DEPTH} levels"))
}

/// Reads a fragment (or element) as the content of a node.
pub(crate) fn read_children<T: yrs::ReadTxn>(
    txn: &T,
    parent: &impl XmlFragment,
    depth: usize,
) -> Result<Vec<Node>, Error> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let mut nodes = Vec::new();
    for child in parent.children(txn) {
        match child {
            XmlOut::Element(el) => {
                let mut node = Node::new(el.try_tag().map_or("unknown", |t| t.as_ref()));
                for (key, value) in el.attributes(txn) {
                    if let Some(value) = out_to_json(&value) {
                        node.attrs.insert(key.to_string(), value);
                    }
                }
                node.content = read_children(txn, &el, depth + 1)?;
                nodes.push(node);
            }
            XmlOut::Text(text) => read_text(txn, &text, &mut nodes),
            XmlOut::Fragment(fragment) => {
                nodes.extend(read_children(txn, &fragment, depth + 1)?);
            }
        }
    }
    Ok(nodes)
}

fn read_text<T: yrs::ReadTxn>(txn: &T, text: &XmlTextRef, nodes: &mut Vec<Node>) {
    for chunk in text.diff(txn, YChange::identity) {
        let Out::Any(Any::String(s)) = &chunk.insert else { continue };
        let mut marks = Vec::new();
        if let Some(attrs) = &chunk.attributes {
            for (name, value) in attrs.iter() {
                // y-prosemirror keys marks that may overlap as `name--hash`.
                let kind = name.split_once("--").map_or(name.as_ref(), |(kind, _)| kind);
                let attrs = match any_to_json(value) {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                marks.push(Mark { kind: kind.to_string(), attrs });
            }
        }
        marks.sort_by_key(|m| mark_rank(&m.kind));
        nodes.push(Node::text(s.to_string(), marks));
    }
}

/// The order marks nest in when written out (outermost first): links outside, code inside.
pub(crate) fn mark_rank(kind: &str) -> u8 {
    match kind {
        "link" => 0,
        "bold" => 1,
        "italic" => 2,
        "strike" => 3,
        "underline" => 4,
        "code" => 6,
        _ => 5,
    }
}

/// Writes `nodes` at the end of `parent`; consecutive text nodes share one `XmlText`, as
/// y-prosemirror writes them.
pub(crate) fn write_children(
    txn: &mut TransactionMut,
    parent: &impl XmlFragment,
    nodes: &[Node],
    depth: usize,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let mut i = 0;
    while i < nodes.len() {
        if nodes[i].is_text() {
            let text = parent.push_back(txn, XmlTextPrelim::new(""));
            while i < nodes.len() && nodes[i].is_text() {
                let node = &nodes[i];
                let mut attrs = yrs::types::Attrs::new();
                for mark in &node.marks {
                    attrs.insert(
                        mark.kind.as_str().into(),
                        json_to_any(&Value::Object(mark.attrs.clone())),
                    );
                }
                let at = text.len(txn);
                text.insert_with_attributes(txn, at, node.text.as_deref().unwrap_or(""), attrs);
                i += 1;
            }
            continue;
        }
        let node = &nodes[i];
        let el = parent.push_back(txn, XmlElementPrelim::empty(node.kind.as_str()));
        for (key, value) in &node.attrs {
            if !value.is_null() {
                el.insert_attribute(txn, key.as_str(), json_to_any(value));
            }
        }
        write_children(txn, &el, &node.content, depth + 1)?;
        i += 1;
    }
    Ok(())
}

/// A value read from a Y type as JSON; nested shared types (not used by ProseMirror) are
/// left out.
pub(crate) fn out_to_json(value: &Out) -> Option<Value> {
    match value {
        Out::Any(any) => Some(any_to_json(any)),
        _ => None,
    }
}

pub(crate) fn any_to_json(any: &Any) -> Value {
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(Number::Int(i)) => Value::from(*i),
        Any::Number(Number::Float(f)) => number(*f),
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(b) => {
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Any::Array(items) => Value::Array(items.iter().map(any_to_json).collect()),
        Any::Map(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), any_to_json(v))).collect())
        }
    }
}

/// Whole numbers as integers (a heading's level is `1`, not `1.0`).
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

pub(crate) fn json_to_any(value: &Value) -> Any {
    match value {
        Value::Null => Any::Null,
        Value::Bool(b) => Any::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i.unsigned_abs() < (1 << 53) => Any::Number(Number::Int(i)),
            _ => Any::Number(Number::Float(n.as_f64().unwrap_or(0.0))),
        },
        Value::String(s) => Any::String(s.as_str().into()),
        Value::Array(items) => Any::Array(items.iter().map(json_to_any).collect()),
        Value::Object(map) => Any::Map(std::sync::Arc::new(
            map.iter().map(|(k, v)| (k.clone(), json_to_any(v))).collect(),
        )),
    }
}
