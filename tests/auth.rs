//! Access control over real sockets: every refusal code, read-only peers, expiry,
//! revocation (and the deny list after a restart), patterns, both transports, HS256 and
//! EdDSA keys, and the HTTP side.

mod common;

use std::time::Duration;

use common::{TestServer, YClient, count_log_rows, http_auth, mint, now_secs};
use serde_json::json;
use tokio::time::Instant;

const SECRET: &str = "correct horse battery staple";

async fn server() -> TestServer {
    TestServer::start_with(|c| c.auth_secret = Some(SECRET.into())).await
}

fn token(grants: serde_json::Value) -> String {
    mint(SECRET, json!({"sub": "ada", "docs": grants}))
}

fn url(server: &TestServer, doc: &str, token: &str) -> String {
    format!("{}?token={token}", server.url(doc))
}

async fn refused(url: &str) -> (u16, String) {
    let mut client = YClient::connect(url).await.expect("the upgrade completes");
    client.expect_close().await
}

#[tokio::test]
async fn websocket_refusals_say_why_with_4401_and_4403() {
    let server = server().await;
    let now = now_secs();
    let (code, reason) = refused(&server.url("notes")).await;
    assert_eq!((code, reason.as_str()), (4401, "no token"));

    let other = mint("another secret", json!({"sub": "ada", "docs": [{"p": "*", "a": "rw"}]}));
    assert_eq!(refused(&url(&server, "notes", &other)).await, (4401, "bad signature".into()));

    let expired =
        mint(SECRET, json!({"sub": "a", "exp": now - 60, "docs": [{"p": "*", "a": "rw"}]}));
    assert_eq!(refused(&url(&server, "notes", &expired)).await, (4401, "token expired".into()));

    let early =
        mint(SECRET, json!({"sub": "a", "nbf": now + 600, "docs": [{"p": "*", "a": "rw"}]}));
    assert_eq!(refused(&url(&server, "notes", &early)).await, (4401, "token not yet valid".into()));

    let (code, reason) = refused(&url(&server, "notes", "not.a.token")).await;
    assert_eq!(code, 4401);
    assert!(reason.starts_with("malformed token"), "{reason}");

    let no_grant = token(json!([{"p": "other", "a": "rw"}]));
    let (code, reason) = refused(&url(&server, "notes", &no_grant)).await;
    assert_eq!(code, 4403, "{reason}");

    // None of it touched the document, and a good token still works.
    let good = token(json!([{"p": "notes", "a": "rw"}]));
    let mut client = YClient::join_url(&url(&server, "notes", &good)).await;
    client.insert(0, "ok").await;
    assert_eq!(client.text(), "ok");
    server.stop().await;
}

#[tokio::test]
async fn a_token_in_the_subprotocol_selects_tandem() {
    let server = server().await;
    let good = token(json!([{"p": "notes", "a": "rw"}]));
    let protocols = format!("tandem, tandem.jwt.{good}");
    let (mut client, selected) =
        YClient::connect_with_protocols(&server.url("notes"), &protocols).await.expect("connect");
    assert_eq!(selected.as_deref(), Some("tandem"));
    client.handshake().await;
    client.insert(0, "via subprotocol").await;

    let no_grant = token(json!([{"p": "x", "a": "rw"}]));
    let (mut refused, _) = YClient::connect_with_protocols(
        &server.url("notes"),
        &format!("tandem, tandem.jwt.{no_grant}"),
    )
    .await
    .expect("connect");
    assert_eq!(refused.expect_close().await.0, 4403);
    server.stop().await;
}

#[tokio::test]
async fn prefix_patterns_and_the_strongest_grant() {
    let server = server().await;
    let t = token(json!([{"p": "team-42.*", "a": "r"}, {"p": "team-42.plan", "a": "rw"}]));
    let mut plan = YClient::join_url(&url(&server, "team-42.plan", &t)).await;
    plan.insert(0, "written").await; // rw wins over the prefix's r
    let mut notes = YClient::join_url(&url(&server, "team-42.notes", &t)).await;
    notes.insert(0, "refused").await;
    notes.pump_until(|c| !c.denied.is_empty()).await;
    assert_eq!(refused(&url(&server, "team-43.plan", &t)).await.0, 4403);
    server.stop().await;
}

#[tokio::test]
async fn a_read_only_peer_sees_everything_and_changes_nothing() {
    let server = server().await;
    let writer_token = mint(SECRET, json!({"sub": "w", "docs": [{"p": "doc", "a": "rw"}]}));
    let reader_token = mint(SECRET, json!({"sub": "r", "docs": [{"p": "doc", "a": "r"}]}));
    let mut writer = YClient::join_url(&url(&server, "doc", &writer_token)).await;
    writer.insert(0, "hello").await;
    writer.pump_until(|c| c.updates_received == 1).await; // the echo: committed
    let mut reader = YClient::join_url(&url(&server, "doc", &reader_token)).await;
    assert_eq!(reader.text(), "hello", "the reader got the document");
    writer.insert(5, " world").await;
    reader.wait_text("hello world").await;
    let rows = count_log_rows(&server.data_dir).await;

    // Two writes: the first is answered with permission denied, the second silently.
    reader.insert(0, ">>").await;
    reader.insert(0, "!!").await;
    reader.pump_until(|c| !c.denied.is_empty()).await;
    assert_eq!(reader.denied, vec!["read-only".to_string()]);
    // Presence from the reader does reach the writer.
    reader.set_awareness(777, 1, r#"{"user":{"name":"reader"}}"#).await;
    writer.pump_until(|c| c.awareness.contains_key(&777)).await;
    writer.pump_for(Duration::from_millis(200)).await;
    assert_eq!(writer.text(), "hello world", "the reader's write reached nobody");
    assert_eq!(count_log_rows(&server.data_dir).await, rows, "and no row");
    assert!(reader.closed.is_none(), "the read-only peer stays connected");
    // A newcomer sees the document without the refused edit.
    let late = YClient::join_url(&url(&server, "doc", &writer_token)).await;
    assert_eq!(late.text(), "hello world");
    server.stop().await;
}

#[tokio::test]
async fn an_expiring_token_ends_the_session() {
    let server = server().await;
    let t =
        mint(SECRET, json!({"sub": "a", "exp": now_secs() + 2, "docs": [{"p": "*", "a": "rw"}]}));
    let mut client = YClient::join_url(&url(&server, "doc", &t)).await;
    let started = Instant::now();
    let (code, reason) = client.expect_close().await;
    assert_eq!((code, reason.as_str()), (4401, "token expired"));
    assert!(started.elapsed() < Duration::from_secs(8), "closed {:?} after", started.elapsed());
    server.stop().await;
}

async fn revoke(server: &TestServer, body: serde_json::Value) -> u16 {
    let admin = mint(SECRET, json!({"sub": "root", "admin": true}));
    let response = http_auth(
        &server.http("/api/admin/revoke"),
        "POST",
        Some(&admin),
        "application/json",
        body.to_string().as_bytes(),
    )
    .await;
    response.status
}

#[tokio::test]
async fn revocation_by_jti_closes_live_connections_and_survives_a_restart() {
    let server = server().await;
    let data_dir = server.data_dir.clone();
    let t = mint(SECRET, json!({"sub": "ada", "jti": "t-1", "docs": [{"p": "*", "a": "rw"}]}));
    let other = mint(SECRET, json!({"sub": "ada", "jti": "t-2", "docs": [{"p": "*", "a": "rw"}]}));
    let mut a = YClient::join_url(&url(&server, "doc", &t)).await;
    let mut b = YClient::join_url(&url(&server, "doc", &other)).await;
    // Only admins may revoke.
    let plain = http_auth(
        &server.http("/api/admin/revoke"),
        "POST",
        Some(&t),
        "application/json",
        br#"{"jti":"t-2"}"#,
    )
    .await;
    assert_eq!(plain.status, 403);
    let started = Instant::now();
    assert_eq!(revoke(&server, json!({"jti": "t-1"})).await, 200);
    assert_eq!(a.expect_close().await, (4401, "token revoked".into()));
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    b.insert(0, "still here").await;
    b.pump_until(|c| c.updates_received == 1).await;
    assert_eq!(refused(&url(&server, "doc", &t)).await, (4401, "token revoked".into()));
    let tmp = server.stop().await;

    let server = TestServer::start_in(&data_dir, |c| c.auth_secret = Some(SECRET.into())).await;
    assert_eq!(refused(&url(&server, "doc", &t)).await, (4401, "token revoked".into()));
    let c = YClient::join_url(&url(&server, "doc", &other)).await;
    assert_eq!(c.text(), "still here");
    server.stop().await;
    drop(tmp);
}

#[tokio::test]
async fn revocation_by_sub_spares_tokens_minted_afterwards() {
    let server = server().await;
    let before = mint(SECRET, json!({"sub": "mallory", "docs": [{"p": "*", "a": "rw"}]}));
    let mut live = YClient::join_url(&url(&server, "doc", &before)).await;
    assert_eq!(revoke(&server, json!({"sub": "mallory"})).await, 200);
    assert_eq!(live.expect_close().await, (4401, "token revoked".into()));
    assert_eq!(refused(&url(&server, "doc", &before)).await.0, 4401);
    // iat has one-second resolution: a token minted in a later second is admitted again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = mint(SECRET, json!({"sub": "mallory", "docs": [{"p": "*", "a": "rw"}]}));
    let mut again = YClient::join_url(&url(&server, "doc", &after)).await;
    again.insert(0, "back").await;
    assert_eq!(revoke(&server, json!({"sub": "x", "jti": "y"})).await, 400);
    server.stop().await;
}

#[tokio::test]
async fn eddsa_and_es256_keys_are_chosen_by_kid() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let server = TestServer::start_with(|c| {
        c.auth_public_key =
            vec![fixtures.join("public/test-ed.pem"), fixtures.join("public/test-p256.pem")];
    })
    .await;
    for (kid, alg) in
        [("test-ed", jsonwebtoken::Algorithm::EdDSA), ("test-p256", jsonwebtoken::Algorithm::ES256)]
    {
        let pem = std::fs::read(fixtures.join(format!("private/{kid}.pem"))).expect("key");
        let key = match alg {
            jsonwebtoken::Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
            _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        }
        .expect("private key");
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.into());
        let claims = json!({"sub": kid, "exp": now_secs() + 60, "docs": [{"p": "doc", "a": "rw"}]});
        let t = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
        let mut client = YClient::join_url(&url(&server, "doc", &t)).await;
        client.insert(0, kid).await;
        // The same token claiming the other key's kid fails its signature check.
        header.kid = Some(if kid == "test-ed" { "test-p256" } else { "test-ed" }.into());
        let wrong = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
        assert_eq!(refused(&url(&server, "doc", &wrong)).await.0, 4401);
        // Without a kid, with two keys configured: refused.
        let bare =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).expect("sign");
        let (code, reason) = refused(&url(&server, "doc", &bare)).await;
        assert_eq!(code, 4401);
        assert!(reason.contains("kid"), "{reason}");
    }
    // An HS256 token is no good here.
    let hs = token(json!([{"p": "doc", "a": "rw"}]));
    assert_eq!(refused(&url(&server, "doc", &hs)).await.0, 4401);
    server.stop().await;
}

#[tokio::test]
async fn http_endpoints_check_the_same_grants() {
    let server = server().await;
    let rw = token(json!([{"p": "mine.*", "a": "rw"}]));
    let ro = token(json!([{"p": "mine.*", "a": "r"}]));
    let update = {
        let doc = yrs::Doc::new();
        let text = yrs::Transact::transact_mut(&doc);
        drop(text);
        use yrs::{Text, Transact};
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.push(&mut txn, "from the api");
        txn.encode_update_v1()
    };
    let post = |doc: &'static str, token: Option<String>| {
        let url = server.http(&format!("/api/docs/{doc}/update"));
        let body = update.clone();
        async move { http_auth(&url, "POST", token.as_deref(), "application/octet-stream", &body).await }
    };
    let none = post("mine.a", None).await;
    assert_eq!(none.status, 401, "{}", none.text());
    assert!(none.text().contains("\"error\""), "{}", none.text());
    assert_eq!(post("mine.a", Some(ro.clone())).await.status, 403);
    assert_eq!(post("theirs", Some(rw.clone())).await.status, 403);
    assert_eq!(post("mine.a", Some(rw.clone())).await.status, 200);
    // Someone else writes a document outside our grants.
    let admin = mint(SECRET, json!({"sub": "root", "admin": true}));
    assert_eq!(post("theirs", Some(admin.clone())).await.status, 200);

    let list = |token: String| {
        let url = server.http("/api/docs");
        async move { http_auth(&url, "GET", Some(&token), "application/json", b"").await.text() }
    };
    let mine = list(ro.clone()).await;
    assert!(mine.contains("mine.a") && !mine.contains("theirs"), "{mine}");
    let all = list(admin).await;
    assert!(all.contains("mine.a") && all.contains("theirs"), "{all}");
    let identity = http_auth(
        &server.http("/api/docs/theirs/identity"),
        "POST",
        Some(&ro),
        "application/json",
        br#"{"browser":"b1"}"#,
    )
    .await;
    assert_eq!(identity.status, 403);
    let bad =
        http_auth(&server.http("/api/docs"), "GET", Some("garbage"), "application/json", b"").await;
    assert_eq!(bad.status, 401);
    server.stop().await;
}

#[tokio::test]
async fn the_same_sub_gets_the_same_colour_on_every_device() {
    let server = server().await;
    let t = mint(SECRET, json!({"sub": "ada", "name": "Ada L.", "docs": [{"p": "*", "a": "rw"}]}));
    let ask = |browser: &'static str| {
        let url = server.http("/api/docs/doc/identity");
        let t = t.clone();
        async move {
            let body = format!(r#"{{"browser":"{browser}"}}"#);
            let r = http_auth(&url, "POST", Some(&t), "application/json", body.as_bytes()).await;
            serde_json::from_str::<serde_json::Value>(&r.text()).expect("json")
        }
    };
    let laptop = ask("laptop").await;
    let phone = ask("phone").await;
    assert_eq!(laptop["color"], phone["color"]);
    assert_eq!(laptop["name"], "Ada L.");
    server.stop().await;
}

/// `tandem token` signs with a private key file (its stem is the kid) and `tandem share`
/// prints a link; both verify against a server holding the matching public key.
#[tokio::test]
async fn the_cli_mints_tokens_the_server_accepts() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let server =
        TestServer::start_with(|c| c.auth_public_key = vec![fixtures.join("public/test-ed.pem")])
            .await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(args)
            .env_remove("TANDEM_AUTH_SECRET")
            .output()
            .expect("run tandem");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
    };
    let key = fixtures.join("private/test-ed.pem");
    let key = key.to_str().expect("path");
    let t = run(&[
        "token",
        "--auth-private-key",
        key,
        "--doc",
        "cli-*:rw",
        "--sub",
        "cli",
        "--ttl",
        "15m",
    ]);
    let mut client = YClient::join_url(&url(&server, "cli-doc", &t)).await;
    client.insert(0, "minted").await;
    client.pump_until(|c| c.updates_received == 1).await;
    let link = run(&[
        "share",
        "cli-doc",
        "--read-only",
        "--auth-private-key",
        key,
        "--base-url",
        "http://x",
    ]);
    let shared = link.strip_prefix("http://x/d/cli-doc#token=").expect("a share link");
    let mut reader = YClient::join_url(&url(&server, "cli-doc", shared)).await;
    assert_eq!(reader.text(), "minted");
    reader.insert(0, "no").await;
    reader.pump_until(|c| !c.denied.is_empty()).await;
    // Without a key, minting fails with a message instead of an unsigned token.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["token", "--doc", "x", "--sub", "y"])
        .env_remove("TANDEM_AUTH_SECRET")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key"));
    server.stop().await;
}
