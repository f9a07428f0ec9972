//! A document's content as an application sees it: text, JSON, HTML or Markdown of one
//! top-level shared type, read from and written into a `yrs::Doc`. Pure functions of a
//! document (no IO): the room calls them inside its own task, on its own document.
//!
//! Top-level types that this server never accessed itself have no type in yrs ("undefined":
//! the update format does not carry it), so their kind is read off their content: text
//! chunks make a `Y.Text`, XML nodes a `Y.XmlFragment`, values an array, keys a map.
//!
//! Writes are checked in full before the document is touched (yrs has no rollback): the
//! payload is parsed by the HTTP handler, and `edit` refuses a kind mismatch before it
//! changes anything.

pub(crate) mod html;
pub(crate) mod markdown;
pub(crate) mod tree;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use yrs::branch::BranchPtr;
use yrs::types::text::YChange;
use yrs::{
    Any, Array, ArrayRef, Doc, GetString, Map as _, MapRef, Out, ReadTxn, Text, TextRef, Transact,
    TransactionMut, WriteTxn, XmlFragment, XmlFragmentRef,
};

use self::tree::{MAX_DEPTH, Node, any_to_json, json_to_any};
use crate::error::Error;

/// The field Tiptap's Collaboration extension binds (and so the editor's).
pub(crate) const DEFAULT_FIELD: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    Text,
    Json,
    Html,
    Markdown,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; charset=utf-8",
            Format::Json => "application/json",
            Format::Html => "text/html; charset=utf-8",
            Format::Markdown => "text/markdown; charset=utf-8",
        }
    }
}

/// What a top-level shared type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    Text,
    Xml,
    Map,
    Array,
}

/// Every top-level type that holds something, with its kind.
pub(crate) fn kinds(doc: &Doc) -> BTreeMap<String, Kind> {
    let txn = doc.transact();
    txn.root_refs()
        .filter_map(|(name, out)| Some((name.to_string(), kind_of(&txn, &out)?)))
        .collect()
}

fn kind_of<T: ReadTxn>(txn: &T, out: &Out) -> Option<Kind> {
    match out {
        Out::YText(_) => Some(Kind::Text),
        Out::YXmlFragment(_) | Out::YXmlElement(_) | Out::YXmlText(_) => Some(Kind::Xml),
        Out::YMap(_) => Some(Kind::Map),
        Out::YArray(_) => Some(Kind::Array),
        Out::UndefinedRef(ptr) => infer(txn, *ptr),
        _ => None,
    }
}

fn infer<T: ReadTxn>(txn: &T, ptr: BranchPtr) -> Option<Kind> {
    let mut xml = false;
    for chunk in TextRef::from(ptr).diff(txn, YChange::identity) {
        match chunk.insert {
            Out::Any(Any::String(_)) => return Some(Kind::Text),
            Out::YXmlElement(_) | Out::YXmlText(_) | Out::YXmlFragment(_) => xml = true,
            _ => {}
        }
    }
    if xml {
        return Some(Kind::Xml);
    }
    if ArrayRef::from(ptr).len(txn) > 0 {
        return Some(Kind::Array);
    }
    if MapRef::from(ptr).len(txn) > 0 {
        return Some(Kind::Map);
    }
    None
}

fn root<T: ReadTxn>(txn: &T, field: &str) -> Option<(BranchPtr, Option<Kind>)> {
    let out = txn.root_refs().find(|(name, _)| *name == field).map(|(_, out)| out)?;
    let kind = kind_of(txn, &out);
    let ptr = match out {
        Out::YText(r) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(&r)),
        Out::YXmlFragment(r) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(&r)),
        Out::YMap(r) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(&r)),
        Out::YArray(r) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(&r)),
        Out::UndefinedRef(ptr) => ptr,
        _ => return None,
    };
    Some((ptr, kind))
}

pub(crate) struct Exported {
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
}

/// The content of `field` in `format`.
pub(crate) fn export(doc: &Doc, field: &str, format: Format) -> Result<Exported, Error> {
    let txn = doc.transact();
    let Some((ptr, Some(kind))) = root(&txn, field) else {
        return Err(Error::NotFound(format!("the document has no field {field:?}")));
    };
    let body = match (kind, format) {
        (Kind::Xml, _) => {
            let doc = Node {
                content: tree::read_children(&txn, &XmlFragmentRef::from(ptr), 1)?,
                ..Node::new("doc")
            };
            match format {
                Format::Json => json(&doc),
                Format::Html => markdown::to_html(&doc),
                Format::Markdown => markdown::to_markdown(&doc)?,
                Format::Text => block_text(&doc),
            }
        }
        (Kind::Text, Format::Text) => TextRef::from(ptr).get_string(&txn),
        (Kind::Text, Format::Json) => {
            let delta: Vec<Value> = TextRef::from(ptr)
                .diff(&txn, YChange::identity)
                .into_iter()
                .filter_map(|chunk| {
                    let mut entry = Map::new();
                    entry.insert("insert".into(), tree::out_to_json(&chunk.insert)?);
                    if let Some(attrs) = chunk.attributes {
                        let attrs =
                            attrs.iter().map(|(k, v)| (k.to_string(), any_to_json(v))).collect();
                        entry.insert("attributes".into(), Value::Object(attrs));
                    }
                    Some(Value::Object(entry))
                })
                .collect();
            json(&delta)
        }
        (Kind::Map, Format::Json) => json(&deep_json(&txn, &Out::YMap(MapRef::from(ptr)), 0)?),
        (Kind::Array, Format::Json) => {
            json(&deep_json(&txn, &Out::YArray(ArrayRef::from(ptr)), 0)?)
        }
        (kind, format) => return Err(unsupported(field, kind, format)),
    };
    Ok(Exported { content_type: format.content_type(), body })
}

fn unsupported(field: &str, kind: Kind, format: Format) -> Error {
    let formats = match kind {
        Kind::Xml => "text, json, html, markdown",
        Kind::Text => "text, json",
        Kind::Map | Kind::Array => "json",
    };
    Error::BadRequest(format!(
        "field {field:?} is a {kind:?} type: format {format:?} does not apply (use one of: {formats})"
    )
    .to_lowercase())
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Plain text: one line per paragraph, heading or code line.
fn block_text(doc: &Node) -> String {
    fn walk(node: &Node, out: &mut String) {
        match node.kind.as_str() {
            "paragraph" | "heading" | "codeBlock" => {
                node.plain_text(out);
                out.push('\n');
            }
            "horizontalRule" => out.push('\n'),
            _ if node.content.iter().any(|c| c.is_text()) => {
                node.plain_text(out);
                out.push('\n');
            }
            _ => node.content.iter().for_each(|c| walk(c, out)),
        }
    }
    let mut out = String::new();
    walk(doc, &mut out);
    out
}

/// A map or array as JSON, nested shared types included, depth-bounded.
fn deep_json<T: ReadTxn>(txn: &T, value: &Out, depth: usize) -> Result<Value, Error> {
    if depth > MAX_DEPTH {
        return Err(Error::BadRequest(format!("content nested deeper than {MAX_DEPTH} levels")));
    }
    Ok(match value {
        Out::Any(any) => any_to_json(any),
        Out::YMap(map) => {
            let mut object = Map::new();
            for (key, value) in map.iter(txn) {
                object.insert(key.to_string(), deep_json(txn, &value, depth + 1)?);
            }
            Value::Object(object)
        }
        Out::YArray(array) => Value::Array(
            array.iter(txn).map(|v| deep_json(txn, &v, depth + 1)).collect::<Result<_, _>>()?,
        ),
        Out::YText(text) => Value::String(text.get_string(txn)),
        Out::YXmlText(text) => Value::String(text.get_string(txn)),
        Out::YXmlElement(el) => Value::String(el.get_string(txn)),
        Out::YXmlFragment(f) => Value::String(f.get_string(txn)),
        _ => Value::Null,
    })
}

/// Content to write, parsed and checked by the HTTP handler before it reaches a room.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    /// A ProseMirror document (from Markdown, HTML or ProseMirror JSON).
    Tree(Node),
    Text(String),
    /// JSON for a map (an object) or an array.
    Json(Value),
}

pub(crate) fn parse(format: Format, body: &[u8]) -> Result<Payload, Error> {
    let text =
        std::str::from_utf8(body).map_err(|_| Error::BadRequest("the body is not UTF-8".into()))?;
    match format {
        Format::Markdown => Ok(Payload::Tree(markdown::parse_markdown(text)?)),
        Format::Html => Ok(Payload::Tree(html::parse_html(text)?)),
        Format::Text => Ok(Payload::Text(text.to_string())),
        Format::Json => {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| Error::BadRequest(format!("invalid JSON: {e}")))?;
            if value.get("type").and_then(Value::as_str) == Some("doc") {
                let doc: Node = serde_json::from_value(value)
                    .map_err(|e| Error::BadRequest(format!("invalid ProseMirror JSON: {e}")))?;
                doc.validate(0)?;
                return Ok(Payload::Tree(doc));
            }
            match value {
                Value::Object(_) | Value::Array(_) => Ok(Payload::Json(value)),
                Value::String(s) => Ok(Payload::Text(s)),
                _ => Err(Error::BadRequest(
                    "JSON content is a ProseMirror document, an object, an array or a string"
                        .into(),
                )),
            }
        }
    }
}

/// Paragraphs for plain text written into a rich-text field: one per line.
fn paragraphs(text: &str) -> Node {
    let mut doc = Node::new("doc");
    for line in text.lines() {
        let mut p = Node::new("paragraph");
        if !line.is_empty() {
            p.content.push(Node::text(line.to_string(), Vec::new()));
        }
        doc.content.push(p);
    }
    doc
}

/// Replaces (or, with `append`, extends) `field` with `payload`, in the caller's transaction.
/// Refuses before changing anything when the payload does not fit the field's kind. A field
/// that does not exist yet takes the payload's kind (plain text into `default` makes
/// paragraphs, since that is the editor's rich-text field).
pub(crate) fn edit(
    txn: &mut TransactionMut,
    field: &str,
    payload: &Payload,
    append: bool,
) -> Result<(), Error> {
    let existing = root(txn, field).and_then(|(_, kind)| kind);
    let target = match (existing, payload) {
        (Some(kind), _) => kind,
        (None, Payload::Tree(_)) => Kind::Xml,
        (None, Payload::Text(_)) if field == DEFAULT_FIELD => Kind::Xml,
        (None, Payload::Text(_)) => Kind::Text,
        (None, Payload::Json(Value::Array(_))) => Kind::Array,
        (None, Payload::Json(_)) => Kind::Map,
    };
    match (target, payload) {
        (Kind::Xml, Payload::Tree(doc)) => write_tree(txn, field, doc, append),
        (Kind::Xml, Payload::Text(text)) => write_tree(txn, field, &paragraphs(text), append),
        (Kind::Text, Payload::Text(text)) => {
            let t = txn.get_or_insert_text(field);
            if !append {
                let len = t.len(txn);
                t.remove_range(txn, 0, len);
            }
            let at = t.len(txn);
            t.insert(txn, at, text);
            Ok(())
        }
        (Kind::Map, Payload::Json(Value::Object(object))) => {
            let map = txn.get_or_insert_map(field);
            if !append {
                let stale: Vec<String> = map
                    .keys(txn)
                    .filter(|k| !object.contains_key(*k))
                    .map(str::to_string)
                    .collect();
                for key in stale {
                    map.remove(txn, &key);
                }
            }
            for (key, value) in object {
                map.insert(txn, key.as_str(), json_to_any(value));
            }
            Ok(())
        }
        (Kind::Array, Payload::Json(Value::Array(items))) => {
            let array = txn.get_or_insert_array(field);
            if !append {
                let len = array.len(txn);
                array.remove_range(txn, 0, len);
            }
            for item in items {
                array.push_back(txn, json_to_any(item));
            }
            Ok(())
        }
        (kind, _) => Err(Error::BadRequest(
            format!("field {field:?} is a {kind:?} type and this content does not fit it")
                .to_lowercase(),
        )),
    }
}

fn write_tree(
    txn: &mut TransactionMut,
    field: &str,
    doc: &Node,
    append: bool,
) -> Result<(), Error> {
    doc.validate(0)?;
    let fragment = txn.get_or_insert_xml_fragment(field);
    if !append {
        let len = fragment.len(txn);
        fragment.remove_range(txn, 0, len);
    }
    tree::write_children(txn, &fragment, &doc.content, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(doc: &Doc, field: &str, format: Format, body: &str, append: bool) {
        let payload = parse(format, body.as_bytes()).expect("parse");
        let mut txn = doc.transact_mut();
        edit(&mut txn, field, &payload, append).expect("edit");
    }

    fn read(doc: &Doc, field: &str, format: Format) -> String {
        export(doc, field, format).expect("export").body
    }

    #[test]
    fn markdown_in_markdown_out_through_a_ydoc() {
        let doc = Doc::new();
        let md = "# Hello\n\nSome **bold** and *it*.\n\n- a\n- b\n";
        write(&doc, DEFAULT_FIELD, Format::Markdown, md, false);
        // Seen by a second replica, where the type is undefined until read.
        let remote = Doc::new();
        let update = doc.transact().encode_state_as_update_v1(&yrs::StateVector::default());
        let update =
            <yrs::Update as yrs::updates::decoder::Decode>::decode_v1(&update).expect("decode");
        remote.transact_mut().apply_update(update).expect("apply");
        assert_eq!(kinds(&remote).get(DEFAULT_FIELD), Some(&Kind::Xml));
        assert_eq!(read(&remote, DEFAULT_FIELD, Format::Markdown), md);
        assert_eq!(read(&remote, DEFAULT_FIELD, Format::Text), "Hello\nSome bold and it.\na\nb\n");
        write(&doc, DEFAULT_FIELD, Format::Markdown, "More.", true);
        assert!(read(&doc, DEFAULT_FIELD, Format::Markdown).ends_with("- b\n\nMore.\n"));
    }

    #[test]
    fn text_map_and_array_fields() {
        let doc = Doc::new();
        write(&doc, "notes", Format::Text, "plain", false);
        write(&doc, "meta", Format::Json, r#"{"a":1,"b":[true]}"#, false);
        write(&doc, "list", Format::Json, r#"[1,"x"]"#, false);
        assert_eq!(read(&doc, "notes", Format::Text), "plain");
        assert_eq!(read(&doc, "meta", Format::Json), r#"{"a":1,"b":[true]}"#);
        assert_eq!(read(&doc, "list", Format::Json), r#"[1,"x"]"#);
        let k = kinds(&doc);
        assert_eq!((k["notes"], k["meta"], k["list"]), (Kind::Text, Kind::Map, Kind::Array));
        // A kind mismatch is refused and changes nothing.
        let payload = parse(Format::Markdown, b"# no").expect("parse");
        let before = doc.transact().state_vector();
        assert!(edit(&mut doc.transact_mut(), "meta", &payload, false).is_err());
        assert_eq!(doc.transact().state_vector(), before);
        assert!(matches!(export(&doc, "nope", Format::Json), Err(Error::NotFound(_))));
        assert!(matches!(export(&doc, "meta", Format::Html), Err(Error::BadRequest(_))));
    }
}
