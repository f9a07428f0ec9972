//! Access control: who may read or write which document, decided from a signed token.
//!
//! The decision is pure (`Identity::access`, `Caller::require`), so it is tested without a
//! socket; `keys` verifies a token into an `Identity`, `revoke` keeps the deny list, `mint`
//! is the CLI side (`tandem token`, `tandem share`). With no key configured the server is
//! open (`Caller::Open`), as before access control existed.
//!
//! A token never reaches a log line: only its `sub` and `jti` do.

mod keys;
pub mod mint;
mod revoke;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::error::Error;
use crate::id::{BrowserId, DocId};

pub(crate) use self::keys::Keys;
pub(crate) use self::revoke::Revocations;
pub(crate) use crate::store::{Revocation, RevocationKind};

/// Grants a token may carry (more would make every check slow and every token huge).
pub(crate) const MAX_GRANTS: usize = 32;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 5;

/// What a caller may do with one document. Ordered: `Write` includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Which documents a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    /// `*`, `prefix*` (one `*`, at the end) or an exact document name.
    pub(crate) fn parse(p: &str) -> Result<Pattern, String> {
        if p == "*" {
            return Ok(Pattern::Any);
        }
        let (body, prefix) = match p.strip_suffix('*') {
            Some(body) => (body, true),
            None => (p, false),
        };
        if body.contains('*') {
            return Err(format!("pattern {p:?}: '*' may only end a pattern"));
        }
        if body.is_empty() || body.len() > DocId::MAX_LEN {
            return Err(format!("pattern {p:?}: empty or too long"));
        }
        if !body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(format!("pattern {p:?}: not a document name"));
        }
        Ok(if prefix { Pattern::Prefix(body.into()) } else { Pattern::Exact(body.into()) })
    }

    fn matches(&self, doc: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(prefix) => doc.starts_with(prefix.as_str()),
            Pattern::Exact(name) => doc == name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) pattern: Pattern,
    pub(crate) access: Access,
}

/// The claims of a token, as signed.
#[derive(Debug, Deserialize)]
pub(crate) struct Claims {
    pub(crate) exp: u64,
    #[serde(default)]
    pub(crate) nbf: Option<u64>,
    #[serde(default)]
    pub(crate) iat: Option<u64>,
    pub(crate) sub: String,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) jti: Option<String>,
    #[serde(default)]
    pub(crate) admin: Option<bool>,
    #[serde(default)]
    pub(crate) docs: Option<Vec<RawGrant>>,
}

#[derive(Debug, Deserialize, serde::Serialize, Clone)]
pub(crate) struct RawGrant {
    pub(crate) p: String,
    pub(crate) a: String,
}

/// A verified token: who it is for and what it allows.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) sub: String,
    pub(crate) name: Option<String>,
    pub(crate) jti: Option<String>,
    pub(crate) iat: Option<u64>,
    /// Seconds since the epoch.
    pub(crate) exp: u64,
    pub(crate) admin: bool,
    pub(crate) grants: Vec<Grant>,
}

impl Identity {
    /// Checks the claims beyond what the JWT library validates: the grants' shape.
    pub(crate) fn from_claims(claims: Claims) -> Result<Identity, String> {
        if claims.sub.is_empty() {
            return Err("empty sub".into());
        }
        let admin = claims.admin.unwrap_or(false);
        let raw = match (claims.docs, admin) {
            (Some(docs), _) => docs,
            (None, true) => Vec::new(),
            (None, false) => return Err("no docs claim".into()),
        };
        if raw.len() > MAX_GRANTS {
            return Err(format!("more than {MAX_GRANTS} grants"));
        }
        let mut grants = Vec::with_capacity(raw.len());
        for g in raw {
            let access = match g.a.as_str() {
                "r" => Access::Read,
                "rw" => Access::Write,
                other => return Err(format!("access {other:?} is neither \"r\" nor \"rw\"")),
            };
            grants.push(Grant { pattern: Pattern::parse(&g.p)?, access });
        }
        Ok(Identity {
            sub: claims.sub,
            name: claims.name,
            jti: claims.jti,
            iat: claims.iat,
            exp: claims.exp,
            admin,
            grants,
        })
    }

    /// The strongest grant matching `doc`, if any.
    pub(crate) fn access(&self, doc: &DocId) -> Option<Access> {
        if self.admin {
            return Some(Access::Write);
        }
        self.grants.iter().filter(|g| g.pattern.matches(doc.as_str())).map(|g| g.access).max()
    }

    /// The colour-book key for this person: the same `sub` gets the same colour on every
    /// device. Hashed, because a `sub` may hold any characters.
    pub(crate) fn colour_key(&self) -> Option<BrowserId> {
        use std::hash::{Hash, Hasher};
        // DefaultHasher::new() has fixed keys: the same sub maps to the same id in every
        // process, so colours survive restarts as well as browser ids do.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.sub.hash(&mut h);
        let key = format!("sub-{:016x}", h.finish());
        BrowserId::parse(&key).ok()
    }
}

/// Who is asking: anyone (no key configured), or the holder of a verified token.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    Open,
    Token(Arc<Identity>),
}

impl Caller {
    /// What this caller may do with `doc`: 403 (4403) without a grant.
    pub(crate) fn access(&self, doc: &DocId) -> Result<Access, Error> {
        match self {
            Caller::Open => Ok(Access::Write),
            Caller::Token(id) => id
                .access(doc)
                .ok_or_else(|| Error::Forbidden(format!("no access to document {doc}"))),
        }
    }

    pub(crate) fn require(&self, doc: &DocId, needed: Access) -> Result<(), Error> {
        let has = self.access(doc)?;
        if has < needed {
            return Err(Error::Forbidden(format!("read-only access to document {doc}")));
        }
        Ok(())
    }

    /// Admin endpoints. An open server lets everyone do everything, deletion included (as
    /// anyone may already overwrite any document there); revocation checks `is_open` itself.
    pub(crate) fn require_admin(&self) -> Result<(), Error> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(id) if id.admin => Ok(()),
            Caller::Token(_) => Err(Error::Forbidden("admin token required".into())),
        }
    }

    pub(crate) fn can_read(&self, doc: &DocId) -> bool {
        self.access(doc).is_ok()
    }

    pub(crate) fn identity(&self) -> Option<&Arc<Identity>> {
        match self {
            Caller::Open => None,
            Caller::Token(id) => Some(id),
        }
    }
}

/// The server's access control: keys and the deny list. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Auth {
    keys: Option<Arc<Keys>>,
    revocations: Revocations,
}

impl Auth {
    pub(crate) fn new(keys: Option<Keys>, revocations: Revocations) -> Auth {
        Auth { keys: keys.map(Arc::new), revocations }
    }

    /// Who presents `token`: Open without keys; otherwise the token must verify, not be
    /// revoked, and be present at all (401/4401 with the reason).
    pub(crate) fn caller(&self, token: Option<&str>) -> Result<Caller, Error> {
        let Some(keys) = &self.keys else { return Ok(Caller::Open) };
        let token = token.ok_or_else(|| Error::Unauthorized("no token".into()))?;
        let identity = keys.verify(token, now_secs()).map_err(Error::Unauthorized)?;
        if self.revocations.is_revoked(&identity) {
            return Err(Error::Unauthorized("token revoked".into()));
        }
        Ok(Caller::Token(Arc::new(identity)))
    }

    pub(crate) fn revocations(&self) -> &Revocations {
        &self.revocations
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(grants: &[(&str, &str)], admin: bool) -> Result<Identity, String> {
        Identity::from_claims(Claims {
            exp: 1,
            nbf: None,
            iat: None,
            sub: "u".into(),
            name: None,
            jti: None,
            admin: Some(admin),
            docs: Some(
                grants
                    .iter()
                    .map(|(p, a)| RawGrant { p: p.to_string(), a: a.to_string() })
                    .collect(),
            ),
        })
    }

    fn doc(name: &str) -> DocId {
        DocId::parse(name).expect("valid")
    }

    #[test]
    fn the_strongest_matching_grant_wins() {
        let id = identity(&[("team-42.*", "r"), ("team-42.plan", "rw"), ("notes", "r")], false)
            .expect("valid");
        assert_eq!(id.access(&doc("team-42.plan")), Some(Access::Write));
        assert_eq!(id.access(&doc("team-42.other")), Some(Access::Read));
        assert_eq!(id.access(&doc("notes")), Some(Access::Read));
        assert_eq!(id.access(&doc("notes2")), None, "exact means exact");
        assert_eq!(id.access(&doc("team-43.plan")), None);
        let any = identity(&[("*", "r")], false).expect("valid");
        assert_eq!(any.access(&doc("anything")), Some(Access::Read));
        let admin = identity(&[], true).expect("valid");
        assert_eq!(admin.access(&doc("anything")), Some(Access::Write));
    }

    #[test]
    fn malformed_grants_are_refused() {
        for (p, a) in [("a*b", "r"), ("**", "r"), ("", "r"), ("x", "w"), ("x y", "r"), ("x", "")] {
            assert!(identity(&[(p, a)], false).is_err(), "{p:?} {a:?}");
        }
        let many: Vec<(&str, &str)> = (0..33).map(|_| ("a", "r")).collect();
        assert!(identity(&many, false).is_err());
        let none = Identity::from_claims(Claims {
            exp: 1,
            nbf: None,
            iat: None,
            sub: "u".into(),
            name: None,
            jti: None,
            admin: None,
            docs: None,
        });
        assert!(none.is_err(), "docs is required unless admin");
    }

    #[test]
    fn callers_are_checked_per_document() {
        let id = Arc::new(identity(&[("a", "r"), ("b", "rw")], false).expect("valid"));
        let caller = Caller::Token(id);
        assert!(caller.require(&doc("a"), Access::Read).is_ok());
        assert_eq!(caller.require(&doc("a"), Access::Write).map_err(|e| e.close_code()), Err(4403));
        assert!(caller.require(&doc("b"), Access::Write).is_ok());
        assert_eq!(caller.access(&doc("c")).map_err(|e| e.status_code().as_u16()), Err(403));
        assert!(caller.require_admin().is_err());
        assert!(Caller::Open.require(&doc("c"), Access::Write).is_ok());
    }
}
