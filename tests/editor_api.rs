//! What the browser editor relies on: server-assigned colours, the document list with who
//! is in each document, and the pages and assets with the right types and caching.

mod common;

use common::{TestServer, YClient, http, http_bytes};
use tandem::colour::PALETTE;

async fn colour(server: &TestServer, doc: &str, browser: &str) -> String {
    let body = format!(r#"{{"browser":"{browser}"}}"#);
    let response =
        http(&server.http(&format!("/api/docs/{doc}/identity")), "POST", Some(&body)).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let json: serde_json::Value = serde_json::from_str(&response.text()).expect("json");
    json["color"].as_str().expect("color").to_string()
}

#[tokio::test]
async fn colours_are_distinct_in_a_room_and_stable_per_browser() {
    let server = TestServer::start().await;
    let mut colours = Vec::new();
    let mut clients = Vec::new();
    for i in 0..PALETTE.len() {
        let browser = format!("browser-{i}");
        colours.push(colour(&server, "doc", &browser).await);
        // Connect, as the editor does, so the colour counts as in use.
        let url = format!("{}?browser={browser}", server.url("doc"));
        clients.push(YClient::join_url(&url).await);
    }
    let distinct: std::collections::HashSet<_> = colours.iter().collect();
    assert_eq!(distinct.len(), PALETTE.len(), "{colours:?}");
    // The same browser asking again (a reconnect) keeps its colour.
    assert_eq!(colour(&server, "doc", "browser-3").await, colours[3]);
    // Another document has its own book: there, too, two browsers get distinct colours,
    // and each keeps its own when it asks again.
    let first = colour(&server, "other", "browser-3").await;
    let second = colour(&server, "other", "browser-4").await;
    assert_ne!(first, second);
    assert_eq!(colour(&server, "other", "browser-3").await, first);
    assert_eq!(colour(&server, "other", "browser-4").await, second);
}

#[tokio::test]
async fn a_browser_gets_the_same_colour_after_a_restart() {
    let server = TestServer::start().await;
    let before = colour(&server, "doc", "returning-browser").await;
    let data_dir = server.data_dir.clone();
    let tmp = server.stop().await;
    let server = TestServer::start_in(&data_dir, |_| {}).await;
    assert_eq!(colour(&server, "doc", "returning-browser").await, before);
    server.stop().await;
    drop(tmp);
}

#[tokio::test]
async fn a_flood_of_browser_ids_stays_cheap_and_keeps_colours_distinct() {
    let server = TestServer::start().await;
    let url = format!("{}?browser=keeper", server.url("doc"));
    let keeper_colour = colour(&server, "doc", "keeper").await;
    let _keeper = YClient::join_url(&url).await;
    let started = std::time::Instant::now();
    for i in 0..2000 {
        colour(&server, "doc", &format!("flood-{i}")).await;
    }
    println!("2000 identity requests in {:?}", started.elapsed());
    // The connected browser still holds its colour.
    assert_eq!(colour(&server, "doc", "keeper").await, keeper_colour);
}

#[tokio::test]
async fn identity_rejects_bad_input() {
    let server = TestServer::start().await;
    let url = server.http("/api/docs/doc/identity");
    assert_eq!(http(&url, "POST", Some(r#"{"browser":"no spaces"}"#)).await.status, 400);
    assert_eq!(http(&url, "POST", Some("not json")).await.status, 400);
    let bad_doc = server.http("/api/docs/a%20b/identity");
    assert_eq!(http(&bad_doc, "POST", Some(r#"{"browser":"ok"}"#)).await.status, 400);
    let ws = format!("{}?browser=bad%20id", server.url("doc"));
    assert!(YClient::connect(&ws).await.is_err());
}

#[tokio::test]
async fn document_list_shows_people_present() {
    let server = TestServer::start().await;
    let mut a = YClient::join(&server, "listed").await;
    let _b = YClient::join(&server, "listed").await;
    a.insert(0, "x").await;
    a.pump_until(|c| c.updates_received == 1).await;
    let (status, body) = common::http_get(&server.http("/api/docs")).await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    let doc =
        json["docs"].as_array().expect("docs").iter().find(|d| d["name"] == "listed").cloned();
    let doc = doc.expect("listed doc");
    assert_eq!(doc["peers"], 2);
    assert!(doc["updated_at"].as_i64().expect("time") > 0);
}

#[tokio::test]
async fn pages_and_assets_have_types_and_caching() {
    let web = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(web.path().join("assets")).expect("mkdir");
    std::fs::write(web.path().join("index.html"), "<h1>list</h1>").expect("write");
    std::fs::write(web.path().join("editor.html"), "<h1>editor</h1>").expect("write");
    std::fs::write(web.path().join("sw.js"), "//sw").expect("write");
    std::fs::write(web.path().join("assets/editor-ABC123.js"), "x()").expect("write");
    std::fs::write(web.path().join("assets/editor-ABC123.css"), "p{}").expect("write");
    let dir = web.path().to_path_buf();
    let server = TestServer::start_with(move |c| c.web_dir = Some(dir)).await;

    let home = http(&server.http("/"), "GET", None).await;
    assert_eq!((home.status, home.text().as_str()), (200, "<h1>list</h1>"));
    assert!(home.headers.contains("content-type: text/html"), "{}", home.headers);
    assert!(home.headers.contains("cache-control: no-cache"));

    let editor = http(&server.http("/d/my-doc"), "GET", None).await;
    assert_eq!((editor.status, editor.text().as_str()), (200, "<h1>editor</h1>"));
    assert_eq!(http(&server.http("/d/bad%20name"), "GET", None).await.status, 400);

    let js = http(&server.http("/assets/editor-ABC123.js"), "GET", None).await;
    assert_eq!(js.status, 200);
    assert!(js.headers.contains("content-type: text/javascript"), "{}", js.headers);
    assert!(js.headers.contains("immutable"));
    let css = http(&server.http("/assets/editor-ABC123.css"), "GET", None).await;
    assert!(css.headers.contains("content-type: text/css"), "{}", css.headers);
    let sw = http(&server.http("/sw.js"), "GET", None).await;
    assert!(sw.headers.contains("javascript") && sw.headers.contains("no-cache"));
    assert_eq!(http(&server.http("/assets/missing.js"), "GET", None).await.status, 404);
}

#[tokio::test]
async fn the_built_in_editor_is_served_without_a_web_dir() {
    let server = TestServer::start_with(|c| c.web_dir = None).await;
    let home = http(&server.http("/"), "GET", None).await;
    if home.status == 503 {
        // Built without npm: the page says so, and that is all there is to check.
        assert!(home.text().contains("not built"), "{}", home.text());
        return;
    }
    assert_eq!(home.status, 200);
    assert!(home.headers.contains("cache-control: no-cache"));
    let editor = http(&server.http("/d/notes"), "GET", None).await;
    let html = editor.text();
    let asset = html
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .expect("the editor page names its bundle");
    let js = http(&server.http(asset), "GET", None).await;
    assert_eq!(js.status, 200, "{asset}");
    assert!(js.headers.contains("immutable"), "{}", js.headers);
    assert!(js.headers.contains("content-type: text/javascript"), "{}", js.headers);
    assert!(js.body.len() > 10_000, "a real bundle");
    let sw = http(&server.http("/sw.js"), "GET", None).await;
    assert_eq!(sw.status, 200);
    assert!(sw.headers.contains("no-cache"));
}

/// `POST /api/docs/{doc}/update`: the write path for everything that is not a peer. The
/// reply comes after the commit, connected peers see the update, and bad bodies are 400s
/// that store nothing.
#[tokio::test]
async fn updates_posted_over_http_reach_peers_after_commit() {
    let server = TestServer::start().await;
    let mut peer = YClient::join(&server, "api").await;
    let author = YClient::join(&server, "scratch").await;
    let update = author.insert_offline(0, "from the backend");
    let url = server.http("/api/docs/api/update");
    let response = http_bytes(&url, "POST", "application/octet-stream", &update).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let json: serde_json::Value = serde_json::from_str(&response.text()).expect("json");
    assert!(json["state_vector"].as_str().is_some_and(|s| !s.is_empty()), "{json}");
    // Already committed when the reply came.
    let rows: i64 = sqlx::query_scalar("select count(*) from updates where doc = 'api'")
        .fetch_one(&mut common::db(&server.data_dir).await)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    peer.wait_text("from the backend").await;

    for (body, kind) in [
        (&b""[..], "application/octet-stream"),
        (&[3, 200, 7, 7, 7][..], "application/octet-stream"),
        (&update[..], "text/plain"),
    ] {
        let response = http_bytes(&url, "POST", kind, body).await;
        assert_eq!(response.status, 400, "{kind} {body:?}");
        let json: serde_json::Value = serde_json::from_str(&response.text()).expect("json error");
        assert!(json["error"].as_str().is_some(), "{json}");
    }
    let bad_name = http_bytes(
        &server.http("/api/docs/a%20b/update"),
        "POST",
        "application/octet-stream",
        &update,
    )
    .await;
    assert_eq!(bad_name.status, 400);
    // The peer was never kicked and nothing more was stored.
    peer.insert(0, ">").await;
    peer.pump_until(|c| c.updates_received == 2).await;
    let rows: i64 = sqlx::query_scalar("select count(*) from updates where doc = 'api'")
        .fetch_one(&mut common::db(&server.data_dir).await)
        .await
        .expect("count");
    assert_eq!(rows, 2);
}
