//! Per-shard figures that the atomic counters of [`super::stats`] cannot carry: latency
//! histograms and per-next-hop counts.
//!
//! A shard records into the [`ShardTelemetry`] it owns (single-threaded: no lock, and no
//! allocation per packet: histograms are sized at start) and, about once per
//! [`REPORT_INTERVAL`], sends a copy ([`TelemetryReport`]) to the control thread over a
//! bounded channel with `try_send`. Reports are cumulative since start, so a report skipped
//! because the channel was full (counted in `reports_skipped`) loses nothing: the next one
//! carries it.
//!
//! What it does not do: aggregate across shards or render anything (see [`crate::http`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use hdrhistogram::Histogram;

/// How often a shard sends its report.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Reports waiting in the channel per shard; the channel holds this many times the shards.
pub const REPORTS_QUEUED_PER_SHARD_MAX: usize = 4;
/// Largest value a histogram records, in nanoseconds (100 s); larger values count as this.
pub const HISTOGRAM_NANOS_MAX: u64 = 100_000_000_000;
/// Precision of the histograms: 2 significant figures, i.e. within 1%.
pub const HISTOGRAM_SIGNIFICANT_FIGURES: u8 = 2;

/// Cumulative counts for one next hop owned by a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCounts {
    /// The next hop.
    pub next_hop: SocketAddr,
    /// Packets written to it.
    pub sent: u64,
    /// Packets dropped once this next hop was known: its queue was full, it was unreachable,
    /// a write to it failed, or the node shut down with them queued.
    pub dropped: u64,
}

/// A copy of one shard's telemetry, cumulative since the shard started.
#[derive(Clone, Debug)]
pub struct TelemetryReport {
    /// The shard that sent it.
    pub shard: usize,
    /// Time of the first half of Sphinx processing (parse and the first scalar
    /// multiplication), in nanoseconds.
    pub sphinx_expand_nanos: Histogram<u64>,
    /// Time of the second half (replay check, MAC, unwrap with the second multiplication).
    pub sphinx_unwrap_nanos: Histogram<u64>,
    /// Time a forwarded packet spent in the node beyond the delay it asked for: from its due
    /// time to the end of the write to its next hop.
    pub added_latency_nanos: Histogram<u64>,
    /// Per-next-hop counts of the next hops this shard owns (at most its share of
    /// `engine.next_hops_max`).
    pub peers: Vec<PeerCounts>,
    /// Reports this shard could not send because the channel was full.
    pub reports_skipped: u64,
}

/// One shard's telemetry, owned by the shard.
pub struct ShardTelemetry {
    shard: usize,
    sphinx_expand_nanos: Histogram<u64>,
    sphinx_unwrap_nanos: Histogram<u64>,
    added_latency_nanos: Histogram<u64>,
    next_report: Instant,
    reports_skipped: u64,
    sender: Sender<TelemetryReport>,
}

/// An empty histogram of the shape every shard uses.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; a failure here is a bug of ours.
    Histogram::new_with_bounds(1, HISTOGRAM_NANOS_MAX, HISTOGRAM_SIGNIFICANT_FIGURES)
        .expect("histogram bounds are valid constants")
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(nanos.clamp(1, HISTOGRAM_NANOS_MAX));
}

impl ShardTelemetry {
    /// Telemetry for `shard`, reporting to `sender`; the first report is due one interval
    /// after `now`.
    pub fn new(shard: usize, sender: Sender<TelemetryReport>, now: Instant) -> ShardTelemetry {
        ShardTelemetry {
            shard,
            sphinx_expand_nanos: new_histogram(),
            sphinx_unwrap_nanos: new_histogram(),
            added_latency_nanos: new_histogram(),
            next_report: now + REPORT_INTERVAL,
            reports_skipped: 0,
            sender,
        }
    }

    /// Record the first half of Sphinx processing.
    pub fn record_expand(&mut self, elapsed: Duration) {
        record(&mut self.sphinx_expand_nanos, elapsed);
    }

    /// Record the second half of Sphinx processing.
    pub fn record_unwrap(&mut self, elapsed: Duration) {
        record(&mut self.sphinx_unwrap_nanos, elapsed);
    }

    /// Record the time a forwarded packet spent past its due time.
    pub fn record_added_latency(&mut self, past_due: Duration) {
        record(&mut self.added_latency_nanos, past_due);
    }

    /// Whether a report is due at `now`.
    pub fn report_due(&self, now: Instant) -> bool {
        now >= self.next_report
    }

    /// Send a report with `peers` (only call when [`Self::report_due`]). Never blocks.
    pub fn send_report(&mut self, now: Instant, peers: Vec<PeerCounts>) {
        self.next_report = now + REPORT_INTERVAL;
        let report = TelemetryReport {
            shard: self.shard,
            sphinx_expand_nanos: self.sphinx_expand_nanos.clone(),
            sphinx_unwrap_nanos: self.sphinx_unwrap_nanos.clone(),
            added_latency_nanos: self.added_latency_nanos.clone(),
            peers,
            reports_skipped: self.reports_skipped,
        };
        match self.sender.try_send(report) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.reports_skipped += 1
            }
        }
    }
}

impl super::core::Timings for ShardTelemetry {
    fn expand(&mut self, elapsed: Duration) {
        self.record_expand(elapsed);
    }
    fn unwrap(&mut self, elapsed: Duration) {
        self.record_unwrap(elapsed);
    }
    fn added_latency(&mut self, past_due: Duration) {
        self.record_added_latency(past_due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_cumulative_and_a_full_channel_is_counted() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let start = Instant::now();
        let mut t = ShardTelemetry::new(3, tx, start);
        assert!(!t.report_due(start));
        t.record_expand(Duration::from_micros(100));
        t.record_added_latency(Duration::from_secs(1000));
        let later = start + REPORT_INTERVAL;
        assert!(t.report_due(later));
        t.send_report(later, Vec::new());
        assert!(!t.report_due(later));
        t.record_expand(Duration::from_micros(200));
        t.send_report(later + REPORT_INTERVAL, Vec::new());
        let first = rx.try_recv().unwrap();
        assert_eq!(first.shard, 3);
        assert_eq!(first.sphinx_expand_nanos.len(), 1);
        assert_eq!(
            first.added_latency_nanos.max(),
            first
                .added_latency_nanos
                .highest_equivalent(HISTOGRAM_NANOS_MAX)
        );
        assert!(
            rx.try_recv().is_err(),
            "the second report found the channel full"
        );
        t.send_report(later + 2 * REPORT_INTERVAL, Vec::new());
        let third = rx.try_recv().unwrap();
        assert_eq!(third.sphinx_expand_nanos.len(), 2, "cumulative");
        assert_eq!(third.reports_skipped, 1);
    }
}
