//! What the browser editor relies on: server-assigned colours, the document list with who
//! is in each document, and the pages and assets with the right types and caching.

mod common;

use common::{TestServer, YClient, http};
use tandem::colour::PALETTE;

async fn colour(server: &TestServer, doc: &str, browser: &str) -> String {
    let body = format!(r#"{{"browser":"{browser}"}}"#);
    let response =
        http(&server.http(&format!("/api/docs/{doc}/identity")), "POST", Some(&body)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let json: serde_json::Value = serde_json::from_str(&response.body).expect("json");
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
    // Another document has its own book.
    assert!(PALETTE.contains(&colour(&server, "other", "browser-3").await.as_str()));
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
    assert_eq!((home.status, home.body.as_str()), (200, "<h1>list</h1>"));
    assert!(home.headers.contains("content-type: text/html"), "{}", home.headers);
    assert!(home.headers.contains("cache-control: no-cache"));

    let editor = http(&server.http("/d/my-doc"), "GET", None).await;
    assert_eq!((editor.status, editor.body.as_str()), (200, "<h1>editor</h1>"));
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
