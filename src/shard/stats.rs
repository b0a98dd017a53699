//! Per-shard figures published for the control thread.
//!
//! Each shard is the only writer of its own [`ShardStats`]; it publishes its figures after
//! each round of work, between two calls into its core, when its counters and gauges agree.
//! A sequence number makes each publication whole (a seqlock): a reader that overlaps a
//! publication reads again, so it sees one publication's figures, never a mix of two. That is
//! what lets a reader check each shard's balance exactly at any moment. Readers may still see
//! one shard a round behind another.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::accounting::{DropReason, PacketCounts};
use crate::noise::NoiseCounts;

/// Counters and gauges of one shard.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Odd while a publication is being written.
    sequence: AtomicU64,
    received: AtomicU64,
    forwarded: AtomicU64,
    looped: AtomicU64,
    dropped: [AtomicU64; DropReason::COUNT],
    handed_off: AtomicU64,
    taken_over: AtomicU64,
    held: AtomicU64,
    queued: AtomicU64,
    writing: AtomicU64,
    crossing: AtomicU64,
    next_hops: AtomicU64,
    next_hops_opened: AtomicU64,
    next_hops_evicted: AtomicU64,
    next_hops_forgotten_idle: AtomicU64,
    next_hops_forgotten_failing: AtomicU64,
    delays_clamped: AtomicU64,
    connections_inbound: AtomicU64,
    connections_outbound: AtomicU64,
    connections_refused: AtomicU64,
    accept_errors: AtomicU64,
    read_timeouts: AtomicU64,
    bytes_held: AtomicU64,
    inbox_bytes: AtomicU64,
    known_addresses: AtomicU64,
    connections_known: AtomicU64,
    connections_evicted: AtomicU64,
    connections_closed_idle: AtomicU64,
    connections_closed_first_frame: AtomicU64,
    replay_filter_items: AtomicU64,
    replay_filter_capacity: AtomicU64,
    replay_filter_fill_ppm: AtomicU64,
    replay_filter_generations_turned: AtomicU64,
    keys: [[AtomicU64; KEY_FIGURES]; 2],
    noise: [AtomicU64; NoiseCounts::WORDS],
    doorbells_rung: AtomicU64,
    handoff_batches: AtomicU64,
    /// Pump rounds so far: the shard's sign of life (written by the shard, read by the
    /// watchdog; outside the seqlock).
    heartbeat: AtomicU64,
    /// Set by the shard when its pump has ended (a stopped shard is not stalled).
    ended: std::sync::atomic::AtomicBool,
    /// Stalls the watchdog saw, and whether one is under way (written by the watchdog).
    stalls: AtomicU64,
    stalled: std::sync::atomic::AtomicBool,
    /// The kernel's count of the shard thread's system calls, where it may be counted (set
    /// once by the shard's thread at start; read by whoever takes a snapshot).
    syscalls: std::sync::OnceLock<super::syscalls::SyscallCounter>,
}

/// Figures of one live key, as published ([`ShardSnapshot::keys`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyFigures {
    /// Whether a key is live in this slot.
    pub live: bool,
    /// Its rotation id.
    pub rotation_id: u32,
    /// Whether it is the primary key.
    pub primary: bool,
    /// Tags in its filter's generations.
    pub filter_items: u64,
    /// Tags its filter's generation is sized for (this shard's share).
    pub filter_capacity: u64,
    /// Its filter's current generation's fill, in parts per million.
    pub filter_fill_ppm: u64,
}

const KEY_FIGURES: usize = 5;

impl KeyFigures {
    fn to_words(self) -> [u64; KEY_FIGURES] {
        [
            u64::from(self.live) | (u64::from(self.primary) << 1),
            u64::from(self.rotation_id),
            self.filter_items,
            self.filter_capacity,
            self.filter_fill_ppm,
        ]
    }

    fn from_words(words: [u64; KEY_FIGURES]) -> KeyFigures {
        KeyFigures {
            live: words[0] & 1 != 0,
            primary: words[0] & 2 != 0,
            rotation_id: words[1] as u32,
            filter_items: words[2],
            filter_capacity: words[3],
            filter_fill_ppm: words[4],
        }
    }
}

/// A copy of one shard's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Packet counters, with the cross-shard handoffs.
    pub counts: ShardCounts,
    /// Packets in this shard's delay wheel.
    pub held: u64,
    /// Packets in this shard's next-hop queues.
    pub queued: u64,
    /// Packets handed to writes to next hops now under way.
    pub writing: u64,
    /// Packets waiting in this shard for a batch to another shard.
    pub crossing: u64,
    /// Entries in this shard's next-hop table.
    pub next_hops: u64,
    /// Next-hop entries made.
    pub next_hops_opened: u64,
    /// Quiet next-hop entries forgotten to make room for a new next hop.
    pub next_hops_evicted: u64,
    /// Next-hop entries closed and forgotten after `engine.next_hop_idle_timeout`.
    pub next_hops_forgotten_idle: u64,
    /// Next-hop entries forgotten after `engine.next_hop_failures_max` failures in a row.
    pub next_hops_forgotten_failing: u64,
    /// Packets that asked for more than `engine.delay_max` and were held for the cap.
    pub delays_clamped: u64,
    /// Inbound connections open.
    pub connections_inbound: u64,
    /// Outbound connections open.
    pub connections_outbound: u64,
    /// Inbound connections refused because the limit was reached.
    pub connections_refused: u64,
    /// Accepts that failed (out of descriptors, most often); the loop backs off and goes on.
    pub accept_errors: u64,
    /// Inbound connections closed because they stalled mid-frame.
    pub read_timeouts: u64,
    /// Bytes of the packets in the wheel, the queues and the writes under way.
    pub bytes_held: u64,
    /// Bytes of the packets in the cross-shard channel towards this shard.
    pub inbox_bytes: u64,
    /// Addresses of known nodes the shard checks next hops and inbound room against (0: no
    /// topology, or `forward_to = "any"` with no topology).
    pub known_addresses: u64,
    /// Inbound connections open from known nodes' addresses.
    pub connections_known: u64,
    /// Inbound connections closed to make room for a new one (the longest without a frame).
    pub connections_evicted: u64,
    /// Inbound connections closed after `engine.connection_idle_timeout` without a frame.
    pub connections_closed_idle: u64,
    /// Inbound connections closed without a whole first frame within
    /// `engine.first_frame_timeout`.
    pub connections_closed_first_frame: u64,
    /// Tags this shard's replay filter remembers now (both generations).
    pub replay_filter_items: u64,
    /// Tags each generation of this shard's replay filter is sized for: it always remembers
    /// at least this many of the most recent.
    pub replay_filter_capacity: u64,
    /// Fraction of the filter's current generation's bits set, in parts per million.
    pub replay_filter_fill_ppm: u64,
    /// Times the filter cleared its older generation to make room.
    pub replay_filter_generations_turned: u64,
    /// The live keys, by slot (rotation id parity).
    pub keys: [KeyFigures; 2],
    /// Noise handshakes and failures on this shard's links.
    pub noise: NoiseCounts,
    /// Doorbells this shard rang on other shards (at most one per handoff; a ring already
    /// pending is not rung again).
    pub doorbells_rung: u64,
    /// Batches of handoffs this shard sent: one channel message and at most one doorbell
    /// each.
    pub handoff_batches: u64,
    /// System calls the shard's thread entered, from the kernel's count (filled in by
    /// [`ShardStats::snapshot`]; None where counting is not allowed).
    pub syscalls: Option<u64>,
    /// Stalls the watchdog saw (filled in by [`ShardStats::snapshot`], not published).
    pub stalls: u64,
    /// Whether the shard is stalled now (likewise).
    pub stalled: bool,
}

/// One shard's packet counts. A packet may enter a shard from the network (`received`) or
/// from another shard (`taken_over`), and leave it to the network (`forwarded`), to another
/// shard (`handed_off`), by a drop, or as one of the node's own loops come back (`looped`).
/// So per shard: `received + taken_over = forwarded + handed_off + dropped + looped +
/// in_flight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounts {
    /// Network and drop counters.
    pub packets: PacketCounts,
    /// Packets passed to another shard.
    pub handed_off: u64,
    /// Packets taken from another shard.
    pub taken_over: u64,
}

impl ShardCounts {
    /// Packets in this shard right now as the counters imply. Compare it with the measured
    /// gauges ([`ShardSnapshot::in_flight_measured`]): a packet lost without a count makes
    /// the two differ.
    pub fn in_flight(&self) -> i64 {
        self.packets.received as i64 + self.taken_over as i64
            - self.packets.forwarded as i64
            - self.packets.dropped_total() as i64
            - self.packets.looped as i64
            - self.handed_off as i64
    }
}

impl ShardSnapshot {
    /// Packets in this shard right now, measured: wheel, queues, writes under way, and
    /// batches not yet handed to another shard.
    pub fn in_flight_measured(&self) -> u64 {
        self.held + self.queued + self.writing + self.crossing
    }
}

impl ShardStats {
    /// Publish `snapshot`.
    pub fn publish(&self, s: &ShardSnapshot) {
        let r = Ordering::Relaxed;
        let sequence = self.sequence.load(r);
        self.sequence.store(sequence.wrapping_add(1), r);
        std::sync::atomic::fence(Ordering::Release);
        self.received.store(s.counts.packets.received, r);
        self.forwarded.store(s.counts.packets.forwarded, r);
        self.looped.store(s.counts.packets.looped, r);
        for (slot, value) in self.dropped.iter().zip(s.counts.packets.dropped.iter()) {
            slot.store(*value, r);
        }
        self.handed_off.store(s.counts.handed_off, r);
        self.taken_over.store(s.counts.taken_over, r);
        self.held.store(s.held, r);
        self.queued.store(s.queued, r);
        self.writing.store(s.writing, r);
        self.crossing.store(s.crossing, r);
        self.next_hops.store(s.next_hops, r);
        self.next_hops_opened.store(s.next_hops_opened, r);
        self.next_hops_evicted.store(s.next_hops_evicted, r);
        self.next_hops_forgotten_idle
            .store(s.next_hops_forgotten_idle, r);
        self.next_hops_forgotten_failing
            .store(s.next_hops_forgotten_failing, r);
        self.delays_clamped.store(s.delays_clamped, r);
        self.connections_inbound.store(s.connections_inbound, r);
        self.connections_outbound.store(s.connections_outbound, r);
        self.connections_refused.store(s.connections_refused, r);
        self.accept_errors.store(s.accept_errors, r);
        self.read_timeouts.store(s.read_timeouts, r);
        self.bytes_held.store(s.bytes_held, r);
        self.inbox_bytes.store(s.inbox_bytes, r);
        self.known_addresses.store(s.known_addresses, r);
        self.connections_known.store(s.connections_known, r);
        self.connections_evicted.store(s.connections_evicted, r);
        self.connections_closed_idle
            .store(s.connections_closed_idle, r);
        self.connections_closed_first_frame
            .store(s.connections_closed_first_frame, r);
        self.replay_filter_items.store(s.replay_filter_items, r);
        self.replay_filter_capacity
            .store(s.replay_filter_capacity, r);
        self.replay_filter_fill_ppm
            .store(s.replay_filter_fill_ppm, r);
        self.replay_filter_generations_turned
            .store(s.replay_filter_generations_turned, r);
        for (slots, figures) in self.keys.iter().zip(s.keys.iter()) {
            for (slot, word) in slots.iter().zip(figures.to_words()) {
                slot.store(word, r);
            }
        }
        for (slot, word) in self.noise.iter().zip(s.noise.to_words()) {
            slot.store(word, r);
        }
        self.doorbells_rung.store(s.doorbells_rung, r);
        self.handoff_batches.store(s.handoff_batches, r);
        self.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }

    /// Read the last whole publication.
    /// One more pump round (the shard).
    pub fn beat(&self) {
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
    }

    /// Pump rounds so far.
    pub fn heartbeat(&self) -> u64 {
        self.heartbeat.load(Ordering::Relaxed)
    }

    /// The calling thread is this shard's: count its system calls from now on, where the
    /// kernel allows it.
    pub fn count_syscalls_of_this_thread(&self) {
        if let Some(counter) = super::syscalls::SyscallCounter::for_this_thread() {
            let _ = self.syscalls.set(counter);
        }
    }

    /// The shard thread's system calls so far, if counted.
    pub fn syscalls(&self) -> Option<u64> {
        self.syscalls.get().and_then(|c| c.read())
    }

    /// The shard's pump has ended.
    pub fn mark_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }

    /// Whether the shard's pump has ended.
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The watchdog saw a stall begin (`true`) or end (`false`).
    pub fn set_stalled(&self, stalled: bool) {
        if stalled && !self.stalled.swap(true, Ordering::AcqRel) {
            self.stalls.fetch_add(1, Ordering::Relaxed);
        } else if !stalled {
            self.stalled.store(false, Ordering::Release);
        }
    }

    /// Stalls seen so far.
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Whether the shard is stalled now.
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    /// The last publication whole, with the watchdog's figures and the kernel's count of the
    /// shard thread's system calls (a `read` on the caller's thread).
    pub fn snapshot(&self) -> ShardSnapshot {
        let mut snapshot = self.published();
        snapshot.syscalls = self.syscalls();
        snapshot
    }

    /// The last publication whole, with the watchdog's figures, and no system call: for the
    /// shards themselves (`syscalls` is None).
    pub fn published(&self) -> ShardSnapshot {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut snapshot = self.read();
            std::sync::atomic::fence(Ordering::Acquire);
            if self.sequence.load(Ordering::Relaxed) == before {
                snapshot.stalls = self.stalls();
                snapshot.stalled = self.is_stalled();
                return snapshot;
            }
        }
    }

    fn read(&self) -> ShardSnapshot {
        let r = Ordering::Relaxed;
        let mut dropped = [0u64; DropReason::COUNT];
        for (out, slot) in dropped.iter_mut().zip(self.dropped.iter()) {
            *out = slot.load(r);
        }
        ShardSnapshot {
            counts: ShardCounts {
                packets: PacketCounts {
                    received: self.received.load(r),
                    forwarded: self.forwarded.load(r),
                    dropped,
                    looped: self.looped.load(r),
                },
                handed_off: self.handed_off.load(r),
                taken_over: self.taken_over.load(r),
            },
            held: self.held.load(r),
            queued: self.queued.load(r),
            writing: self.writing.load(r),
            crossing: self.crossing.load(r),
            next_hops: self.next_hops.load(r),
            next_hops_opened: self.next_hops_opened.load(r),
            next_hops_evicted: self.next_hops_evicted.load(r),
            next_hops_forgotten_idle: self.next_hops_forgotten_idle.load(r),
            next_hops_forgotten_failing: self.next_hops_forgotten_failing.load(r),
            delays_clamped: self.delays_clamped.load(r),
            connections_inbound: self.connections_inbound.load(r),
            connections_outbound: self.connections_outbound.load(r),
            connections_refused: self.connections_refused.load(r),
            accept_errors: self.accept_errors.load(r),
            read_timeouts: self.read_timeouts.load(r),
            bytes_held: self.bytes_held.load(r),
            inbox_bytes: self.inbox_bytes.load(r),
            known_addresses: self.known_addresses.load(r),
            connections_known: self.connections_known.load(r),
            connections_evicted: self.connections_evicted.load(r),
            connections_closed_idle: self.connections_closed_idle.load(r),
            connections_closed_first_frame: self.connections_closed_first_frame.load(r),
            replay_filter_items: self.replay_filter_items.load(r),
            replay_filter_capacity: self.replay_filter_capacity.load(r),
            replay_filter_fill_ppm: self.replay_filter_fill_ppm.load(r),
            replay_filter_generations_turned: self.replay_filter_generations_turned.load(r),
            keys: std::array::from_fn(|slot| {
                KeyFigures::from_words(std::array::from_fn(|i| self.keys[slot][i].load(r)))
            }),
            noise: NoiseCounts::from_words(std::array::from_fn(|i| self.noise[i].load(r))),
            doorbells_rung: self.doorbells_rung.load(r),
            handoff_batches: self.handoff_batches.load(r),
            syscalls: None,
            stalls: 0,
            stalled: false,
        }
    }
}

/// Sum of the packet counters of all shards (handoffs cancel out).
pub fn total(snapshots: &[ShardSnapshot]) -> PacketCounts {
    let mut total = PacketCounts::default();
    for s in snapshots {
        total.add(&s.counts.packets);
    }
    total
}
