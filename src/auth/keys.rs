//! Token verification: which key checks a token, and the checks the JWT library does not
//! make on its own (`crit`, the key's one algorithm, our claims).
//!
//! Each key accepts exactly one algorithm: the HS256 secret, or a public key file whose
//! curve fixes it (Ed25519: EdDSA, P-256: ES256). A token names its key with `kid` (the
//! key file's stem); without `kid` it is accepted only when there is exactly one key, so
//! adding a second key never makes an old token ambiguous.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Claims, Identity, LEEWAY_SECS};

pub(crate) struct Keys {
    secret: Option<DecodingKey>,
    public: HashMap<String, (DecodingKey, Algorithm)>,
}

impl Keys {
    /// The configured keys, or None (open mode) when there are none.
    pub(crate) fn from_config(
        secret: Option<&str>,
        public_keys: &[PathBuf],
    ) -> anyhow::Result<Option<Keys>> {
        let secret = match secret {
            Some("") => anyhow::bail!("--auth-secret is empty"),
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes()).context("the auth secret")?),
            None => None,
        };
        let mut public = HashMap::new();
        for path in public_keys {
            let kid = kid_of(path)?;
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the public key {}", path.display()))?;
            let key = public_key(&pem).with_context(|| {
                format!("{}: not an Ed25519 or P-256 public key in PEM", path.display())
            })?;
            if public.insert(kid.clone(), key).is_some() {
                anyhow::bail!("two public keys have the kid {kid:?}");
            }
        }
        if secret.is_none() && public.is_empty() {
            return Ok(None);
        }
        Ok(Some(Keys { secret, public }))
    }

    fn count(&self) -> usize {
        self.public.len() + usize::from(self.secret.is_some())
    }

    /// Verifies `token` at time `now` (seconds) into an identity, or says why not.
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<Identity, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            if header_says_none(token) {
                "unsigned tokens (alg none) are not accepted".to_string()
            } else {
                format!("malformed token: {e}")
            }
        })?;
        if let Some(crit) = &header.crit {
            return Err(format!("unsupported critical header {crit:?}"));
        }
        let (key, alg) = match &header.kid {
            Some(kid) => match self.public.get(kid) {
                Some((key, alg)) => (key, *alg),
                None => return Err(format!("unknown key id {kid:?}")),
            },
            None if self.count() == 1 => match (&self.secret, self.public.values().next()) {
                (Some(secret), _) => (secret, Algorithm::HS256),
                (None, Some((key, alg))) => (key, *alg),
                (None, None) => return Err("no key".into()),
            },
            None => return Err("token has no kid and several keys are configured".into()),
        };
        if header.alg != alg {
            return Err(format!("algorithm {:?} does not match the key ({alg:?})", header.alg));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(describe)?;
        let claims = data.claims;
        // The library checks against its own clock; `now` is ours (tests move it).
        if claims.exp.saturating_add(LEEWAY_SECS) <= now {
            return Err("token expired".into());
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
            return Err("token not yet valid".into());
        }
        Identity::from_claims(claims).map_err(|e| format!("malformed token: {e}"))
    }
}

/// The `kid` a key file stands for: its file name without `.pem`.
fn kid_of(path: &Path) -> anyhow::Result<String> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if stem.is_empty() {
        anyhow::bail!("{}: a key file is named KID.pem", path.display());
    }
    Ok(stem.to_string())
}

fn public_key(pem: &[u8]) -> anyhow::Result<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    Ok((DecodingKey::from_ec_pem(pem)?, Algorithm::ES256))
}

fn header_says_none(token: &str) -> bool {
    use base64::Engine as _;
    let Some(first) = token.split('.').next() else { return false };
    let Ok(json) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(first.trim_end_matches('='))
    else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(|a| a.eq_ignore_ascii_case("none")))
        .unwrap_or(false)
}

fn describe(e: jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid".into(),
        ErrorKind::InvalidAlgorithm => "algorithm does not match the key".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("malformed token: no {c} claim"),
        _ => format!("malformed token: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::auth::now_secs;

    const SECRET: &str = "a test secret, long enough";

    fn keys() -> Keys {
        Keys::from_config(Some(SECRET), &[]).expect("keys").expect("configured")
    }

    fn sign(header: &Header, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
        )
        .expect("sign")
    }

    fn claims(exp: u64) -> serde_json::Value {
        json!({"sub": "ada", "exp": exp, "docs": [{"p": "notes", "a": "rw"}]})
    }

    /// A real HS256 token signs and verifies: the crypto backend is compiled in (without
    /// one, jsonwebtoken 10+ compiles and panics at run time).
    #[test]
    fn a_real_token_verifies() {
        let now = now_secs();
        let id = keys().verify(&sign(&Header::default(), claims(now + 60)), now).expect("valid");
        assert_eq!(id.sub, "ada");
        assert_eq!(id.grants.len(), 1);
    }

    #[test]
    fn refusals_say_why() {
        let now = now_secs();
        let k = keys();
        let expired = k.verify(&sign(&Header::default(), claims(now - 10)), now).unwrap_err();
        assert_eq!(expired, "token expired");
        let within_leeway = k.verify(&sign(&Header::default(), claims(now - 2)), now);
        assert!(within_leeway.is_ok(), "{within_leeway:?}");
        let mut c = claims(now + 60);
        c["nbf"] = json!(now + 60);
        assert_eq!(k.verify(&sign(&Header::default(), c), now).unwrap_err(), "token not yet valid");
        let other = jsonwebtoken::encode(
            &Header::default(),
            &claims(now + 60),
            &EncodingKey::from_secret(b"another secret").expect("key"),
        )
        .expect("sign");
        assert_eq!(k.verify(&other, now).unwrap_err(), "bad signature");
        let crit = Header { crit: Some(vec!["exp".into()]), ..Default::default() };
        assert!(k.verify(&sign(&crit, claims(now + 60)), now).unwrap_err().contains("critical"));
        let kid = Header { kid: Some("nope".into()), ..Default::default() };
        assert!(k.verify(&sign(&kid, claims(now + 60)), now).unwrap_err().contains("unknown key"));
        let hs384 = Header::new(Algorithm::HS384);
        assert!(k.verify(&sign(&hs384, claims(now + 60)), now).unwrap_err().contains("algorithm"));
        // alg none: header {"alg":"none"}, claims, empty signature.
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims(now + 60)));
        assert!(k.verify(&none, now).unwrap_err().contains("alg none"));
        for garbage in ["", "a.b.c", "not a token", "...."] {
            assert!(k.verify(garbage, now).unwrap_err().starts_with("malformed"), "{garbage}");
        }
        let no_sub = sign(&Header::default(), json!({"exp": now + 60, "docs": []}));
        assert!(k.verify(&no_sub, now).unwrap_err().contains("sub"));
        let no_docs = sign(&Header::default(), json!({"exp": now + 60, "sub": "x"}));
        assert!(k.verify(&no_docs, now).unwrap_err().contains("docs"));
        let no_exp = sign(&Header::default(), json!({"sub": "x", "docs": []}));
        assert!(k.verify(&no_exp, now).is_err());
    }
}
