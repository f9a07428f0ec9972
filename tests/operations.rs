//! What an operator runs into: one process per data directory, a database that cannot be
//! written, storage that fails under a running server, and the environment of whoever
//! embeds the server.

mod common;

use common::{TestServer, YClient, http_get, spawn_binary};

/// Two processes on one data directory used to hand out the same seqs and lose echoed
/// updates; the second one now refuses to start and says why.
#[tokio::test]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_first, addr) = spawn_binary(tmp.path(), &[]).await.expect("first starts");
    let output = spawn_binary(tmp.path(), &[]).await.expect_err("the second must not start");
    assert!(output.contains("another tandem process"), "{output}");
    assert!(output.contains("(pid "), "names the process holding the lock: {output}");
    // The first one is unaffected.
    let mut client = YClient::join_url(&format!("ws://{addr}/ws/doc")).await;
    client.insert(0, "still fine").await;
    client.pump_until(|c| c.updates_received == 1).await;
}

#[tokio::test]
async fn a_read_only_database_fails_at_startup_not_at_the_first_edit() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let server = TestServer::start_in(tmp.path(), |_| {}).await;
    server.stop().await;
    let db = tmp.path().join("tandem.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let output = spawn_binary(tmp.path(), &[]).await.expect_err("must not start");
    assert!(output.contains("read-only"), "{output}");
}

/// Deleting the WAL under a running server means the next crash loses everything since the
/// last checkpoint: health says so instead of answering 200.
#[tokio::test]
async fn a_deleted_wal_makes_the_server_unhealthy() {
    let server = TestServer::start().await;
    let mut client = YClient::join(&server, "doc").await;
    client.insert(0, "x").await;
    client.pump_until(|c| c.updates_received == 1).await;
    assert_eq!(http_get(&server.http("/healthz")).await.0, 200);
    std::fs::remove_file(server.data_dir.join("tandem.db-wal")).expect("delete the WAL");
    let (status, body) = http_get(&server.http("/healthz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("deleted"), "{body}");
}

/// Storage failing under a running server: every failed commit closes the room's peers
/// with 1011 and health turns 503 with the database's own reason, until commits succeed.
#[tokio::test]
async fn failing_commits_make_health_503_with_the_cause() {
    let server = TestServer::start().await;
    let mut client = YClient::join(&server, "doc").await;
    client.insert(0, "x").await;
    client.pump_until(|c| c.updates_received == 1).await;
    // A trigger that fails every insert: a real SQLite error on the commit path, at once
    // (holding the write lock from outside would take the 10 s busy timeout).
    let mut conn = common::db_rw(&server.data_dir).await;
    sqlx::query(
        "create trigger refuse before insert on updates begin select raise(fail, 'disk says no'); end",
    )
    .execute(&mut conn)
    .await
    .expect("trigger");
    client.insert(0, "y").await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1011, "{reason}");
    let (status, body) = http_get(&server.http("/healthz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("disk says no"), "the cause is reported: {body}");
    sqlx::query("drop trigger refuse").execute(&mut conn).await.expect("drop trigger");
    let mut again = YClient::join(&server, "doc").await;
    again.insert(0, "z").await;
    again.pump_until(|c| c.updates_received == 1).await;
    assert_eq!(http_get(&server.http("/healthz")).await.0, 200, "healthy once commits succeed");
}
