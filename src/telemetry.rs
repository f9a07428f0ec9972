//! Logging setup. `RUST_LOG` picks the level (default `info`); one line per connection
//! open/close and per rejected message is the contract, so operators can grep by doc or peer.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // try_init: tests and tools may call this more than once in a process.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
