//! What the control thread gathers between requests, as pure state with time passed in:
//! the `/stats` window (previous and current totals, swapped every `stats_interval`), the
//! latest telemetry report of each shard, and a bounded history for the live chart.
//!
//! Nothing here reads a clock or a socket; the driver in [`super`] calls [`Collector::tick`]
//! with `now` and the shards' published snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use crate::accounting::DropReason;
use crate::shard::stats::{self, ShardSnapshot};
use crate::shard::telemetry::{new_histogram, TelemetryReport};

/// How often the chart history takes a point.
pub const HISTORY_INTERVAL: Duration = Duration::from_secs(1);
/// Points the chart history keeps (5 minutes at one a second).
pub const HISTORY_POINTS_MAX: usize = 300;
/// Shards whose telemetry is kept; reports from a higher index are ignored (a bug elsewhere).
pub const SHARDS_MAX: usize = 1024;

/// Totals at one `/stats` update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsPoint {
    /// When the point was taken.
    pub time: SystemTime,
    /// Packets received since startup.
    pub received: u64,
    /// Packets forwarded since startup.
    pub sent: u64,
    /// Packets dropped since startup, whatever the reason.
    pub dropped: u64,
    /// Packets forwarded since startup, by next hop (`ip:port`).
    pub sent_by_next_hop: BTreeMap<String, u64>,
    /// Packets dropped since startup after their next hop was known, by next hop.
    pub dropped_by_next_hop: BTreeMap<String, u64>,
}

impl StatsPoint {
    /// A point of zeros at `time` (the start).
    pub fn zero(time: SystemTime) -> StatsPoint {
        StatsPoint {
            time,
            received: 0,
            sent: 0,
            dropped: 0,
            sent_by_next_hop: BTreeMap::new(),
            dropped_by_next_hop: BTreeMap::new(),
        }
    }
}

/// The `/stats` window: the previous and the current point, swapped every interval.
#[derive(Clone, Debug)]
pub struct StatsWindow {
    interval: Duration,
    next_update: Instant,
    /// The point before the last update.
    pub previous: StatsPoint,
    /// The point of the last update.
    pub current: StatsPoint,
}

impl StatsWindow {
    /// A window that starts with two zero points at `wall` and updates every `interval`.
    pub fn new(interval: Duration, now: Instant, wall: SystemTime) -> StatsWindow {
        StatsWindow {
            interval: interval.max(Duration::from_millis(1)),
            next_update: now + interval,
            previous: StatsPoint::zero(wall),
            current: StatsPoint::zero(wall),
        }
    }

    /// If an update is due at `now`, take `sample()` as the new current point. Whether it
    /// updated.
    pub fn tick(&mut self, now: Instant, sample: impl FnOnce() -> StatsPoint) -> bool {
        if now < self.next_update {
            return false;
        }
        self.previous = std::mem::replace(&mut self.current, sample());
        self.next_update += self.interval;
        if self.next_update <= now {
            // Far behind (the thread was starved): do not catch up in a burst.
            self.next_update = now + self.interval;
        }
        true
    }

    /// The `/stats` body; with `debug`, sent and dropped fields are maps by next hop.
    pub fn render(&self, debug: bool) -> serde_json::Value {
        let (p, c) = (&self.previous, &self.current);
        let since = |now: u64, before: u64| now.saturating_sub(before);
        let mut body = serde_json::json!({
            "update_time": rfc3339(c.time),
            "previous_update_time": rfc3339(p.time),
            "packets_received_since_startup": c.received,
            "packets_received_since_last_update": since(c.received, p.received),
        });
        let fields: [(&str, serde_json::Value, serde_json::Value); 2] = if debug {
            [
                (
                    "sent",
                    map_json(&c.sent_by_next_hop),
                    map_json(&map_since(&c.sent_by_next_hop, &p.sent_by_next_hop)),
                ),
                (
                    "explicitly_dropped",
                    map_json(&c.dropped_by_next_hop),
                    map_json(&map_since(&c.dropped_by_next_hop, &p.dropped_by_next_hop)),
                ),
            ]
        } else {
            [
                ("sent", c.sent.into(), since(c.sent, p.sent).into()),
                (
                    "explicitly_dropped",
                    c.dropped.into(),
                    since(c.dropped, p.dropped).into(),
                ),
            ]
        };
        for (name, startup, last) in fields {
            body[format!("packets_{name}_since_startup")] = startup;
            body[format!("packets_{name}_since_last_update")] = last;
        }
        body
    }
}

fn map_since(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .collect()
}

fn map_json(map: &BTreeMap<String, u64>) -> serde_json::Value {
    serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), (*v).into())).collect())
}

/// RFC 3339 text of `time` in UTC.
pub fn rfc3339(time: SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One point of the chart history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPoint {
    /// Time since the collector started, in milliseconds.
    pub at_ms: u64,
    /// Packets received so far, per shard.
    pub received: Vec<u64>,
    /// Packets forwarded so far, per shard.
    pub forwarded: Vec<u64>,
    /// Packets dropped so far, all shards, by reason.
    pub dropped: [u64; DropReason::COUNT],
}

/// The shards' latest telemetry, merged.
#[derive(Clone, Debug)]
pub struct Telemetry {
    /// Sphinx processing, first half (parse, first scalar multiplication), nanoseconds.
    pub sphinx_expand_nanos: Histogram<u64>,
    /// Sphinx processing, second half (replay check, MAC, unwrap), nanoseconds.
    pub sphinx_unwrap_nanos: Histogram<u64>,
    /// Time in the node beyond the requested delay, nanoseconds.
    pub added_latency_nanos: Histogram<u64>,
    /// Reports skipped by each shard because the channel was full.
    pub reports_skipped: Vec<u64>,
}

/// The control thread's gathered state; the driver publishes clones for the request
/// handlers.
#[derive(Clone, Debug)]
pub struct Collector {
    started: Instant,
    next_history: Instant,
    /// The `/stats` window.
    pub stats: StatsWindow,
    /// The latest report of each shard (index = shard).
    reports: Vec<Option<TelemetryReport>>,
    /// The chart history, oldest first, at most [`HISTORY_POINTS_MAX`] points.
    pub history: VecDeque<HistoryPoint>,
    /// Merged telemetry, rebuilt when a report arrives.
    pub telemetry: Telemetry,
}

impl Collector {
    /// A collector started at `now` (`wall` in calendar time), with `/stats` updated every
    /// `stats_interval`.
    pub fn new(stats_interval: Duration, now: Instant, wall: SystemTime) -> Collector {
        Collector {
            started: now,
            next_history: now,
            stats: StatsWindow::new(stats_interval, now, wall),
            reports: Vec::new(),
            history: VecDeque::with_capacity(HISTORY_POINTS_MAX),
            telemetry: Telemetry {
                sphinx_expand_nanos: new_histogram(),
                sphinx_unwrap_nanos: new_histogram(),
                added_latency_nanos: new_histogram(),
                reports_skipped: Vec::new(),
            },
        }
    }

    /// Keep `report` as its shard's latest.
    pub fn on_report(&mut self, report: TelemetryReport) {
        if report.shard >= SHARDS_MAX {
            return;
        }
        if self.reports.len() <= report.shard {
            self.reports.resize(report.shard + 1, None);
        }
        let shard = report.shard;
        self.reports[shard] = Some(report);
        self.merge();
    }

    fn merge(&mut self) {
        let t = &mut self.telemetry;
        t.sphinx_expand_nanos.reset();
        t.sphinx_unwrap_nanos.reset();
        t.added_latency_nanos.reset();
        t.reports_skipped.clear();
        for report in self.reports.iter() {
            let Some(r) = report else {
                t.reports_skipped.push(0);
                continue;
            };
            // Same bounds on both sides: adding cannot fail.
            let _ = t.sphinx_expand_nanos.add(&r.sphinx_expand_nanos);
            let _ = t.sphinx_unwrap_nanos.add(&r.sphinx_unwrap_nanos);
            let _ = t.added_latency_nanos.add(&r.added_latency_nanos);
            t.reports_skipped.push(r.reports_skipped);
        }
    }

    /// Per-next-hop (sent, dropped) counts from the latest reports.
    pub fn by_next_hop(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let mut sent = BTreeMap::new();
        let mut dropped = BTreeMap::new();
        for r in self.reports.iter().flatten() {
            for p in &r.peers {
                *sent.entry(p.next_hop.to_string()).or_insert(0) += p.sent;
                *dropped.entry(p.next_hop.to_string()).or_insert(0) += p.dropped;
            }
        }
        (sent, dropped)
    }

    /// Advance to `now`: update `/stats` when due and take a history point when due. Whether
    /// anything changed.
    pub fn tick(&mut self, now: Instant, wall: SystemTime, snapshots: &[ShardSnapshot]) -> bool {
        let mut changed = false;
        if now >= self.next_history {
            self.next_history = (self.next_history + HISTORY_INTERVAL).max(now);
            if self.history.len() == HISTORY_POINTS_MAX {
                self.history.pop_front();
            }
            let total = stats::total(snapshots);
            self.history.push_back(HistoryPoint {
                at_ms: now.duration_since(self.started).as_millis() as u64,
                received: snapshots
                    .iter()
                    .map(|s| s.counts.packets.received)
                    .collect(),
                forwarded: snapshots
                    .iter()
                    .map(|s| s.counts.packets.forwarded)
                    .collect(),
                dropped: total.dropped,
            });
            changed = true;
        }
        let (sent_by_next_hop, dropped_by_next_hop) = self.by_next_hop();
        changed |= self.stats.tick(now, || {
            let total = stats::total(snapshots);
            StatsPoint {
                time: wall,
                received: total.received,
                sent: total.forwarded,
                dropped: total.dropped_total(),
                sent_by_next_hop,
                dropped_by_next_hop,
            }
        });
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::telemetry::PeerCounts;

    fn snapshot(received: u64, forwarded: u64, replays: u64) -> ShardSnapshot {
        let mut s = ShardSnapshot::default();
        s.counts.packets.received = received;
        s.counts.packets.forwarded = forwarded;
        s.counts.packets.dropped[DropReason::Replay as usize] = replays;
        s
    }

    #[test]
    fn stats_swap_on_the_interval_with_a_virtual_clock() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut c = Collector::new(Duration::from_secs(30), t0, wall);
        let body = c.stats.render(false);
        assert_eq!(body["packets_received_since_startup"], 0);
        assert_eq!(body["update_time"], body["previous_update_time"]);

        // Before the interval: nothing changes in /stats.
        c.tick(t0 + Duration::from_secs(10), wall, &[snapshot(5, 3, 1)]);
        assert_eq!(c.stats.render(false)["packets_received_since_startup"], 0);

        let w1 = wall + Duration::from_secs(30);
        c.tick(
            t0 + Duration::from_secs(30),
            w1,
            &[snapshot(10, 6, 2), snapshot(1, 0, 1)],
        );
        let body = c.stats.render(false);
        assert_eq!(body["packets_received_since_startup"], 11);
        assert_eq!(body["packets_sent_since_startup"], 6);
        assert_eq!(body["packets_explicitly_dropped_since_startup"], 3);
        assert_eq!(body["packets_explicitly_dropped_since_last_update"], 3);
        assert_eq!(body["update_time"], "2023-11-14T22:13:50Z");
        assert_eq!(body["previous_update_time"], "2023-11-14T22:13:20Z");

        let w2 = wall + Duration::from_secs(60);
        c.tick(
            t0 + Duration::from_secs(60),
            w2,
            &[snapshot(20, 16, 7), snapshot(1, 0, 1)],
        );
        let body = c.stats.render(false);
        assert_eq!(body["packets_received_since_startup"], 21);
        assert_eq!(body["packets_received_since_last_update"], 10);
        assert_eq!(
            body["packets_explicitly_dropped_since_startup"], 8,
            "dropped since startup grows"
        );
        assert_eq!(body["packets_explicitly_dropped_since_last_update"], 5);
        assert_eq!(body["previous_update_time"], "2023-11-14T22:13:50Z");
    }

    #[test]
    fn debug_stats_are_maps_by_next_hop() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let mut c = Collector::new(Duration::from_secs(1), t0, wall);
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let mut t = crate::shard::telemetry::ShardTelemetry::new(1, tx, t0);
        t.record_unwrap(Duration::from_micros(150));
        let hop: std::net::SocketAddr = "10.0.0.1:1789".parse().unwrap();
        let report = TelemetryReport {
            shard: 1,
            sphinx_expand_nanos: new_histogram(),
            sphinx_unwrap_nanos: {
                let mut h = new_histogram();
                h.record(150_000).unwrap();
                h
            },
            added_latency_nanos: new_histogram(),
            peers: vec![PeerCounts {
                next_hop: hop,
                sent: 4,
                dropped: 1,
            }],
            reports_skipped: 2,
        };
        c.on_report(report);
        assert_eq!(c.telemetry.sphinx_unwrap_nanos.len(), 1);
        assert_eq!(c.telemetry.reports_skipped, vec![0, 2]);
        c.tick(t0 + Duration::from_secs(1), wall, &[]);
        let body = c.stats.render(true);
        assert_eq!(body["packets_sent_since_startup"]["10.0.0.1:1789"], 4);
        assert_eq!(
            body["packets_explicitly_dropped_since_last_update"]["10.0.0.1:1789"],
            1
        );
        assert!(body["packets_received_since_startup"].is_u64());
    }

    #[test]
    fn history_is_bounded() {
        let t0 = Instant::now();
        let mut c = Collector::new(Duration::from_secs(30), t0, SystemTime::UNIX_EPOCH);
        for i in 0..(HISTORY_POINTS_MAX as u64 + 50) {
            c.tick(
                t0 + HISTORY_INTERVAL * i as u32,
                SystemTime::UNIX_EPOCH,
                &[snapshot(i, 0, 0)],
            );
        }
        assert_eq!(c.history.len(), HISTORY_POINTS_MAX);
        assert_eq!(
            c.history.back().unwrap().received,
            vec![HISTORY_POINTS_MAX as u64 + 49]
        );
    }
}
