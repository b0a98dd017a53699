//! The periodic summary line: packets received, forwarded and dropped (by reason) since the
//! last line and in total, plus the connection events that a limit refused.
//!
//! [`Summary::between`] is pure (two sets of totals in, one summary out); [`Summarizer`] keeps
//! the previous totals and logs one line per call.

use std::fmt::Write;

use crate::accounting::{DropReason, PacketCounts};
use crate::shard::stats::{self, ShardSnapshot};

/// Whole-node totals read from the shards' snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Packet counters summed over shards.
    pub packets: PacketCounts,
    /// Inbound connections refused at `engine.connections_inbound_max`.
    pub connections_refused: u64,
    /// Accepts that failed (out of descriptors, most often).
    pub accept_errors: u64,
}

impl Totals {
    /// Sum the shards' figures.
    pub fn of(snapshots: &[ShardSnapshot]) -> Totals {
        Totals {
            packets: stats::total(snapshots),
            connections_refused: snapshots.iter().map(|s| s.connections_refused).sum(),
            accept_errors: snapshots.iter().map(|s| s.accept_errors).sum(),
        }
    }
}

/// One summary: the change since the previous totals, and the totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Change since the previous line.
    pub interval: Totals,
    /// Since start.
    pub total: Totals,
}

impl Summary {
    /// The summary from `previous` to `now`. Counters only grow; a smaller value (which would be
    /// our bug) reads as zero rather than wrapping.
    pub fn between(previous: &Totals, now: &Totals) -> Summary {
        let mut dropped = [0u64; DropReason::COUNT];
        for (i, slot) in dropped.iter_mut().enumerate() {
            *slot = now.packets.dropped[i].saturating_sub(previous.packets.dropped[i]);
        }
        Summary {
            interval: Totals {
                packets: PacketCounts {
                    received: now
                        .packets
                        .received
                        .saturating_sub(previous.packets.received),
                    forwarded: now
                        .packets
                        .forwarded
                        .saturating_sub(previous.packets.forwarded),
                    dropped,
                    looped: now.packets.looped.saturating_sub(previous.packets.looped),
                },
                connections_refused: now
                    .connections_refused
                    .saturating_sub(previous.connections_refused),
                accept_errors: now.accept_errors.saturating_sub(previous.accept_errors),
            },
            total: *now,
        }
    }
}

/// Drops by reason as `reason=count` pairs separated by spaces, non-zero reasons only; `none`
/// when nothing was dropped.
pub fn drops_by_reason(counts: &PacketCounts) -> String {
    let mut out = String::new();
    for reason in DropReason::ALL {
        let count = counts.dropped[reason as usize];
        if count > 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{}={count}", reason.label());
        }
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

/// Keeps the totals of the previous line.
#[derive(Debug, Default)]
pub struct Summarizer {
    previous: Totals,
}

impl Summarizer {
    /// Log one summary line for `snapshots`, and remember them for the next.
    pub fn log(&mut self, snapshots: &[ShardSnapshot]) -> Summary {
        let now = Totals::of(snapshots);
        let summary = Summary::between(&self.previous, &now);
        self.previous = now;
        let (i, t) = (&summary.interval, &summary.total);
        tracing::info!(
            received = i.packets.received,
            forwarded = i.packets.forwarded,
            dropped = i.packets.dropped_total(),
            dropped_by_reason = %drops_by_reason(&i.packets),
            looped = i.packets.looped,
            connections_refused = i.connections_refused,
            accept_errors = i.accept_errors,
            total_received = t.packets.received,
            total_forwarded = t.packets.forwarded,
            total_dropped = t.packets.dropped_total(),
            total_looped = t.packets.looped,
            "packets mixed since the last summary"
        );
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(received: u64, forwarded: u64, drops: &[(DropReason, u64)]) -> Totals {
        let mut packets = PacketCounts {
            received,
            forwarded,
            ..PacketCounts::default()
        };
        for &(reason, n) in drops {
            packets.dropped[reason as usize] = n;
        }
        Totals {
            packets,
            connections_refused: 0,
            accept_errors: 0,
        }
    }

    #[test]
    fn interval_is_the_difference_and_total_the_latest() {
        let a = totals(100, 90, &[(DropReason::Replay, 4)]);
        let mut b = totals(
            250,
            230,
            &[(DropReason::Replay, 6), (DropReason::NextHopQueueFull, 3)],
        );
        b.accept_errors = 7;
        let s = Summary::between(&a, &b);
        assert_eq!(s.interval.packets.received, 150);
        assert_eq!(s.interval.packets.forwarded, 140);
        assert_eq!(s.interval.packets.dropped[DropReason::Replay as usize], 2);
        assert_eq!(
            s.interval.packets.dropped[DropReason::NextHopQueueFull as usize],
            3
        );
        assert_eq!(s.interval.accept_errors, 7);
        assert_eq!(s.total, b);
    }

    #[test]
    fn drops_list_only_nonzero_reasons() {
        let t = totals(0, 0, &[(DropReason::Replay, 2), (DropReason::Shutdown, 1)]);
        assert_eq!(drops_by_reason(&t.packets), "replay=2 shutdown=1");
        assert_eq!(drops_by_reason(&PacketCounts::default()), "none");
    }

    #[test]
    fn summarizer_starts_from_zero_and_remembers() {
        let mut s = Summarizer::default();
        let mut snap = ShardSnapshot::default();
        snap.counts.packets.received = 10;
        assert_eq!(s.log(&[snap]).interval.packets.received, 10);
        snap.counts.packets.received = 15;
        assert_eq!(s.log(&[snap, snap]).interval.packets.received, 20);
    }
}
