//! `/metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Written by hand rather than with a metrics crate: every figure already lives in the shards'
//! snapshots and in hdrhistogram histograms, so a registry of live metric objects would only
//! copy them. Histograms are converted at scrape time into fixed buckets (`le` in seconds);
//! `_sum` is computed from the histogram, so it is exact to the histogram's precision (1%).
//! The output passes `promtool check metrics` (tested where promtool is installed).

use std::fmt::Write;

use hdrhistogram::Histogram;

use super::collect::Telemetry;
use super::server::ServerCounts;
use crate::accounting::DropReason;
use crate::shard::stats::ShardSnapshot;

/// Bucket bounds of the Sphinx processing histogram, in seconds.
pub const PROCESSING_BUCKETS_SECONDS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_5, 0.001,
    0.002_5, 0.01,
];
/// Bucket bounds of the added-latency histogram, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 15] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Everything `/metrics` shows.
pub struct MetricsInput<'a> {
    /// The crate version.
    pub version: &'a str,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Each shard's published figures.
    pub shards: &'a [ShardSnapshot],
    /// Merged histograms.
    pub telemetry: &'a Telemetry,
    /// The API server's own counters.
    pub server: &'a ServerCounts,
    /// This process's figures, as read from /proc (None where it cannot be read).
    pub process: Option<ProcessFigures>,
    /// VerLoc's listener and measurer counters, when VerLoc runs.
    pub verloc: Option<&'a crate::verloc::VerlocStats>,
    /// Outbound HTTP(S) calls: (purpose, outcome, count).
    pub outbound: &'a [(&'static str, &'static str, u64)],
    /// The monitor's loops by family (IPv4, IPv6) and by path (from, to); None when it is
    /// off.
    pub monitor: Option<MonitorTotals<'a>>,
}

/// The standard `process_*` figures of Prometheus client libraries.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident memory, bytes.
    pub resident_bytes: u64,
    /// Virtual memory, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The open-files limit (soft).
    pub max_fds: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessFigures {
    /// Read this process's figures from /proc; `started` is when it started.
    pub fn read(started: std::time::SystemTime) -> Option<ProcessFigures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let mut statm = statm.split_whitespace();
        let virtual_pages: u64 = statm.next()?.parse().ok()?;
        let resident_pages: u64 = statm.next()?.parse().ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let max_fds = rlimit::Resource::NOFILE
            .get()
            .map(|(soft, _)| soft)
            .unwrap_or(0);
        let start_time_seconds = started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Some(ProcessFigures {
            cpu_seconds: (utime + stime) / ticks,
            resident_bytes: resident_pages * page,
            virtual_bytes: virtual_pages * page,
            // The directory read itself holds one descriptor.
            open_fds: open_fds.saturating_sub(1),
            max_fds,
            start_time_seconds,
        })
    }
}

/// The monitor's figures for /metrics: loops by family (IPv4, IPv6), and by path.
pub type MonitorTotals<'a> = (
    [crate::monitor::Tally; 2],
    &'a [(String, String, crate::monitor::Tally)],
);

/// Label pairs of one series.
type Labels<'a> = &'a [(&'a str, &'a str)];

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                // Label values here are fixed labels, numbers and socket addresses (digits,
                // dots, colons, brackets, hex): nothing to escape.
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn per_shard(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        shards: &[ShardSnapshot],
        f: impl Fn(&ShardSnapshot) -> u64,
    ) {
        self.family(name, kind, help);
        for (i, s) in shards.iter().enumerate() {
            self.sample(name, &[("shard", &i.to_string())], f(s));
        }
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        series: &[(Labels, &Histogram<u64>)],
        bounds: &[f64],
    ) {
        self.family(name, "histogram", help);
        for (labels, h) in series {
            let (cumulative, sum_seconds) = buckets(h, bounds);
            for (bound, count) in bounds.iter().zip(&cumulative) {
                let le = bound.to_string();
                let mut l = labels.to_vec();
                l.push(("le", &le));
                self.sample(&format!("{name}_bucket"), &l, count);
            }
            let mut l = labels.to_vec();
            l.push(("le", "+Inf"));
            self.sample(&format!("{name}_bucket"), &l, h.len());
            self.sample(&format!("{name}_sum"), labels, sum_seconds);
            self.sample(&format!("{name}_count"), labels, h.len());
        }
    }
}

/// Cumulative counts at each bound (seconds) and the sum in seconds of a nanosecond histogram.
pub fn buckets(h: &Histogram<u64>, bounds_seconds: &[f64]) -> (Vec<u64>, f64) {
    let mut counts = vec![0u64; bounds_seconds.len()];
    let mut sum_nanos = 0f64;
    for v in h.iter_recorded() {
        let value = h.median_equivalent(v.value_iterated_to());
        let count = v.count_at_value();
        sum_nanos += value as f64 * count as f64;
        let seconds = value as f64 / 1e9;
        for (bound, slot) in bounds_seconds.iter().zip(counts.iter_mut()) {
            if seconds <= *bound {
                *slot += count;
            }
        }
    }
    (counts, sum_nanos / 1e9)
}

/// A counter family with one label: name, label key, help, and each label value's count.
type LabelledFamily<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, u64)>);

/// VerLoc's counters: its listener (connections, echoes) and its measurer (runs, targets).
fn verloc_metrics(o: &mut Out, v: &crate::verloc::VerlocStats) {
    let plain: [(&str, &str, &str, u64); 6] = [
        (
            "nym_mixnode_verloc_connections_active",
            "gauge",
            "VerLoc connections being served.",
            v.connections_active,
        ),
        (
            "nym_mixnode_verloc_connections_accepted_total",
            "counter",
            "VerLoc connections accepted.",
            v.connections_accepted,
        ),
        (
            "nym_mixnode_verloc_accept_errors_total",
            "counter",
            "VerLoc accepts that failed.",
            v.accept_errors,
        ),
        (
            "nym_mixnode_verloc_echoes_answered_total",
            "counter",
            "VerLoc echo packets answered.",
            v.echoes_answered,
        ),
        (
            "nym_mixnode_verloc_topology_entries_skipped_total",
            "counter",
            "Topology entries VerLoc skipped (summed over runs).",
            v.topology_entries_skipped,
        ),
        (
            "nym_mixnode_verloc_targets_measured_total",
            "counter",
            "Nodes VerLoc measured (summed over runs).",
            v.targets_measured,
        ),
    ];
    for (name, kind, help, value) in plain {
        o.family(name, kind, help);
        o.sample(name, &[], value);
    }
    let labelled: [LabelledFamily; 5] = [
        (
            "nym_mixnode_verloc_connections_refused_total",
            "reason",
            "VerLoc connections refused: at verloc.connections_max, or no thread could be started.",
            vec![
                ("limit", v.connections_refused_limit),
                ("thread", v.connections_refused_thread),
            ],
        ),
        (
            "nym_mixnode_verloc_connections_closed_total",
            "reason",
            "VerLoc connections closed, by why.",
            vec![
                ("peer", v.connections_closed_peer),
                ("truncated", v.connections_closed_truncated),
                ("idle", v.connections_closed_idle),
                ("limit", v.connections_closed_limit),
                ("bad_echo", v.connections_closed_bad_echo),
                ("io_error", v.connections_closed_io_error),
                ("stopped", v.connections_closed_stopped),
            ],
        ),
        (
            "nym_mixnode_verloc_echoes_rejected_total",
            "reason",
            "VerLoc echo packets rejected, by why.",
            v.echoes_rejected.clone(),
        ),
        (
            "nym_mixnode_verloc_runs_total",
            "outcome",
            "VerLoc measurement runs: started, finished, or not started for want of a node list.",
            vec![
                ("started", v.runs_started),
                ("finished", v.runs_finished),
                ("no_node_list", v.runs_no_node_list),
            ],
        ),
        (
            "nym_mixnode_verloc_targets_failed_total",
            "reason",
            "Nodes VerLoc could not measure, by why (summed over runs).",
            v.targets_failed.clone(),
        ),
    ];
    for (name, label, help, values) in labelled {
        o.family(name, "counter", help);
        for (key, value) in values {
            o.sample(name, &[(label, key)], value);
        }
    }
}

/// The `/metrics` body.
pub fn render(input: &MetricsInput) -> String {
    let mut o = Out {
        text: String::with_capacity(16 << 10),
    };
    let shards = input.shards;
    o.family(
        "nym_mixnode_build_info",
        "gauge",
        "Build information; the value is always 1.",
    );
    o.sample("nym_mixnode_build_info", &[("version", input.version)], 1);
    o.family(
        "nym_mixnode_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
    );
    o.sample("nym_mixnode_uptime_seconds", &[], input.uptime_seconds);
    o.family(
        "nym_mixnode_shards",
        "gauge",
        "Packet engine shards (cores) running.",
    );
    o.sample("nym_mixnode_shards", &[], shards.len());
    if let Some(p) = input.process {
        for (name, kind, help, value) in [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                p.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                p.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                p.open_fds as f64,
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                p.max_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
        ] {
            o.family(name, kind, help);
            o.sample(name, &[], value);
        }
    }
    if let Some(v) = input.verloc {
        verloc_metrics(&mut o, v);
    }
    o.per_shard(
        "nym_mixnode_loops_returned_total",
        "counter",
        "The node's own loop packets that came back to it (their final hop): a series of their own, neither forwarded nor dropped.",
        shards,
        |s| s.counts.packets.looped,
    );
    if let Some((totals, paths)) = input.monitor {
        let name = "nym_mixnode_monitor_loops_total";
        o.family(
            name,
            "counter",
            "The monitor's loops by address family and fate: sent, returned (in time), late, lost.",
        );
        for (family, tally) in ["ipv4", "ipv6"].iter().zip(totals.iter()) {
            for (outcome, value) in tally.outcomes() {
                o.sample(name, &[("family", family), ("outcome", outcome)], value);
            }
        }
        let name = "nym_mixnode_monitor_path_loops_total";
        o.family(
            name,
            "counter",
            "The monitor's loops by hop pair they crossed (at most 4096 pairs) and fate; a lost loop counts on each of its pairs.",
        );
        for (from, to, tally) in paths {
            for (outcome, value) in tally.outcomes() {
                o.sample(
                    name,
                    &[("from", from), ("to", to), ("outcome", outcome)],
                    value,
                );
            }
        }
    }
    if !input.outbound.is_empty() {
        let name = "nym_mixnode_outbound_requests_total";
        o.family(
            name,
            "counter",
            "The node's own HTTP(S) calls (topology, nym-api's key schedule, announcements to nym-api), by purpose and outcome; a failed one is retried later.",
        );
        for (purpose, outcome, count) in input.outbound {
            o.sample(name, &[("purpose", purpose), ("outcome", outcome)], count);
        }
    }
    o.per_shard(
        "nym_mixnode_accept_errors_total",
        "counter",
        "Accepts on the mix port that failed (most often out of file descriptors); the shard backs off and goes on.",
        shards,
        |s| s.accept_errors,
    );

    o.per_shard(
        "nym_mixnode_packets_received_total",
        "counter",
        "Packets received on the mix port.",
        shards,
        |s| s.counts.packets.received,
    );
    o.per_shard(
        "nym_mixnode_packets_forwarded_total",
        "counter",
        "Packets written to their next hop.",
        shards,
        |s| s.counts.packets.forwarded,
    );
    o.family(
        "nym_mixnode_packets_dropped_total",
        "counter",
        "Packets dropped, by shard and reason.",
    );
    for (i, s) in shards.iter().enumerate() {
        let shard = i.to_string();
        for reason in DropReason::ALL {
            o.sample(
                "nym_mixnode_packets_dropped_total",
                &[("shard", &shard), ("reason", reason.label())],
                s.counts.packets.dropped[reason as usize],
            );
        }
    }
    o.per_shard(
        "nym_mixnode_packets_handed_off_total",
        "counter",
        "Packets passed to another shard.",
        shards,
        |s| s.counts.handed_off,
    );
    o.per_shard(
        "nym_mixnode_packets_taken_over_total",
        "counter",
        "Packets taken from another shard.",
        shards,
        |s| s.counts.taken_over,
    );
    o.family(
        "nym_mixnode_packets_in_flight",
        "gauge",
        "Packets in a shard right now as its counters imply: received and taken over, less forwarded, handed off and dropped. Equals held + queued + writing when nothing is lost.",
    );
    for (i, s) in shards.iter().enumerate() {
        o.sample(
            "nym_mixnode_packets_in_flight",
            &[("shard", &i.to_string())],
            s.counts.in_flight(),
        );
    }
    o.per_shard(
        "nym_mixnode_packets_held",
        "gauge",
        "Packets waiting in the delay wheel for their send time.",
        shards,
        |s| s.held,
    );
    o.per_shard(
        "nym_mixnode_packets_queued",
        "gauge",
        "Packets in next-hop queues (queue depth).",
        shards,
        |s| s.queued,
    );
    o.per_shard(
        "nym_mixnode_packets_writing",
        "gauge",
        "Packets handed to writes to next hops now under way.",
        shards,
        |s| s.writing,
    );
    o.per_shard(
        "nym_mixnode_packets_delay_clamped_total",
        "counter",
        "Packets that asked for more than engine.delay_max and were held for the cap instead.",
        shards,
        |s| s.delays_clamped,
    );
    o.per_shard(
        "nym_mixnode_next_hops",
        "gauge",
        "Entries in the shard's next-hop table (limit: engine.next_hops_max, per shard).",
        shards,
        |s| s.next_hops,
    );
    o.family(
        "nym_mixnode_next_hops_removed_total",
        "counter",
        "Next-hop entries forgotten, by reason: evicted (a quiet entry made room for a new next hop), idle (engine.next_hop_idle_timeout), failing (engine.next_hop_failures_max). Refusals of a full table are the next_hop_table_full drops.",
    );
    for (i, s) in shards.iter().enumerate() {
        let shard = i.to_string();
        for (reason, value) in [
            ("evicted", s.next_hops_evicted),
            ("idle", s.next_hops_forgotten_idle),
            ("failing", s.next_hops_forgotten_failing),
        ] {
            o.sample(
                "nym_mixnode_next_hops_removed_total",
                &[("shard", &shard), ("reason", reason)],
                value,
            );
        }
    }
    o.family(
        "nym_mixnode_connections_open",
        "gauge",
        "Mix connections open, by direction.",
    );
    for (i, s) in shards.iter().enumerate() {
        let shard = i.to_string();
        o.sample(
            "nym_mixnode_connections_open",
            &[("shard", &shard), ("direction", "inbound")],
            s.connections_inbound,
        );
        o.sample(
            "nym_mixnode_connections_open",
            &[("shard", &shard), ("direction", "outbound")],
            s.connections_outbound,
        );
    }
    o.per_shard(
        "nym_mixnode_connections_refused_total",
        "counter",
        "Inbound connections refused because their source address held engine.connections_per_ip_max (its share on this shard).",
        shards,
        |s| s.connections_refused,
    );
    o.per_shard(
        "nym_mixnode_connections_read_timeouts_total",
        "counter",
        "Inbound connections closed because a frame did not complete within engine.read_timeout of its first byte.",
        shards,
        |s| s.read_timeouts,
    );
    o.per_shard(
        "nym_mixnode_packet_memory_bytes",
        "gauge",
        "Bytes of the packets the shard holds in its delay wheel, next-hop queues and writes under way, each counted with its record (limit: its share of engine.packet_memory_bytes_max; past it, memory_full drops).",
        shards,
        |s| s.bytes_held,
    );
    o.per_shard(
        "nym_mixnode_cross_shard_bytes",
        "gauge",
        "Bytes of the packets in the cross-shard channel towards the shard (limit: its share of engine.cross_shard_bytes_max; past it, handoff_full drops).",
        shards,
        |s| s.inbox_bytes,
    );
    o.per_shard(
        "nym_mixnode_known_node_addresses",
        "gauge",
        "IP addresses of known nodes (from [topology]) the shard forwards to with engine.forward_to = \"known\" and keeps inbound room for; 0 without a topology.",
        shards,
        |s| s.known_addresses,
    );
    o.per_shard(
        "nym_mixnode_connections_inbound_known",
        "gauge",
        "Inbound connections open from known nodes' addresses (room kept: the shard's share of engine.connections_reserved_known).",
        shards,
        |s| s.connections_known,
    );
    o.per_shard(
        "nym_mixnode_shard_stalls_total",
        "counter",
        "Times the watchdog saw the shard make no progress for 2 s although it was rung every 50 ms.",
        shards,
        |s| s.stalls,
    );
    o.per_shard(
        "nym_mixnode_shard_stalled",
        "gauge",
        "1 while the shard is stalled (see nym_mixnode_shard_stalls_total); /health then answers 503.",
        shards,
        |s| u64::from(s.stalled),
    );
    o.per_shard(
        "nym_mixnode_connections_evicted_total",
        "counter",
        "Inbound connections closed to make room for a new one when the shard was full (the one longest without a whole frame).",
        shards,
        |s| s.connections_evicted,
    );
    o.per_shard(
        "nym_mixnode_connections_closed_idle_total",
        "counter",
        "Inbound connections closed after engine.connection_idle_timeout without a frame.",
        shards,
        |s| s.connections_closed_idle,
    );
    o.per_shard(
        "nym_mixnode_connections_closed_first_frame_total",
        "counter",
        "Inbound connections closed without a whole first frame within engine.first_frame_timeout of the accept.",
        shards,
        |s| s.connections_closed_first_frame,
    );
    o.per_shard(
        "nym_mixnode_doorbells_rung_total",
        "counter",
        "Doorbells the shard rang to wake another shard after a handoff (a ring already pending is not rung again).",
        shards,
        |s| s.doorbells_rung,
    );
    o.per_shard(
        "nym_mixnode_handoff_batches_total",
        "counter",
        "Batches of packets the shard handed to other shards (one channel message each; a packet crosses at most once, to the shard owning its replay tag).",
        shards,
        |s| s.handoff_batches,
    );
    if shards.iter().all(|s| s.syscalls.is_some()) {
        o.per_shard(
            "nym_mixnode_shard_syscalls_total",
            "counter",
            "System calls the shard's thread entered, as the kernel counts them (present where the node may count a kernel tracepoint: root or CAP_PERFMON).",
            shards,
            |s| s.syscalls.unwrap_or(0),
        );
    }
    let noise = shards
        .iter()
        .fold(crate::noise::NoiseCounts::default(), |sum, s| {
            sum.plus(&s.noise)
        });
    o.family(
        "nym_mixnode_noise_handshakes_total",
        "counter",
        "Noise (XKpsk3) handshakes finished, by the node's role: responder on connections from peers the topology lists with a Noise key, initiator on connections to them.",
    );
    for role in crate::noise::Role::ALL {
        o.sample(
            "nym_mixnode_noise_handshakes_total",
            &[("role", role.as_str())],
            noise.handshakes[role as usize],
        );
    }
    o.family(
        "nym_mixnode_noise_failures_total",
        "counter",
        "Noise links closed by failure, by role and reason: timeout (handshake past engine.noise_handshake_timeout), closed (peer left mid-handshake), bad_handshake (junk, wrong key or PSK), wrong_pattern (another Noise version or pattern), decrypt (a data message that did not check), bad_message (a message that cannot follow the handshake), penalised (closed before any handshake work: the address failed one lately, engine.noise_failure_penalty). Only that connection closes.",
    );
    for role in crate::noise::Role::ALL {
        for failure in crate::noise::Failure::ALL {
            o.sample(
                "nym_mixnode_noise_failures_total",
                &[("role", role.as_str()), ("reason", failure.as_str())],
                noise.failures_of(role, failure),
            );
        }
    }
    o.per_shard(
        "nym_mixnode_replay_filter_items",
        "gauge",
        "Replay tags the shard's filter of the primary key remembers now (both generations).",
        shards,
        |s| s.replay_filter_items,
    );
    o.per_shard(
        "nym_mixnode_replay_filter_capacity_items",
        "gauge",
        "Replay tags each generation of the shard's filter of the primary key is sized for: the most recent this many of the key's packets are always remembered.",
        shards,
        |s| s.replay_filter_capacity,
    );
    o.per_shard(
        "nym_mixnode_replay_filter_generations_turned_total",
        "counter",
        "Times the shard's replay filter cleared its older generation to make room.",
        shards,
        |s| s.replay_filter_generations_turned,
    );
    o.family(
        "nym_mixnode_replay_filter_fill_ratio",
        "gauge",
        "Fraction of the bits set in the replay filter's current generation.",
    );
    for (i, s) in shards.iter().enumerate() {
        o.sample(
            "nym_mixnode_replay_filter_fill_ratio",
            &[("shard", &i.to_string())],
            s.replay_filter_fill_ppm as f64 / 1e6,
        );
    }

    if let Some(first) = shards.first() {
        let live: Vec<_> = first.keys.iter().filter(|k| k.live).collect();
        let primary = live
            .iter()
            .find(|k| k.primary)
            .map(|k| k.rotation_id)
            .unwrap_or(0);
        o.family(
            "nym_mixnode_sphinx_key_rotation_id",
            "gauge",
            "Rotation id of the primary Sphinx key (0 for one static key, rotation.mode = \"off\").",
        );
        o.sample(
            "nym_mixnode_sphinx_key_rotation_id",
            &[],
            u64::from(primary),
        );
        o.family(
            "nym_mixnode_sphinx_keys_live",
            "gauge",
            "Sphinx keys live, by rotation id and state (primary, secondary: the previous rotation's during its overlap epoch, pre_announced: the next rotation's).",
        );
        for key in &live {
            let state = if key.primary {
                "primary"
            } else if key.rotation_id < primary {
                "secondary"
            } else {
                "pre_announced"
            };
            o.sample(
                "nym_mixnode_sphinx_keys_live",
                &[
                    ("rotation_id", &key.rotation_id.to_string()),
                    ("state", state),
                ],
                1u64,
            );
        }
        o.family(
            "nym_mixnode_replay_filter_key_fill_ratio",
            "gauge",
            "Fraction of the bits set in the current generation of each live key's replay filter, per shard.",
        );
        for (i, s) in shards.iter().enumerate() {
            for key in s.keys.iter().filter(|k| k.live) {
                o.sample(
                    "nym_mixnode_replay_filter_key_fill_ratio",
                    &[
                        ("shard", &i.to_string()),
                        ("rotation_id", &key.rotation_id.to_string()),
                    ],
                    key.filter_fill_ppm as f64 / 1e6,
                );
            }
        }
        o.family(
            "nym_mixnode_replay_filter_key_items",
            "gauge",
            "Replay tags each live key's filter remembers now, per shard.",
        );
        for (i, s) in shards.iter().enumerate() {
            for key in s.keys.iter().filter(|k| k.live) {
                o.sample(
                    "nym_mixnode_replay_filter_key_items",
                    &[
                        ("shard", &i.to_string()),
                        ("rotation_id", &key.rotation_id.to_string()),
                    ],
                    key.filter_items,
                );
            }
        }
    }

    let t = input.telemetry;
    o.histogram(
        "nym_mixnode_sphinx_processing_seconds",
        "Sphinx processing time per packet: stage expand (parse, first scalar multiplication) and unwrap (replay check, MAC, second multiplication).",
        &[
            (&[("stage", "expand")], &t.sphinx_expand_nanos),
            (&[("stage", "unwrap")], &t.sphinx_unwrap_nanos),
        ],
        &PROCESSING_BUCKETS_SECONDS,
    );
    o.histogram(
        "nym_mixnode_added_latency_seconds",
        "Time a forwarded packet spent in the node beyond the delay it asked for.",
        &[(&[], &t.added_latency_nanos)],
        &LATENCY_BUCKETS_SECONDS,
    );
    o.family(
        "nym_mixnode_telemetry_reports_skipped_total",
        "counter",
        "Shard telemetry reports not sent because the channel to the control thread was full.",
    );
    for (i, skipped) in t.reports_skipped.iter().enumerate() {
        o.sample(
            "nym_mixnode_telemetry_reports_skipped_total",
            &[("shard", &i.to_string())],
            skipped,
        );
    }

    let server = input.server;
    o.family(
        "nym_mixnode_http_requests_total",
        "counter",
        "HTTP API requests answered, by status code.",
    );
    for (code, count) in server.answered() {
        o.sample(
            "nym_mixnode_http_requests_total",
            &[("code", &code.to_string())],
            count,
        );
    }
    o.family(
        "nym_mixnode_http_connections_busy_total",
        "counter",
        "HTTP API connections turned away with 503 because every worker and queue slot was taken.",
    );
    o.sample("nym_mixnode_http_connections_busy_total", &[], server.busy);
    o.family(
        "nym_mixnode_http_connections_refused_per_ip_total",
        "counter",
        "HTTP connections kept from the workers because their address had http.connections_per_ip_max there already (health checks among them are still answered).",
    );
    o.sample(
        "nym_mixnode_http_connections_refused_per_ip_total",
        &[],
        server.refused_per_ip,
    );
    o.family(
        "nym_mixnode_http_connections_evicted_total",
        "counter",
        "HTTP connections shut while still sending their request head after 1 s, to free a worker for new connections.",
    );
    o.sample(
        "nym_mixnode_http_connections_evicted_total",
        &[],
        server.evicted,
    );
    o.text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::telemetry::new_histogram;

    #[test]
    fn buckets_are_cumulative_and_sum_in_seconds() {
        let mut h = new_histogram();
        h.record(20_000).unwrap(); // 20 µs
        h.record(150_000).unwrap(); // 150 µs
        h.record(2_000_000).unwrap(); // 2 ms
        let (counts, sum) = buckets(&h, &[0.000_05, 0.001, 1.0]);
        assert_eq!(counts, vec![1, 2, 3]);
        assert!((sum - 0.002_17).abs() < 0.000_05, "sum {sum}");
    }

    #[test]
    fn exposition_has_every_family_once() {
        let telemetry = Telemetry {
            sphinx_expand_nanos: new_histogram(),
            sphinx_unwrap_nanos: new_histogram(),
            added_latency_nanos: new_histogram(),
            reports_skipped: vec![0, 0],
        };
        let mut shard = ShardSnapshot::default();
        shard.counts.packets.received = 7;
        shard.counts.packets.dropped[DropReason::Replay as usize] = 2;
        let text = render(&MetricsInput {
            version: "1.2.3",
            uptime_seconds: 1.5,
            shards: &[shard, ShardSnapshot::default()],
            telemetry: &telemetry,
            server: &ServerCounts::default(),
            process: ProcessFigures::read(std::time::SystemTime::now()),
            verloc: None,
            outbound: &[],
            monitor: None,
        });
        assert!(text.contains("nym_mixnode_packets_received_total{shard=\"0\"} 7\n"));
        assert!(
            text.contains("nym_mixnode_packets_dropped_total{shard=\"0\",reason=\"replay\"} 2\n")
        );
        assert!(text.contains(
            "nym_mixnode_sphinx_processing_seconds_bucket{stage=\"unwrap\",le=\"+Inf\"} 0\n"
        ));
        assert!(text.contains("nym_mixnode_build_info{version=\"1.2.3\"} 1\n"));
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let mut names: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("# TYPE"))
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), types, "no family declared twice");
    }
}
