//! The documents API (issue #10) over real HTTP and WebSockets: content written over REST
//! reaches connected peers and is stored before the answer; content read back matches what
//! was written; deletion closes peers with 4404; paging lists every document once.

mod common;

use std::collections::HashSet;

use common::{TestServer, YClient, http, http_auth, http_bytes, http_get};
use serde_json::Value;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Transact, Update};

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn rows_of(server: &TestServer, doc: &str) -> i64 {
    sqlx::query_scalar("select count(*) from updates where doc = ?")
        .bind(doc)
        .fetch_one(&mut common::db(&server.data_dir).await)
        .await
        .expect("count")
}

fn fragment_text(client: &YClient) -> String {
    let fragment = client.doc.get_or_insert_xml_fragment("default");
    fragment.get_string(&client.doc.transact())
}

#[tokio::test]
async fn markdown_put_reaches_a_connected_peer_and_is_stored_before_the_answer() {
    let server = TestServer::start().await;
    let mut peer = YClient::join(&server, "notes").await;
    let url = server.http("/api/docs/notes/content?format=markdown");
    let markdown = "# Plan\n\nShip **it** on *Friday*.\n\n- one\n- two\n";
    let response = http_bytes(&url, "PUT", "text/markdown", markdown.as_bytes()).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(json(&response.text())["state_vector"].is_string());
    // Committed when the answer came.
    assert_eq!(rows_of(&server, "notes").await, 1);
    peer.pump_until(|c| fragment_text(c).contains("Friday")).await;
    assert!(
        fragment_text(&peer).starts_with("<heading level=\"1\">Plan</heading>"),
        "{}",
        fragment_text(&peer)
    );

    let (status, body) = http_get(&url).await;
    assert_eq!((status, body.as_str()), (200, markdown));
    let html = http(&server.http("/api/docs/notes/content?format=html"), "GET", None).await;
    assert!(html.headers.contains("text/html"), "{}", html.headers);
    assert!(html.text().contains("<strong>it</strong>"), "{}", html.text());
    let (_, text) = http_get(&server.http("/api/docs/notes/content?format=text")).await;
    assert_eq!(text, "Plan\nShip it on Friday.\none\ntwo\n");
    let (_, pm) = http_get(&server.http("/api/docs/notes/content?format=json")).await;
    assert_eq!(json(&pm)["content"][0]["attrs"]["level"], 1);

    // Append: a second forward change; the peer sees it too.
    let append = server.http("/api/docs/notes/content?mode=append");
    let response = http_bytes(&append, "POST", "text/markdown", b"Added *later*.").await;
    assert_eq!(response.status, 200, "{}", response.text());
    peer.pump_until(|c| fragment_text(c).contains("later")).await;
    let (_, body) = http_get(&url).await;
    assert!(body.ends_with("- two\n\nAdded *later*.\n"), "{body}");

    // An edit from the peer and a PUT that replaces: the peer converges on the PUT.
    let response = http_bytes(&url, "PUT", "text/markdown", b"Replaced.").await;
    assert_eq!(response.status, 200);
    peer.pump_until(|c| fragment_text(c) == "<paragraph>Replaced.</paragraph>").await;
}

#[tokio::test]
async fn other_kinds_of_field_and_refusals() {
    let server = TestServer::start().await;
    let content = |q: &str| server.http(&format!("/api/docs/kinds/content?{q}"));
    assert_eq!(
        http_bytes(&content("field=notes"), "PUT", "text/plain", b"plain words").await.status,
        200
    );
    assert_eq!(
        http_bytes(&content("field=meta"), "PUT", "application/json", br#"{"title":"T","n":2}"#)
            .await
            .status,
        200
    );
    assert_eq!(http_get(&content("field=notes")).await, (200, "plain words".to_string()));
    assert_eq!(json(&http_get(&content("field=meta")).await.1), json(r#"{"title":"T","n":2}"#));
    let (status, meta) = http_get(&server.http("/api/docs/kinds")).await;
    assert_eq!(status, 200, "{meta}");
    let meta = json(&meta);
    assert_eq!(meta["types"], json(r#"{"meta":"map","notes":"text"}"#));
    assert_eq!(meta["log_rows"], 2);
    assert!(meta["stored_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(meta["created_at"].as_i64().is_some_and(|t| t > 1_700_000_000_000));

    let before = rows_of(&server, "kinds").await;
    for (query, kind, body, status) in [
        ("field=meta&format=markdown", "text/markdown", &b"# no"[..], 400), // kind mismatch
        ("format=json", "application/json", b"{not json", 400),
        ("format=json", "application/json", b"42", 400),
        ("", "application/octet-stream", b"x", 400), // no format, no usable content type
        ("format=yaml", "text/plain", b"x", 400),
        ("format=text", "text/plain", &[0xff, 0xfe][..], 400), // not UTF-8
    ] {
        let response = http_bytes(&content(query), "PUT", kind, body).await;
        assert_eq!(response.status, status, "{query}: {}", response.text());
        assert!(json(&response.text())["error"].is_string());
    }
    assert_eq!(rows_of(&server, "kinds").await, before, "refused writes store nothing");
    assert_eq!(http_get(&content("field=missing")).await.0, 404);
    assert_eq!(http_get(&content("field=meta&format=html")).await.0, 400);
    assert_eq!(http_get(&server.http("/api/docs/never-written")).await.0, 404);
    assert_eq!(http_get(&server.http("/api/docs/never-written/content")).await.0, 404);
    assert_eq!(http_get(&server.http("/api/docs/never-written/update")).await.0, 404);
}

#[tokio::test]
async fn update_by_state_vector_is_exactly_what_a_client_lacks() {
    let server = TestServer::start().await;
    let mut writer = YClient::join(&server, "sv").await;
    writer.insert(0, "hello").await;
    writer.pump_until(|c| c.updates_received == 1).await;
    // A replica that has "hello" asks for the diff after more typing.
    let replica = yrs::Doc::new();
    let full = common::http(&server.http("/api/docs/sv/update"), "GET", None).await;
    assert!(full.headers.contains("application/octet-stream"), "{}", full.headers);
    replica
        .transact_mut()
        .apply_update(Update::decode_v1(&full.body).expect("an update"))
        .expect("applies");
    writer.insert(5, " world").await;
    writer.pump_until(|c| c.updates_received == 2).await;
    let sv = replica.transact().state_vector().encode_v1();
    for encoded in [
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &sv),
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &sv),
    ] {
        let query: String = encoded.bytes().map(|b| format!("%{b:02X}")).collect();
        let diff =
            http(&server.http(&format!("/api/docs/sv/update?sv={query}")), "GET", None).await;
        assert_eq!(diff.status, 200);
        assert!(diff.body.len() < full.body.len() + 8, "a diff, not everything");
        let copy = yrs::Doc::new();
        copy.transact_mut().apply_update(Update::decode_v1(&full.body).expect("u")).expect("a");
        copy.transact_mut().apply_update(Update::decode_v1(&diff.body).expect("u")).expect("a");
        let text = copy.get_or_insert_text("t");
        assert_eq!(text.get_string(&copy.transact()), "hello world");
    }
    assert_eq!(http_get(&server.http("/api/docs/sv/update?sv=!!")).await.0, 400);
}

#[tokio::test]
async fn delete_closes_peers_with_4404_and_the_name_starts_afresh() {
    let server = TestServer::start().await;
    let mut peer = YClient::join(&server, "gone").await;
    peer.insert(0, "secret plans").await;
    peer.pump_until(|c| c.updates_received == 1).await;
    let delete = http(&server.http("/api/docs/gone"), "DELETE", None).await;
    assert_eq!(delete.status, 204, "{}", delete.text());
    assert_eq!(peer.expect_close().await, (4404, "document deleted".to_string()));
    assert_eq!(rows_of(&server, "gone").await, 0);
    assert_eq!(http_get(&server.http("/api/docs/gone")).await.0, 404);
    assert_eq!(http(&server.http("/api/docs/gone"), "DELETE", None).await.status, 404);
    // Connecting again right away gives a new, empty document.
    let fresh = YClient::join(&server, "gone").await;
    assert_eq!(fresh.text(), "");
    let (_, list) = http_get(&server.http("/api/docs")).await;
    assert!(!list.contains("\"gone\""), "{list}");
}

/// The sequence schemathesis reported as ST301 "Deleted resource still available" (list,
/// DELETE, a write to the document's content, a read): the write re-creates the name
/// afresh, so the read's 200 is right; without the write every read is a 404.
#[tokio::test]
async fn a_deleted_document_stays_gone_until_a_write_starts_it_afresh() {
    let server = TestServer::start().await;
    let content = server.http("/api/docs/0/content");
    assert_eq!(http_bytes(&content, "PUT", "text/plain", b"old words").await.status, 200);
    let (_, list) = http_get(&server.http("/api/docs?limit=1")).await;
    assert_eq!(json(&list)["docs"][0]["name"], "0", "{list}");
    assert_eq!(http(&server.http("/api/docs/0"), "DELETE", None).await.status, 204);
    for read in ["/api/docs/0", "/api/docs/0/content", "/api/docs/0/update"] {
        assert_eq!(http_get(&server.http(read)).await.0, 404, "{read} after DELETE");
    }
    assert_eq!(http_bytes(&content, "PUT", "text/plain", b"new").await.status, 200);
    let (status, meta) = http_get(&server.http("/api/docs/0")).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(json(&meta)["log_rows"], 1, "a fresh document, not the deleted one: {meta}");
    assert_eq!(http_get(&content).await.1.trim_end(), "new");
}

#[tokio::test]
async fn paging_lists_every_document_exactly_once() {
    let server = TestServer::start().await;
    let author = YClient::join(&server, "scratch").await;
    let update = author.insert_offline(0, "x");
    let mut names: Vec<String> = (0..57).map(|i| format!("page-{i:03}")).collect();
    names.extend((0..5).map(|i| format!("other-{i}")));
    for name in &names {
        let url = server.http(&format!("/api/docs/{name}/update"));
        assert_eq!(http_bytes(&url, "POST", "application/octet-stream", &update).await.status, 200);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, body) =
            http_get(&server.http(&format!("/api/docs?limit=10&prefix=page-&cursor={cursor}")))
                .await;
        assert_eq!(status, 200, "{body}");
        let page = json(&body);
        for doc in page["docs"].as_array().expect("docs") {
            assert_eq!(doc["size"].as_i64(), Some(update.len() as i64), "{doc}");
            assert!(doc["created_at"].as_i64().is_some() && doc["updated_at"].as_i64().is_some());
            seen.push(doc["name"].as_str().expect("name").to_string());
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 6);
    let expected: Vec<String> = names.iter().filter(|n| n.starts_with("page-")).cloned().collect();
    assert_eq!(seen, expected, "every page- document once, in name order");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    for bad in ["limit=0", "limit=5000", "cursor=a%20b", "prefix=a%20b"] {
        assert_eq!(http_get(&server.http(&format!("/api/docs?{bad}"))).await.0, 400, "{bad}");
    }
}

#[tokio::test]
async fn the_api_honours_grants() {
    let secret = "api-secret";
    let server = TestServer::start_with(|c| c.auth_secret = Some(secret.into())).await;
    let admin = common::mint(secret, serde_json::json!({"sub": "root", "admin": true}));
    let reader =
        common::mint(secret, serde_json::json!({"sub": "r", "docs": [{"p": "shared", "a": "r"}]}));
    let writer =
        common::mint(secret, serde_json::json!({"sub": "w", "docs": [{"p": "shared", "a": "rw"}]}));
    let url = server.http("/api/docs/shared/content?format=text");
    let put = |token: Option<String>| {
        let url = url.clone();
        async move { http_auth(&url, "PUT", token.as_deref(), "text/plain", b"hi").await.status }
    };
    assert_eq!(put(None).await, 401);
    assert_eq!(put(Some(reader.clone())).await, 403);
    assert_eq!(put(Some(writer.clone())).await, 200);
    let read = http_auth(&url, "GET", Some(&reader), "text/plain", b"").await;
    assert_eq!((read.status, read.text().as_str()), (200, "hi\n"));
    let other = server.http("/api/docs/other/content");
    assert_eq!(http_auth(&other, "GET", Some(&reader), "text/plain", b"").await.status, 403);
    let delete = server.http("/api/docs/shared");
    assert_eq!(http_auth(&delete, "DELETE", Some(&writer), "text/plain", b"").await.status, 403);
    assert_eq!(http_auth(&delete, "DELETE", Some(&admin), "text/plain", b"").await.status, 204);
    let hooks = server.http("/api/admin/webhooks");
    assert_eq!(http_auth(&hooks, "GET", Some(&reader), "text/plain", b"").await.status, 403);
    assert_eq!(http_auth(&hooks, "GET", Some(&admin), "text/plain", b"").await.status, 200);
}

#[tokio::test]
async fn the_openapi_description_covers_every_endpoint() {
    let server = TestServer::start().await;
    let (status, body) = http_get(&server.http("/api/openapi.json")).await;
    assert_eq!(status, 200);
    let spec = json(&body);
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/api/docs", &["get"][..]),
        ("/api/docs/{doc}", &["get", "delete"]),
        ("/api/docs/{doc}/update", &["get", "post"]),
        ("/api/docs/{doc}/content", &["get", "put", "post"]),
        ("/api/docs/{doc}/identity", &["post"]),
        ("/api/admin/revoke", &["post"]),
        ("/api/admin/webhooks", &["get"]),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path} missing");
        }
    }
}

#[tokio::test]
async fn browsers_cannot_write_from_another_site() {
    let server =
        TestServer::start_with(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let url = server.http("/api/docs/csrf/content?format=text");
    let from = |site: &'static str, origin: &'static str| {
        let url = url.clone();
        async move {
            let headers =
                [("Content-Type", "text/plain"), ("Sec-Fetch-Site", site), ("Origin", origin)];
            common::http_with(&url, "POST", &headers, b"spam").await.status
        }
    };
    assert_eq!(from("cross-site", "https://evil.example").await, 403);
    assert_eq!(from("same-site", "https://evil.app.example").await, 403);
    assert_eq!(rows_of(&server, "csrf").await, 0, "nothing stored");
    let delete = [("Sec-Fetch-Site", "cross-site"), ("Origin", "https://evil.example")];
    assert_eq!(
        common::http_with(&server.http("/api/docs/csrf"), "DELETE", &delete, b"").await.status,
        403
    );
    // The listed origin, the server's own pages, and clients that are not browsers may.
    assert_eq!(from("cross-site", "https://app.example").await, 200);
    assert_eq!(from("same-origin", "http://whatever").await, 200);
    assert_eq!(http_bytes(&url, "POST", "text/plain", b"curl").await.status, 200);
    // Reads are not writes.
    let read = [("Sec-Fetch-Site", "cross-site"), ("Origin", "https://evil.example")];
    assert_eq!(common::http_with(&url, "GET", &read, b"").await.status, 200);
}
