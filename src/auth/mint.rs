//! The CLI side of tokens: `tandem token` mints one, `tandem share` prints an editor link
//! carrying one. Same claims as the server verifies (see `Claims`), signed with the same
//! kinds of key: the HS256 secret, or a private key whose file stem becomes the `kid`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{MAX_GRANTS, Pattern, RawGrant, now_secs};

/// Mint a token for a backend, a script or a test.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// A grant, `PATTERN[:r|:rw]` (an exact name, `prefix*` or `*`; access defaults to rw).
    /// Repeatable.
    #[arg(long = "doc", value_name = "PATTERN[:r|:rw]")]
    pub docs: Vec<String>,
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Lifetime: seconds (`60`) or `30s`, `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Token id, for revoking this one token.
    #[arg(long)]
    pub jti: Option<String>,
    /// May do everything, including the admin API.
    #[arg(long)]
    pub admin: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Print an editor link that carries a token: `BASE/d/DOC#token=JWT`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShareArgs {
    /// The document.
    pub doc: String,
    /// A view-only link.
    #[arg(long)]
    pub read_only: bool,
    /// Lifetime: seconds (`60`) or `30s`, `15m`, `1h`, `7d`.
    #[arg(long, default_value = "7d", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Where people reach this server.
    #[arg(long, env = "TANDEM_BASE_URL", default_value = "http://localhost:8080")]
    pub base_url: String,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// HS256 secret (raw UTF-8 bytes), the same as the server's.
    #[arg(long, env = "TANDEM_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// Sign with this PEM private key (Ed25519 or P-256) instead; its file stem is the kid.
    #[arg(long, env = "TANDEM_AUTH_PRIVATE_KEY")]
    pub auth_private_key: Option<PathBuf>,
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    docs: Option<Vec<RawGrant>>,
}

pub(crate) fn token(args: &TokenArgs) -> anyhow::Result<String> {
    let mut grants = Vec::with_capacity(args.docs.len());
    for doc in &args.docs {
        grants.push(parse_grant(doc)?);
    }
    if grants.is_empty() && !args.admin {
        bail!("give at least one --doc PATTERN[:r|:rw] (or --admin)");
    }
    if grants.len() > MAX_GRANTS {
        bail!("at most {MAX_GRANTS} --doc grants");
    }
    let now = now_secs();
    let claims = MintedClaims {
        sub: &args.sub,
        exp: now + args.ttl.as_secs(),
        iat: now,
        name: args.name.as_deref(),
        jti: args.jti.as_deref(),
        admin: args.admin,
        docs: (!grants.is_empty()).then_some(grants),
    };
    sign(&args.key, &claims)
}

pub(crate) fn share(args: &ShareArgs) -> anyhow::Result<(String, String)> {
    crate::id::DocId::parse(&args.doc).map_err(|e| anyhow::anyhow!("{e}"))?;
    let jti = uuid::Uuid::new_v4().to_string();
    let access = if args.read_only { "r" } else { "rw" };
    let claims = MintedClaims {
        sub: &format!("link:{}", &jti[..8]),
        exp: now_secs() + args.ttl.as_secs(),
        iat: now_secs(),
        name: None,
        jti: Some(&jti),
        admin: false,
        docs: Some(vec![RawGrant { p: args.doc.clone(), a: access.into() }]),
    };
    let token = sign(&args.key, &claims)?;
    let base = args.base_url.trim_end_matches('/');
    Ok((format!("{base}/d/{}#token={token}", args.doc), jti))
}

fn sign(key: &KeyArgs, claims: &MintedClaims<'_>) -> anyhow::Result<String> {
    let (header, key) = match (&key.auth_private_key, &key.auth_secret) {
        (Some(path), _) => private_key(path)?,
        (None, Some(secret)) if !secret.is_empty() => {
            (Header::new(Algorithm::HS256), EncodingKey::from_secret(secret.as_bytes())?)
        }
        _ => bail!("no key: set --auth-secret (or TANDEM_AUTH_SECRET) or --auth-private-key"),
    };
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

fn private_key(path: &Path) -> anyhow::Result<(Header, EncodingKey)> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let kid = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let (alg, key) = match EncodingKey::from_ed_pem(&pem) {
        Ok(key) => (Algorithm::EdDSA, key),
        Err(_) => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem).with_context(|| {
                format!("{}: not an Ed25519 or P-256 private key in PEM", path.display())
            })?,
        ),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid);
    Ok((header, key))
}

/// `PATTERN`, `PATTERN:r` or `PATTERN:rw`.
fn parse_grant(spec: &str) -> anyhow::Result<RawGrant> {
    let (pattern, access) = match spec.rsplit_once(':') {
        Some((p, a @ ("r" | "rw"))) => (p, a),
        Some((_, other)) => bail!("{spec:?}: access {other:?} is neither r nor rw"),
        None => (spec, "rw"),
    };
    Pattern::parse(pattern).map_err(|e| anyhow::anyhow!(e))?;
    Ok(RawGrant { p: pattern.into(), a: access.into() })
}

/// Seconds (`60`) or a number with `s`, `m`, `h` or `d`.
pub(crate) fn parse_ttl(ttl: &str) -> Result<Duration, String> {
    let ttl = ttl.trim();
    let (number, unit) = match ttl.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => ttl.split_at(i),
        None => (ttl, "s"),
    };
    let n: u64 =
        number.parse().map_err(|_| format!("{ttl:?}: expected e.g. 60, 30s, 15m, 1h, 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{ttl:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(unit)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{ttl:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Keys;

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "1w", "-1", "0", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_minted_token_verifies_with_the_same_secret() {
        let args = TokenArgs {
            docs: vec!["team-42.*:r".into(), "notes".into()],
            sub: "ada".into(),
            name: Some("Ada".into()),
            ttl: Duration::from_secs(60),
            jti: Some("t1".into()),
            admin: false,
            key: KeyArgs { auth_secret: Some("s3cret".into()), auth_private_key: None },
        };
        let token = token(&args).expect("minted");
        let keys = Keys::from_config(Some("s3cret"), &[]).expect("keys").expect("some");
        let id = keys.verify(&token, now_secs()).expect("verifies");
        assert_eq!((id.sub.as_str(), id.jti.as_deref()), ("ada", Some("t1")));
        assert!(id.iat.is_some(), "iat is always set");
        let doc = |n: &str| crate::id::DocId::parse(n).expect("valid");
        assert_eq!(id.access(&doc("team-42.x")), Some(crate::auth::Access::Read));
        assert_eq!(id.access(&doc("notes")), Some(crate::auth::Access::Write));
        assert!(parse_grant("x:w").is_err());
    }
}
