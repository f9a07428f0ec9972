//! The deny list: tokens revoked by `jti`, and users revoked by `sub` (every token issued
//! up to that second). Stored first, then applied, so a revocation that was answered
//! survives a restart; live connections learn of it through a `watch` channel and check
//! their own token, so nobody scans the connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::Identity;
use crate::error::Error;
use crate::store::{Revocation, RevocationKind, Store};

#[derive(Clone)]
pub(crate) struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    lists: Mutex<Lists>,
    /// Bumped after every revocation; connections re-check their token when it moves.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Lists {
    jti: HashMap<String, u64>,
    sub: HashMap<String, u64>,
}

impl Revocations {
    pub(crate) fn new(stored: Vec<Revocation>) -> Revocations {
        let mut lists = Lists::default();
        for r in stored {
            lists.insert(r);
        }
        let (changed, _) = watch::channel(0);
        Revocations { inner: Arc::new(Inner { lists: Mutex::new(lists), changed }) }
    }

    fn lists(&self) -> MutexGuard<'_, Lists> {
        // Every critical section is one map operation: a poisoned lock is still consistent.
        self.inner.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_revoked(&self, id: &Identity) -> bool {
        let lists = self.lists();
        if let Some(jti) = &id.jti
            && lists.jti.contains_key(jti)
        {
            return true;
        }
        match lists.sub.get(&id.sub) {
            // A token without `iat` cannot show it was issued after the revocation.
            Some(at) => id.iat.is_none_or(|iat| iat <= *at),
            None => false,
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    pub(crate) async fn revoke(
        &self,
        store: &Store,
        kind: RevocationKind,
        value: String,
    ) -> Result<Revocation, Error> {
        if value.is_empty() || value.len() > 1024 {
            return Err(Error::BadRequest(format!("{} must be 1-1024 characters", kind.as_str())));
        }
        let revocation = Revocation { kind, value, revoked_at: super::now_secs() };
        store.revoke(&revocation).await?;
        self.lists().insert(revocation.clone());
        self.inner.changed.send_modify(|n| *n += 1);
        Ok(revocation)
    }

    /// Takes in the stored list as another node changed it; live connections re-check
    /// their tokens if anything is new.
    pub(crate) fn merge(&self, stored: Vec<Revocation>) {
        let mut changed = false;
        {
            let mut lists = self.lists();
            for r in stored {
                changed |= lists.insert(r);
            }
        }
        if changed {
            self.inner.changed.send_modify(|n| *n += 1);
        }
    }
}

impl Lists {
    /// True if this entry was new or moved the revocation later.
    fn insert(&mut self, r: Revocation) -> bool {
        let map = match r.kind {
            RevocationKind::Jti => &mut self.jti,
            RevocationKind::Sub => &mut self.sub,
        };
        match map.get_mut(&r.value) {
            Some(at) if *at >= r.revoked_at => false,
            Some(at) => {
                *at = r.revoked_at;
                true
            }
            None => {
                map.insert(r.value, r.revoked_at);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sub: &str, jti: Option<&str>, iat: Option<u64>) -> Identity {
        Identity {
            sub: sub.into(),
            name: None,
            jti: jti.map(Into::into),
            iat,
            exp: u64::MAX,
            admin: false,
            grants: Vec::new(),
        }
    }

    #[test]
    fn sub_revocation_spares_tokens_minted_afterwards() {
        let r = Revocations::new(vec![
            Revocation { kind: RevocationKind::Sub, value: "ada".into(), revoked_at: 100 },
            Revocation { kind: RevocationKind::Jti, value: "t1".into(), revoked_at: 50 },
        ]);
        assert!(r.is_revoked(&id("ada", None, Some(99))));
        assert!(r.is_revoked(&id("ada", None, Some(100))), "the same second counts as before");
        assert!(r.is_revoked(&id("ada", None, None)));
        assert!(!r.is_revoked(&id("ada", None, Some(101))));
        assert!(r.is_revoked(&id("bob", Some("t1"), Some(1000))));
        assert!(!r.is_revoked(&id("bob", Some("t2"), Some(1))));
    }
}
