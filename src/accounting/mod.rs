//! Why a packet was dropped, and the per-shard counters that prove every packet is accounted
//! for: `received = forwarded + dropped + in_flight` at every moment.
//!
//! Counters are plain integers owned by one shard; snapshots are copied out to the control
//! thread. Nothing here is shared between cores.

/// Why a packet was dropped. Small and `Copy`: it is both the reject value on the hot path
/// and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// The frame header was malformed (bad version, size tag or packet type).
    BadFrame = 0,
    /// The Sphinx packet failed to parse, or its MAC or payload did not verify.
    BadPacket = 1,
    /// The replay tag was already seen under this key.
    Replay = 2,
    /// A final-hop packet reached a mixnode.
    FinalHop = 3,
    /// The next-hop address encodes no valid IPv4/IPv6 socket address.
    BadNextHopAddress = 4,
    /// The shard's delay wheel held `engine.held_packets_max` packets.
    WheelFull = 5,
    /// The channel to the shard that owns the packet's replay tag or next hop was full
    /// (`engine.cross_shard_packets_max`, or `engine.cross_shard_bytes_max` in bytes).
    HandoffFull = 6,
    /// A new next hop, and every entry of the shard's next-hop table held packets or was
    /// connecting (`engine.next_hops_max`).
    NextHopTableFull = 7,
    /// The next hop's queue held `engine.next_hop_queue_packets_max` packets, or its queue
    /// and write under way `engine.next_hop_queue_bytes_max` bytes.
    NextHopQueueFull = 8,
    /// The next hop could not be reached: its connection failed (or is backing off after a
    /// failure), or a write to it failed.
    NextHopUnreachable = 9,
    /// The node shut down before the packet could be forwarded.
    Shutdown = 10,
    /// A packet type this node does not mix (Outfox).
    UnsupportedPacketType = 11,
    /// The frame's rotation byte names a Sphinx key this node no longer holds (purged after
    /// its rotation's overlap epoch), or the key was purged while the packet crossed shards.
    ExpiredKey = 12,
    /// The packets held by the shard (wheel, next-hop queues, writes under way) already took
    /// its share of `engine.packet_memory_bytes_max`.
    MemoryFull = 13,
    /// The next hop's IP address is not a node the topology lists (`engine.forward_to =
    /// "known"`).
    NextHopUnknown = 14,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 15] = [
        DropReason::BadFrame,
        DropReason::BadPacket,
        DropReason::Replay,
        DropReason::FinalHop,
        DropReason::BadNextHopAddress,
        DropReason::WheelFull,
        DropReason::HandoffFull,
        DropReason::NextHopTableFull,
        DropReason::NextHopQueueFull,
        DropReason::NextHopUnreachable,
        DropReason::Shutdown,
        DropReason::UnsupportedPacketType,
        DropReason::ExpiredKey,
        DropReason::MemoryFull,
        DropReason::NextHopUnknown,
    ];

    /// Number of reasons; sizes the counter arrays.
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label of this reason.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::BadFrame => "bad_frame",
            DropReason::BadPacket => "bad_packet",
            DropReason::Replay => "replay",
            DropReason::FinalHop => "final_hop",
            DropReason::BadNextHopAddress => "bad_next_hop_address",
            DropReason::WheelFull => "wheel_full",
            DropReason::HandoffFull => "handoff_full",
            DropReason::NextHopTableFull => "next_hop_table_full",
            DropReason::NextHopQueueFull => "next_hop_queue_full",
            DropReason::NextHopUnreachable => "next_hop_unreachable",
            DropReason::Shutdown => "shutdown",
            DropReason::UnsupportedPacketType => "unsupported_packet_type",
            DropReason::ExpiredKey => "expired_key",
            DropReason::MemoryFull => "memory_full",
            DropReason::NextHopUnknown => "next_hop_unknown",
        }
    }
}

const _: () = assert!(DropReason::COUNT == DropReason::NextHopUnknown as usize + 1);

/// The bytes an allocation of `bytes` takes, modelled on size-class allocators (mimalloc, the
/// node's, and jemalloc): up to 64 bytes in 8-byte steps, beyond that rounded up to a quarter
/// of the power of two at or below it (a 33,133-byte packet takes 40,960). `bench-mix` measures
/// how close this is to the resident memory a held packet adds.
pub const fn allocation_size(bytes: usize) -> usize {
    if bytes <= 64 {
        return bytes.div_ceil(8) * 8;
    }
    let power = 1usize << (usize::BITS - 1 - bytes.leading_zeros());
    let step = power / 4;
    bytes.div_ceil(step) * step
}

/// Packet counters of one shard. Only its shard writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounts {
    /// Packets whose frame header arrived (or, for a bad header, that were cut off by it).
    pub received: u64,
    /// Packets written to a next hop's connection.
    pub forwarded: u64,
    /// Packets dropped, by [`DropReason`] index.
    pub dropped: [u64; DropReason::COUNT],
    /// The node's own loop packets that came back (their final hop is this node): they end
    /// here, neither forwarded nor dropped.
    pub looped: u64,
}

impl PacketCounts {
    /// Total of all drops.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Count a drop.
    pub fn drop_packet(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }

    /// Packets received but neither forwarded nor dropped yet.
    ///
    /// Across shards this is only meaningful for the sum: a packet received on one shard may
    /// be forwarded (or dropped) by the shard that owns its next hop.
    pub fn in_flight(&self) -> i64 {
        self.received as i64
            - self.forwarded as i64
            - self.dropped_total() as i64
            - self.looped as i64
    }

    /// Add another shard's counts to these.
    pub fn add(&mut self, other: &PacketCounts) {
        self.received += other.received;
        self.forwarded += other.forwarded;
        self.looped += other.looped;
        for (mine, theirs) in self.dropped.iter_mut().zip(other.dropped.iter()) {
            *mine += theirs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indices_match() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
    }

    #[test]
    fn in_flight_balances() {
        let mut c = PacketCounts {
            received: 10,
            forwarded: 4,
            ..Default::default()
        };
        c.drop_packet(DropReason::Replay);
        c.drop_packet(DropReason::WheelFull);
        assert_eq!(c.dropped_total(), 2);
        assert_eq!(c.in_flight(), 4);
        let mut total = PacketCounts::default();
        total.add(&c);
        total.add(&c);
        assert_eq!(total.in_flight(), 8);
    }
}
