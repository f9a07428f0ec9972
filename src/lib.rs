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
//! - `colour`: cursor colours per room
//! - `store`: storage API; `store::sqlite`: the embedded backend, the only SQL
//! - `id`: validated identifiers
//!
//! The public API is what the binaries and the tests need: `serve`, `Config`, `protocol`
//! (to speak to a server), `colour::PALETTE`, and the error types `protocol` returns.

mod awareness;
pub mod colour;
pub mod config;
mod error;
mod http;
mod id;
pub mod protocol;
mod room;
mod rooms;
mod store;
pub mod telemetry;
mod web;
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
    let (store, writer) = store::open_sqlite(&config.data_dir, config.sync)
        .await
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let writer = tokio::spawn(writer);
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
    let state = http::AppState {
        config: config.clone(),
        store,
        web: Arc::new(web),
        conn: ws::ConnDeps {
            rooms: rooms.clone(),
            config: config.clone(),
            tracker: tracker.clone(),
            shutdown: token.clone(),
        },
        rooms,
    };
    let addr = listener.local_addr()?;
    println!("listening addr={addr}");
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "serving");
    let stop = token.clone();
    // Nagle's algorithm would hold back small frames (a keystroke is ~30 bytes) until the
    // previous ones are acknowledged: measured as ~9 ms of median latency in a busy room.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            stop.cancel();
        })
        .await
        .context("serving http")?;
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
