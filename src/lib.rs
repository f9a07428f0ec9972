//! Tandem: a real-time collaborative document server for Yjs clients.
//!
//! Layout (see ARCHITECTURE.md for the map and the invariants):
//! - `config`: flags and `TANDEM_*` variables
//! - `telemetry`: log setup
//! - `error`: what can go wrong, mapped once to HTTP statuses and close codes
//! - `http`: routes and handlers; `web`: the editor's files (built into the binary)
//! - `ws`: one connection: handshake, validation, ping/pong, backpressure
//! - `protocol`: y-websocket framing, bytes in and out, no IO
//! - `room`: the task that owns one document (`room::core`: its logic, no IO);
//!   `rooms`: the registry of rooms
//! - `awareness`: presence bookkeeping (who announced which cursor, ghost removal)
//! - `auth`: tokens, grants, the deny list, minting; `limit`: token buckets
//! - `colour`: cursor colours per room
//! - `store`: storage API; `store::sqlite` (embedded) and `store::postgres` (shared by
//!   several nodes): the only SQL
//! - `cluster`: several nodes on one PostgreSQL (the feed, presence across nodes)
//! - `id`: validated identifiers
//!
//! The public API is what the binaries and the tests need: `serve`, `Config`, `protocol`
//! (to speak to a server), `colour::PALETTE`, and the error types `protocol` returns.

mod api;
pub mod auth;
mod awareness;
mod cluster;
pub mod colour;
pub mod config;
mod content;
mod error;
#[cfg(fuzzing)]
pub mod fuzzing;
mod http;
mod id;
mod limit;
mod outbox;
pub mod protocol;
mod room;
mod rooms;
mod store;
pub mod telemetry;
mod web;
mod webhook;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use error::Error;
pub use store::StoreError;

/// How long shutdown waits for connections and rooms before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Serves until `shutdown` resolves, then stops accepting, closes every socket with 1001,
/// lets every room commit what it has queued, and returns.
///
/// Once the store is open (the data directory locked, migrations applied) it prints
/// `listening addr=HOST:PORT` on stdout, a line for scripts and test harnesses to wait for.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = Arc::new(config);
    let outbox = webhook::outbox(&config)?;
    let node = config.node_name();
    let (store, writer) = open_store(&config, &node, outbox.clone()).await?;
    let writer = tokio::spawn(writer);
    let keys = auth::Keys::from_config(config.auth_secret.as_deref(), &config.auth_public_key)
        .context("loading the auth keys")?;
    if keys.is_none() {
        tracing::warn!(
            "auth disabled: anyone who can reach this port can read and write every document"
        );
    }
    let revocations =
        auth::Revocations::new(store.revocations().await.context("reading the deny list")?);
    let auth = auth::Auth::new(keys, revocations);
    raise_open_files_limit();
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    let rooms = rooms::Rooms::new(room::RoomDeps {
        store: store.clone(),
        config: config.clone(),
        tracker: tracker.clone(),
        shutdown: token.clone(),
    });
    let web = web::Web::from_flag(config.web_dir.as_deref());
    if web.enabled() && !web.built() {
        tracing::warn!(
            "the browser editor is not built into this binary; / explains how to build it"
        );
    }
    let webhooks = Arc::new(webhook::Counters::default());
    if let Some(outbox) = &outbox {
        tracing::info!(receivers = outbox.urls.len(), node, "webhooks on");
        let worker = webhook::Worker::new(store.clone(), &config, node.clone(), webhooks.clone());
        tracker.spawn(worker.run(token.clone()));
    }
    // With a shared store: the loop that hears the other nodes. It holds clones of the
    // store and the rooms only until shutdown, so the writer can finish after it.
    let cluster = store.take_feed().map(|feed| {
        let (store, rooms, auth) = (store.clone(), rooms.clone(), auth.clone());
        (feed, cluster::Cluster { store, rooms, auth, poll: config.cluster_poll() })
    });
    let state = http::AppState {
        config: config.clone(),
        store,
        node: node.clone(),
        webhooks,
        web: Arc::new(web),
        conn: ws::ConnDeps {
            rooms: rooms.clone(),
            config: config.clone(),
            auth: auth.clone(),
            slots: ws::Slots::default(),
            tracker: tracker.clone(),
            shutdown: token.clone(),
        },
        auth,
        rooms,
    };
    if let Some((feed, cluster)) = cluster {
        tracing::info!(node, "sharing documents with other nodes through PostgreSQL");
        tracker.spawn(cluster.run(feed, token.clone()));
    }
    let addr = listener.local_addr()?;
    println!("listening addr={addr}");
    match config.database_url() {
        Some(_) => tracing::info!(%addr, node, "serving (PostgreSQL)"),
        None => tracing::info!(%addr, node, data_dir = %config.data_dir.display(), "serving"),
    }
    let app = http::router(state);
    accept_loop(listener, app, &config, shutdown, token.clone()).await;
    token.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("some connections or rooms did not finish in time");
    }
    // Every room and handler is gone, so the store's last sender is dropped and the writer
    // finishes the jobs it has, then releases the data directory.
    if tokio::time::timeout(SHUTDOWN_GRACE, writer).await.is_err() {
        tracing::warn!("store writer did not finish in time");
    }
    tracing::info!("stopped");
    Ok(())
}

type StoreTasks = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// PostgreSQL when `--database-url` is given (shared with other nodes), else SQLite in
/// `--data-dir`.
async fn open_store(
    config: &Config,
    node: &str,
    outbox: Option<store::WebhookOutbox>,
) -> anyhow::Result<(store::Store, StoreTasks)> {
    use anyhow::Context;
    let Some(url) = config.database_url() else {
        let (store, writer) =
            store::open_sqlite(&config.data_dir, config.sync, config.commit_linger(), outbox)
                .await
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        return Ok((store, Box::pin(writer)));
    };
    if outbox.is_some() {
        anyhow::bail!(
            "--webhook-url needs the SQLite store for now: webhooks are not available with --database-url"
        );
    }
    // Unique per process even when two nodes are given the same --node-id.
    let instance = format!("{node}/{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (store, tasks) = store::open_postgres(url, &instance, config.database_timeout())
        .await
        .context("opening the PostgreSQL store (--database-url)")?;
    Ok((store, Box::pin(tasks)))
}

/// Accepts connections until `shutdown`, then lets open HTTP requests finish (upgraded
/// WebSockets are tracked apart, in `tracker`). Hand-rolled rather than `axum::serve` for
/// a header-read timeout (hyper needs a timer for it) and the peer's address.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    token: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let http = TaskTracker::new();
    let header_timeout = config.header_timeout();
    tokio::pin!(shutdown);
    let mut last_accept_error: Option<tokio::time::Instant> = None;
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, typically: say so once a second, not per attempt,
                    // and give the connections that hold them a moment to go.
                    if last_accept_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::error!(error = %e, "accept failed");
                        last_accept_error = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Nagle's algorithm would hold back small frames (a keystroke is ~30 bytes) until
        // the previous ones are acknowledged: measured as ~9 ms of median latency.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = app.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo(remote));
                request
            },
        );
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(
                TokioIo::new(tcp),
                hyper_util::service::TowerToHyperService::new(service),
            )
            .with_upgrades();
        let stop = token.clone();
        http.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %remote, "http connection ended");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down");
    token.cancel();
    http.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, http.wait()).await.is_err() {
        tracing::warn!("some http requests did not finish in time");
    }
}

/// Every connection holds a descriptor; the usual soft limit (1,024) is far below what one
/// server holds, while the hard limit is not. Raised once, at startup.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}
