//! Identifiers that travel between modules, validated once at construction so that no
//! handler, room or query ever sees an unchecked `String`.

use std::fmt;
use std::sync::Arc;

use crate::error::Error;

/// A document name: 1-200 characters of ASCII letters, digits, `-`, `_` and `.`.
/// Cheap to clone: rooms, peers and log lines all carry it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DocId(Arc<str>);

impl DocId {
    pub(crate) const MAX_LEN: usize = 200;

    pub(crate) fn parse(name: &str) -> Result<DocId, Error> {
        if name.is_empty() {
            return Err(Error::BadDocName("empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::BadDocName("longer than 200 characters"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(Error::BadDocName("only letters, digits, '-', '_' and '.' are allowed"));
        }
        // `.` and `..` are path segments to a browser (and to every proxy): /d/.. never
        // reaches us as a document.
        if name.bytes().all(|b| b == b'.') {
            return Err(Error::BadDocName("a name needs a letter, digit, '-' or '_'"));
        }
        Ok(DocId(name.into()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A browser's stable random id (kept in its localStorage), used to give the same person
/// the same cursor colour when they come back. Not a secret and not an authentication.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct BrowserId(Arc<str>);

impl BrowserId {
    pub(crate) fn parse(id: &str) -> Result<BrowserId, Error> {
        let ok = (1..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Error::BadBrowserId);
        }
        Ok(BrowserId(id.into()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// One WebSocket connection's identity inside a room (a connection, not a person: the same
/// browser reconnecting is a new peer).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PeerId(uuid::Uuid);

impl PeerId {
    pub(crate) fn new() -> PeerId {
        PeerId(uuid::Uuid::new_v4())
    }
}

impl Default for PeerId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 hex digits are plenty to follow one peer through a log.
        write!(f, "{}", &self.0.simple().to_string()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_names() {
        assert!(DocId::parse("a").is_ok());
        assert!(DocId::parse("My-doc_1.v2").is_ok());
        assert!(DocId::parse(".a").is_ok());
        assert!(DocId::parse(&"x".repeat(200)).is_ok());
        for bad in ["", ".", "..", "...", "a/b", "a b", "ä", "..%2f", &"x".repeat(201)] {
            assert!(DocId::parse(bad).is_err(), "{bad}");
        }
    }
}
