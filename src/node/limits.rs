//! The open-files limit: what the configured connection limits need, raising the soft limit at
//! start, and the warning (with the exact fix) when the hard limit is too low.
//!
//! The arithmetic is pure ([`descriptors_needed`], [`soft_target`], [`assess`]); only
//! [`raise_open_files_limit`] makes system calls. Running out of descriptors later is not fatal:
//! the accept loop backs off and counts it (`accept_errors`).

use crate::config::Config;

/// The unit line that fixes a low limit (see `tuning/nym-mixnode.service`).
pub const UNIT_FIX: &str = "LimitNOFILE=65536";
/// The shell command that fixes a low limit for a node started by hand.
pub const SHELL_FIX: &str = "ulimit -n 65536";

/// Descriptors a node uses whatever its config: standard streams, the VerLoc and HTTP
/// listeners, the log, the signal pipe, and room for short-lived files.
pub const DESCRIPTORS_BASE: u64 = 64;
/// Descriptors each shard uses beyond its connections: its mix-port listener, its io_uring
/// rings, eventfd and timers.
pub const DESCRIPTORS_PER_SHARD: u64 = 16;

/// Descriptors the node may hold at once with `config` and `shards` shards: every inbound
/// connection, one outbound connection per next hop per shard, VerLoc's served connections and its batch
/// of measurements, the HTTP requests served at once, and the fixed margin.
pub fn descriptors_needed(config: &Config, shards: usize) -> u64 {
    let counts = [
        config.engine.connections_inbound_max,
        config.engine.next_hops_max.saturating_mul(shards.max(1)),
        config.verloc.connections_max,
        config.verloc.batch_size,
        config.http.concurrent_requests_max,
    ];
    let connections: u64 = counts.iter().map(|&n| n as u64).sum();
    connections + DESCRIPTORS_BASE + DESCRIPTORS_PER_SHARD * shards as u64
}

/// The soft limit to ask for: the hard limit, or, when the hard limit is unlimited, the
/// kernel's per-process ceiling `nr_open` (a soft limit above it is refused).
pub fn soft_target(hard: u64, nr_open: Option<u64>) -> u64 {
    match nr_open {
        Some(ceiling) => hard.min(ceiling),
        None => hard,
    }
}

/// Whether a soft limit of `limit` covers `needed` descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Enough.
    Enough,
    /// Too low: connections past the limit will fail to be accepted or opened.
    TooLow {
        /// The limit in force.
        limit: u64,
        /// What the config can use.
        needed: u64,
    },
}

/// Compare the limit in force with what the config needs.
pub fn assess(limit: u64, needed: u64) -> Verdict {
    if limit >= needed {
        Verdict::Enough
    } else {
        Verdict::TooLow { limit, needed }
    }
}

/// The warning for a limit that is too low, with the exact fix.
pub fn too_low_message(limit: u64, needed: u64) -> String {
    format!(
        "the open-files limit is {limit}, but this config can use {needed} descriptors \
         (engine.connections_inbound_max + engine.next_hops_max per shard + verloc.connections_max + \
         verloc.batch_size + http.concurrent_requests_max + {DESCRIPTORS_BASE} + \
         {DESCRIPTORS_PER_SHARD} per shard); connections past the limit will be refused. \
         Fix: add `{UNIT_FIX}` to the [Service] section of the systemd unit \
         (see tuning/nym-mixnode.service), or run `{SHELL_FIX}` before starting the node, \
         or lower engine.connections_inbound_max and engine.next_hops_max"
    )
}

/// The open-files limit before and after [`raise_open_files_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// Soft limit found at start.
    pub soft_before: u64,
    /// Soft limit now.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
    /// What the config can use.
    pub needed: u64,
}

/// Raise the soft open-files limit to the hard limit and log the outcome: a warning with the
/// fix when the result is below `needed`.
pub fn raise_open_files_limit(needed: u64) -> std::io::Result<OpenFiles> {
    use rlimit::Resource;
    let (soft_before, hard) = Resource::NOFILE.get()?;
    let target = soft_target(hard, read_nr_open());
    let soft = if soft_before < target {
        match Resource::NOFILE.set(target, hard) {
            Ok(()) => target,
            Err(error) => {
                tracing::warn!(soft = soft_before, hard, %error, "cannot raise the open-files limit");
                soft_before
            }
        }
    } else {
        soft_before
    };
    let limits = OpenFiles {
        soft_before,
        soft,
        hard,
        needed,
    };
    match assess(soft, needed) {
        Verdict::Enough => {
            tracing::info!(soft_before, soft, hard, needed, "open-files limit");
        }
        Verdict::TooLow { limit, needed } => {
            tracing::warn!(
                soft_before,
                soft,
                hard,
                needed,
                "{}",
                too_low_message(limit, needed)
            );
        }
    }
    Ok(limits)
}

/// The kernel's ceiling on one process's descriptors (`/proc/sys/fs/nr_open`).
fn read_nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InitSettings, NodePaths};

    fn config() -> Config {
        let settings = InitSettings {
            id: "t".into(),
            host: "127.0.0.1".parse().unwrap(),
            announce_host: None,
            mix_port: 1789,
            verloc_port: 1790,
            http_api_port: 8000,
        };
        Config::new(&settings, &NodePaths::new(std::path::Path::new("/h"), "t"))
    }

    #[test]
    fn needed_counts_every_connection_limit_and_the_margin() {
        let mut c = config();
        c.engine.connections_inbound_max = 1000;
        c.engine.next_hops_max = 200;
        c.verloc.connections_max = 30;
        c.verloc.batch_size = 4;
        c.http.concurrent_requests_max = 5;
        let expected = 1000 + 2 * 200 + 30 + 4 + 5 + DESCRIPTORS_BASE + 2 * DESCRIPTORS_PER_SHARD;
        assert_eq!(descriptors_needed(&c, 2), expected);
        assert_eq!(
            descriptors_needed(&c, 3) - descriptors_needed(&c, 2),
            200 + DESCRIPTORS_PER_SHARD
        );
    }

    #[test]
    fn defaults_fit_the_units_limit_but_not_the_usual_1024() {
        // A 32-core node: each shard may keep a connection to each of 1,024 next hops.
        let needed = descriptors_needed(&config(), 32);
        assert!(needed > 1024, "{needed}");
        assert_eq!(assess(65536, needed), Verdict::Enough);
        assert_eq!(
            assess(1024, needed),
            Verdict::TooLow {
                limit: 1024,
                needed
            }
        );
    }

    #[test]
    fn soft_target_is_the_hard_limit_capped_by_nr_open() {
        assert_eq!(soft_target(65536, Some(1 << 20)), 65536);
        assert_eq!(soft_target(u64::MAX, Some(1 << 20)), 1 << 20);
        assert_eq!(soft_target(4096, None), 4096);
    }

    #[test]
    fn the_warning_names_both_fixes() {
        let text = too_low_message(1024, 8600);
        for part in [
            "1024",
            "8600",
            "LimitNOFILE=65536",
            "ulimit -n 65536",
            "connections_inbound_max",
        ] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
    }
}
