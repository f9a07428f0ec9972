//! Runtime configuration.
//!
//! Every knob is a `--flag` and a `TANDEM_*` environment variable so the same binary runs
//! unchanged on a laptop, in a container and in tests. Defaults are what a single-machine
//! deployment wants; nothing here reads files or touches the network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Tandem: a real-time collaborative document server for Yjs clients.
#[derive(Debug, Clone, Parser)]
#[command(name = "tandem", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory holding the SQLite database (`tandem.db`); created on first start.
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Directory of the built browser editor served at `/`. Empty disables static files.
    #[arg(
        long,
        env = "TANDEM_WEB_DIR",
        default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/web/dist"),
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    pub web_dir: PathBuf,

    /// Largest WebSocket message accepted from a client, in bytes; larger ones close the
    /// connection with 1009.
    #[arg(long, env = "TANDEM_MAX_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Seconds a room stays loaded after its last peer leaves.
    #[arg(long, env = "TANDEM_ROOM_GRACE_SECS", default_value_t = 30.0)]
    pub room_grace_secs: f64,

    /// Seconds between WebSocket pings; a peer silent for two intervals is closed.
    #[arg(long, env = "TANDEM_PING_INTERVAL_SECS", default_value_t = 15.0)]
    pub ping_interval_secs: f64,

    /// Seconds after which an awareness state that was not renewed is removed
    /// (the JavaScript client's default outdated timeout).
    #[arg(long, env = "TANDEM_AWARENESS_TIMEOUT_SECS", default_value_t = 30.0)]
    pub awareness_timeout_secs: f64,

    /// Milliseconds over which awareness (cursor) changes are gathered into one relayed
    /// update; 0 relays at the end of each processed batch.
    #[arg(long, env = "TANDEM_AWARENESS_BATCH_MS", default_value_t = 25)]
    pub awareness_batch_ms: u64,

    /// Frames queued for one peer before it counts as too slow and is closed (1013).
    #[arg(long, env = "TANDEM_PEER_QUEUE", default_value_t = 1024)]
    pub peer_queue: usize,

    /// Compact a document's log into its snapshot once it holds this many updates.
    #[arg(long, env = "TANDEM_COMPACT_UPDATES", default_value_t = 2000)]
    pub compact_updates: u64,

    /// Compact a document's log into its snapshot once it holds this many bytes.
    #[arg(long, env = "TANDEM_COMPACT_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub compact_bytes: u64,

    /// SQLite durability: `full` fsyncs every commit (survives power loss), `normal`
    /// survives a process crash but may lose the last commits on power loss.
    #[arg(long, env = "TANDEM_SYNC", value_enum, default_value_t = SyncMode::Full)]
    pub sync: SyncMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    Full,
    Normal,
}

impl Config {
    /// Defaults for embedding (tests, tools): loopback on an OS-chosen port, data in `data_dir`.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        let mut config = Config::parse_from(["tandem"]);
        config.data_dir = data_dir.into();
        config
    }

    pub fn room_grace(&self) -> Duration {
        Duration::from_secs_f64(self.room_grace_secs.max(0.0))
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs_f64(self.ping_interval_secs.max(0.05))
    }

    pub fn awareness_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.awareness_timeout_secs.max(0.05))
    }
}
