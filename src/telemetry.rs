//! Logging setup. `RUST_LOG` picks the level (default `info`); one line per connection
//! open/close and per rejected message is the contract, so operators can grep by doc or peer.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // try_init: tests and tools may call this more than once in a process.
    // Plain text when piped (log files, the crash test reading the bound address).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}
