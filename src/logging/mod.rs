//! Log output: one line per event with key=value fields, filtered by `RUST_LOG` when set,
//! else by the config's `logging.level`.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber; a second call does nothing.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
