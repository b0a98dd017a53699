//! Log output: one line per event with key=value fields (or one JSON object per line),
//! filtered by `RUST_LOG` when set, else by the config's `logging.level`.
//!
//! Under systemd the journal stamps every line itself: when stderr is the journal
//! (`JOURNAL_STREAM` names it), lines carry no timestamp of their own.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written: config `logging.format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` text for a person.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Whether stderr is the systemd journal: `JOURNAL_STREAM` is `device:inode` of the stream
/// systemd connected, which matches stderr's.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    device.parse() == Ok(meta.dev()) && inode.parse() == Ok(meta.ino())
}

/// Install the global subscriber; a second call does nothing.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(!journal && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match (format, journal) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
}
