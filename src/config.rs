//! Runtime configuration.
//!
//! Every knob is a `--flag` and a `TANDEM_*` environment variable so the same binary runs
//! unchanged on a laptop, in a container and in tests. Defaults are what a single-machine
//! deployment wants; nothing here reads files or touches the network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

/// Tandem: a real-time collaborative document server for Yjs clients.
#[derive(Debug, Clone, Parser)]
#[command(name = "tandem", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory holding the SQLite database (`tandem.db`); created on first start. Not
    /// used for documents when `--database-url` is given.
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// A PostgreSQL URL (`postgres://user@host/db`): documents are stored there instead of
    /// in `--data-dir`, and any number of nodes may serve them at once (README: Several
    /// nodes).
    #[arg(long, env = "TANDEM_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Seconds a node keeps its peers while PostgreSQL is unreachable (writes are held, not
    /// echoed); after that its peers are closed with 1013 and new ones refused until the
    /// database is back.
    #[arg(long, env = "TANDEM_DATABASE_TIMEOUT_SECS", default_value_t = 10.0)]
    pub database_timeout_secs: f64,

    /// Seconds between two reads of the heads of loaded documents (PostgreSQL): the safety
    /// net under the notifications, so a lost one delays an update by at most this long.
    #[arg(long, env = "TANDEM_CLUSTER_POLL_SECS", default_value_t = 2.0)]
    pub cluster_poll_secs: f64,

    /// Serve the browser editor from this directory instead of the copy built into the
    /// binary (for editor development: `node web/build.mjs` and reload). Empty turns the
    /// pages off; unset serves the built-in editor.
    #[arg(
        long,
        env = "TANDEM_WEB_DIR",
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    pub web_dir: Option<PathBuf>,

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

    /// Bytes of updates and presence waiting for one peer (beyond what its socket took)
    /// before it counts as too slow and is closed (1013). State replies do not count.
    #[arg(long, env = "TANDEM_PEER_MAX_QUEUED_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub peer_max_queued_bytes: usize,

    /// Seconds a peer may take no byte at all while frames wait for it before it counts
    /// as too slow and is closed (1013).
    #[arg(long, env = "TANDEM_PEER_STALL_SECS", default_value_t = 20.0)]
    pub peer_stall_secs: f64,

    /// Milliseconds a busy room gathers messages before its next commit and fan-out (one
    /// commit and one write per peer for all of them); a room that has not flushed for
    /// this long handles a message at once. 0: no window.
    #[arg(long, env = "TANDEM_BATCH_MS", default_value_t = 3)]
    pub batch_ms: u64,

    /// Milliseconds the store waits, once a commit is due, for other rooms' writes to join
    /// it: one fsync for more rooms (less CPU per update with many rooms, more latency).
    /// 0: commit at once.
    #[arg(long, env = "TANDEM_COMMIT_LINGER_MS", default_value_t = 0.0)]
    pub commit_linger_ms: f64,

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

    // ---- access control (README: Access control) ----------------------------------------
    /// HS256 secret for tokens (taken as raw UTF-8 bytes). Without any key the server is
    /// open: anyone who can reach it can read and write every document.
    #[arg(long, env = "TANDEM_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// A PEM public key (Ed25519 → EdDSA, P-256 → ES256) named `KID.pem`; repeatable
    /// (the environment variable takes a comma-separated list).
    #[arg(long, env = "TANDEM_AUTH_PUBLIC_KEY", value_delimiter = ',')]
    pub auth_public_key: Vec<PathBuf>,

    /// Browser origins allowed to open WebSockets (comma-separated, e.g.
    /// `https://app.example.com`); empty allows any. Requests without `Origin` (not from a
    /// browser) are not affected.
    #[arg(long, env = "TANDEM_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    // ---- limits (README: Limits) ---------------------------------------------------------
    /// WebSocket connections for the whole server; beyond it the upgrade gets HTTP 503.
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// WebSocket connections per client IP address (HTTP 503 beyond); 0 = no limit (the
    /// default: behind a proxy every client has the proxy's address).
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Documents loaded at once; beyond it new rooms are refused (1013 / HTTP 503).
    #[arg(long, env = "TANDEM_MAX_ROOMS", default_value_t = 10_000)]
    pub max_rooms: usize,

    /// Updates per second one connection may send (a token bucket; closing 1008 beyond).
    #[arg(long, env = "TANDEM_MAX_UPDATES_PER_SEC", default_value_t = 200.0)]
    pub max_updates_per_sec: f64,

    /// Burst of updates above the rate (typing, pasting and an offline resync stay below).
    #[arg(long, env = "TANDEM_MAX_UPDATES_BURST", default_value_t = 1000.0)]
    pub max_updates_burst: f64,

    /// Awareness client ids one connection may announce (closing 1008 beyond).
    #[arg(long, env = "TANDEM_MAX_AWARENESS_IDS", default_value_t = 8)]
    pub max_awareness_ids: usize,

    /// Bytes of one awareness state (closing 1009 beyond).
    #[arg(long, env = "TANDEM_MAX_AWARENESS_BYTES", default_value_t = 65536)]
    pub max_awareness_bytes: usize,

    /// Awareness bytes per second one connection may send (burst: 16 × the state limit;
    /// closing 1008 beyond).
    #[arg(long, env = "TANDEM_MAX_AWARENESS_BYTES_PER_SEC", default_value_t = 262_144.0)]
    pub max_awareness_bytes_per_sec: f64,

    /// Awareness bytes one room holds in all; a state that would pass it closes its
    /// connection (1008).
    #[arg(long, env = "TANDEM_MAX_ROOM_AWARENESS_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_room_awareness_bytes: usize,

    /// Full-state requests (SyncStep1) one connection may make per minute, after a burst
    /// of 10 (closing 1008 beyond).
    #[arg(long, env = "TANDEM_MAX_STATE_REQUESTS_PER_MIN", default_value_t = 60.0)]
    pub max_state_requests_per_min: f64,

    /// Bytes of state (SyncStep2 replies) one connection may be sent per minute beyond its
    /// first reply, which is always served (closing 1008 beyond).
    #[arg(long, env = "TANDEM_MAX_STATE_BYTES_PER_MIN", default_value_t = 64 * 1024 * 1024)]
    pub max_state_bytes_per_min: u64,

    /// Bytes a document may hold (stored snapshot + log); an update that would pass it is
    /// refused and not stored (close 4413, HTTP 413).
    #[arg(long, env = "TANDEM_MAX_DOC_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_doc_bytes: u64,

    /// Seconds a client has to send a request's headers (idle keep-alive connections are
    /// closed after the same time).
    #[arg(long, env = "TANDEM_HEADER_TIMEOUT_SECS", default_value_t = 10.0)]
    pub header_timeout_secs: f64,

    /// Seconds an HTTP request (its body included) may take before it is answered 408.
    #[arg(long, env = "TANDEM_REQUEST_TIMEOUT_SECS", default_value_t = 30.0)]
    pub request_timeout_secs: f64,

    // ---- documents API and webhooks (README: Documents API, Webhooks) --------------------
    /// This node's name, in logs and in webhook events. Default: the hostname and a random
    /// suffix.
    #[arg(long, env = "TANDEM_NODE_ID")]
    pub node_id: Option<String>,

    /// A receiver of document events (repeatable; the environment variable takes a
    /// comma-separated list). Plain `http://` URLs.
    #[arg(long, env = "TANDEM_WEBHOOK_URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,

    /// Key of the HMAC-SHA256 signature sent with every webhook
    /// (`X-Tandem-Signature-256`).
    #[arg(long, env = "TANDEM_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// `document.updated` goes out this many milliseconds after a document's last change...
    #[arg(long, env = "TANDEM_WEBHOOK_DEBOUNCE_MS", default_value_t = 2000)]
    pub webhook_debounce_ms: u64,

    /// ...and at most this long after the first change it reports, while changes continue.
    #[arg(long, env = "TANDEM_WEBHOOK_MAX_WAIT_MS", default_value_t = 10_000)]
    pub webhook_max_wait_ms: u64,

    /// Seconds a receiver has to answer one delivery.
    #[arg(long, env = "TANDEM_WEBHOOK_TIMEOUT_SECS", default_value_t = 10.0)]
    pub webhook_timeout_secs: f64,

    /// Longest wait between two attempts at a failing delivery (the backoff doubles from
    /// one second up to this). Deliveries are retried until they succeed.
    #[arg(long, env = "TANDEM_WEBHOOK_RETRY_MAX_SECS", default_value_t = 600.0)]
    pub webhook_retry_max_secs: f64,
}

/// The command line: `tandem [FLAGS]` serves; `tandem token …` and `tandem share …` mint.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a signed access token (see README: Access control).
    Token(crate::auth::mint::TokenArgs),
    /// Print an editor link carrying a token: BASE/d/DOC#token=JWT.
    Share(crate::auth::mint::ShareArgs),
}

impl Command {
    /// Runs a minting command; prints the token or link on stdout.
    pub fn run(&self) -> anyhow::Result<()> {
        match self {
            Command::Token(args) => println!("{}", crate::auth::mint::token(args)?),
            Command::Share(args) => {
                let (link, jti) = crate::auth::mint::share(args)?;
                println!("{link}");
                eprintln!("jti={jti} (revoke with POST /api/admin/revoke {{\"jti\": \"{jti}\"}})");
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    Full,
    Normal,
}

impl Config {
    /// The defaults, with data in `data_dir`, for embedding (tests, tools). Unlike
    /// `Config::parse`, this never reads `TANDEM_*` variables: an embedded server must not
    /// change with the environment of whoever runs it.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        let command = Config::command().mut_args(|arg| arg.env(None::<&str>));
        let matches = command.get_matches_from(["tandem"]);
        // The defaults parse by construction: every default_value above is a valid value.
        let mut config = Config::from_arg_matches(&matches).expect("defaults are valid");
        config.data_dir = data_dir.into();
        config
    }

    pub fn room_grace(&self) -> Duration {
        Duration::from_secs_f64(self.room_grace_secs.max(0.0))
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs_f64(self.ping_interval_secs.max(0.05))
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_timeout_secs.max(0.1))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_secs.max(0.1))
    }

    /// `--node-id`, or the hostname with a random suffix.
    pub fn node_name(&self) -> String {
        if let Some(id) = self.node_id.as_deref().filter(|id| !id.trim().is_empty()) {
            return id.trim().to_string();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "tandem".into());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}-{}", &suffix[..6])
    }

    pub fn database_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.database_timeout_secs.clamp(0.1, 1e6))
            .unwrap_or(Duration::from_secs(10))
    }

    pub fn cluster_poll(&self) -> Duration {
        Duration::try_from_secs_f64(self.cluster_poll_secs.clamp(0.05, 3600.0))
            .unwrap_or(Duration::from_secs(2))
    }

    /// The database URL, unless empty (an empty variable means "not set").
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }

    pub fn commit_linger(&self) -> Duration {
        Duration::try_from_secs_f64(self.commit_linger_ms.clamp(0.0, 1000.0) / 1000.0)
            .unwrap_or(Duration::ZERO)
    }

    pub fn peer_stall(&self) -> Duration {
        Duration::try_from_secs_f64(self.peer_stall_secs.clamp(0.05, 1e9))
            .unwrap_or(Duration::from_secs(20))
    }

    pub fn awareness_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.awareness_timeout_secs.max(0.05))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in a child process that has `TANDEM_*` variables set (see below).
    #[test]
    fn defaults_in_a_hostile_environment() {
        if std::env::var_os("TANDEM_MAX_MESSAGE_BYTES").is_none() {
            return; // only meaningful in the child
        }
        let config = Config::for_data_dir("/tmp/x");
        assert_eq!(config.max_message_bytes, 8 * 1024 * 1024);
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn embedded_defaults_ignore_the_environment() {
        let exe = std::env::current_exe().expect("test binary");
        let status = std::process::Command::new(exe)
            .args(["--exact", "config::tests::defaults_in_a_hostile_environment", "--quiet"])
            .env("TANDEM_MAX_MESSAGE_BYTES", "1000")
            .env("TANDEM_LISTEN", "127.0.0.1:1")
            .env("TANDEM_DATA_DIR", "/nonexistent")
            .status()
            .expect("run child");
        assert!(status.success(), "Config::for_data_dir read TANDEM_* variables");
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        let missing: Vec<_> = Config::command()
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter(|a| a.get_env().is_none())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(missing.is_empty(), "{missing:?}");
    }
}
