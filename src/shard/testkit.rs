//! Test code: what the core's unit tests and the simulation share. Real Sphinx packets for
//! one node key, cores for that key, and virtual cross-shard channels.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use x25519_dalek::{PublicKey, StaticSecret};

use super::core::{CoreConfig, Handoff, HandoffBatch, HandoffRefused, HandoffSink, ShardCore};
use super::tag_owner;
use crate::forward::{Backoff, TableLimits};
use crate::framing::{FrameHeader, KeyRotation, PacketType, SizeTag, Version};
use crate::replay::ReplayFilter;
use crate::sphinx::{build_packet, encode_node_address, HopProcessor, LiveKey, RouteHop};
use crate::testing::SplitMix64;

/// The node's own address in test packets.
pub const NODE: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 9, 9)),
    1789,
);

/// Packet size used by the tests: the smallest, so building is cheap.
pub const SIZE: SizeTag = SizeTag::Ack;

/// The frame header tests send packets with.
pub fn header() -> FrameHeader {
    header_for(KeyRotation::Even)
}

/// A frame header naming `key_rotation` (a v7 header for [`KeyRotation::Unknown`] half the
/// time would need a coin: callers pick [`header_v7`]).
pub fn header_for(key_rotation: KeyRotation) -> FrameHeader {
    FrameHeader {
        version: Version::V8,
        size_tag: SIZE,
        packet_type: PacketType::Sphinx,
        key_rotation,
    }
}

/// A v7 frame header (no rotation byte).
pub fn header_v7() -> FrameHeader {
    FrameHeader {
        version: Version::V7,
        size_tag: SIZE,
        packet_type: PacketType::Sphinx,
        key_rotation: KeyRotation::Unknown,
    }
}

/// A header of a packet type the node does not mix.
pub fn outfox_header() -> FrameHeader {
    FrameHeader {
        packet_type: PacketType::Outfox,
        size_tag: SizeTag::OutfoxAck,
        ..header()
    }
}

/// A header whose packet type and size tag disagree (a Sphinx type, an Outfox size).
pub fn mismatched_header() -> FrameHeader {
    FrameHeader {
        size_tag: SizeTag::OutfoxAck,
        ..header()
    }
}

/// The node's key and a generator of packets for it.
pub struct Packets {
    rng: SplitMix64,
    secret: StaticSecret,
    public_key: PublicKey,
    next_key: PublicKey,
    /// The node's key of the next rotation (see [`Packets::rotating_processor`]).
    rotated_secret: StaticSecret,
    rotated_public: PublicKey,
}

/// The rotation id of [`Packets`]' first key in a rotating processor (even).
pub const FIRST_ROTATION: u32 = 4;

impl Packets {
    /// Keys drawn from `seed`.
    pub fn new(seed: u64) -> Packets {
        let mut rng = SplitMix64::new(seed);
        let secret = StaticSecret::from(rng.tag());
        let public_key = PublicKey::from(&secret);
        let next_key = PublicKey::from(&StaticSecret::from(rng.tag()));
        let rotated_secret = StaticSecret::from(rng.tag());
        let rotated_public = PublicKey::from(&rotated_secret);
        Packets {
            rng,
            secret,
            public_key,
            next_key,
            rotated_secret,
            rotated_public,
        }
    }

    /// A processor with the node's key and a filter of its own (one per shard, as in the node).
    pub fn processor(&self) -> HopProcessor {
        let filter = ReplayFilter::with_default_rate(1_000_000).expect("valid size");
        HopProcessor::new(self.secret.clone(), filter)
    }

    /// A processor whose primary is the first key as rotation [`FIRST_ROTATION`], with no
    /// other key yet.
    pub fn rotating_processor(&self) -> HopProcessor {
        let filter = ReplayFilter::with_default_rate(1_000_000).expect("valid size");
        HopProcessor::rotating(
            LiveKey::new(FIRST_ROTATION, self.secret.clone(), filter),
            None,
            crate::sphinx::HopProcessorKind::default(),
        )
    }

    /// The next rotation's key, with a fresh filter, to install.
    pub fn rotated_key(&self) -> LiveKey {
        let filter = ReplayFilter::with_default_rate(1_000_000).expect("valid size");
        LiveKey::new(FIRST_ROTATION + 1, self.rotated_secret.clone(), filter)
    }

    /// A packet the node forwards to `next_hop` after `delay`, built for the next rotation's
    /// key.
    pub fn forward_rotated(&mut self, next_hop: SocketAddr, delay: Duration) -> Vec<u8> {
        self.forward_for(self.rotated_public, next_hop, delay)
    }

    /// A packet the node forwards to `next_hop` after `delay`.
    pub fn forward(&mut self, next_hop: SocketAddr, delay: Duration) -> Vec<u8> {
        self.forward_for(self.public_key, next_hop, delay)
    }

    fn forward_for(&mut self, key: PublicKey, next_hop: SocketAddr, delay: Duration) -> Vec<u8> {
        let route = [
            RouteHop {
                address: NODE,
                public_key: key,
                delay,
            },
            RouteHop {
                address: next_hop,
                public_key: self.next_key,
                delay: Duration::ZERO,
            },
        ];
        let initial = StaticSecret::from(self.rng.tag());
        build_packet(&route, [7u8; 32], SIZE, b"sim", &initial).expect("valid route")
    }

    /// A packet for which the node is the final hop.
    pub fn final_hop(&mut self) -> Vec<u8> {
        let route = [RouteHop {
            address: NODE,
            public_key: self.public_key,
            delay: Duration::ZERO,
        }];
        let initial = StaticSecret::from(self.rng.tag());
        build_packet(&route, [7u8; 32], SIZE, b"final", &initial).expect("valid route")
    }

    /// A packet for which the node is the final hop, for `destination` with `identifier`.
    pub fn final_hop_for(&mut self, destination: [u8; 32], identifier: [u8; 16]) -> Vec<u8> {
        let route = [RouteHop {
            address: NODE,
            public_key: self.public_key,
            delay: Duration::ZERO,
        }];
        let initial = StaticSecret::from(self.rng.tag());
        crate::sphinx::build_packet_for(
            &route,
            crate::sphinx::FinalHopInfo {
                destination,
                identifier,
            },
            SIZE,
            b"loop",
            &initial,
        )
        .expect("valid route")
    }

    /// A packet whose next-hop address bytes encode no socket address.
    pub fn bad_address(&mut self) -> Vec<u8> {
        let route = [
            Node::new(
                NodeAddressBytes::from_bytes(encode_node_address(NODE)),
                self.public_key,
            ),
            Node::new(NodeAddressBytes::from_bytes([9u8; 32]), self.next_key),
        ];
        let destination =
            Destination::new(DestinationAddressBytes::from_bytes([1u8; 32]), [0u8; 16]);
        let initial = StaticSecret::from(self.rng.tag());
        sphinx_packet::SphinxPacketBuilder::new()
            .with_payload_size(SIZE.sphinx_payload_len())
            .with_initial_secret(&initial)
            .build_packet(
                b"bad address",
                &route,
                &destination,
                &[Delay::new_from_nanos(0), Delay::new_from_nanos(0)],
            )
            .expect("valid route")
            .to_bytes()
    }

    /// Well-sized bytes that are no packet.
    pub fn junk(&mut self) -> Vec<u8> {
        let mut bytes = vec![0u8; SIZE.packet_len()];
        self.rng.fill(&mut bytes);
        bytes
    }

    /// A forward packet whose replay tag `shard` of `shards` owns.
    pub fn forward_owned_by(
        &mut self,
        shard: usize,
        shards: usize,
        next_hop: SocketAddr,
        delay: Duration,
    ) -> Vec<u8> {
        let probe = self.processor();
        loop {
            let packet = self.forward(next_hop, delay);
            let expanded = probe.expand(&packet).expect("a valid packet expands");
            if tag_owner(expanded.replay_tag(), shards) == shard {
                return packet;
            }
        }
    }
}

/// Small limits that tests can reach.
pub fn config(index: usize, shards: usize) -> CoreConfig {
    CoreConfig {
        index,
        shards,
        delay_max: Duration::from_secs(1),
        held_packets_max: 1000,
        memory_bytes_max: 1 << 30,
        wheel_slots: 2048,
        table: TableLimits {
            next_hops_max: 8,
            queue_packets_max: 16,
            queue_bytes_max: 1 << 20,
            idle_timeout: Duration::from_secs(5),
            failures_max: 3,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(800),
            },
        },
        write_batch_packets_max: 4,
        forward_to: crate::config::ForwardTo::Known,
        loop_destination: None,
    }
}

/// A core for `config` with the keys of `packets`, its clock starting at `now`.
pub fn core(config: CoreConfig, packets: &Packets, now: Instant) -> ShardCore {
    ShardCore::new(config, packets.processor(), now, frozen_stopwatch).expect("valid config")
}

/// A core with [`Packets::rotating_processor`].
pub fn rotating_core(config: CoreConfig, packets: &Packets, now: Instant) -> ShardCore {
    ShardCore::new(config, packets.rotating_processor(), now, frozen_stopwatch)
        .expect("valid config")
}

/// The simulation's stopwatch: processing takes no virtual time.
pub fn frozen_stopwatch() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Bounded virtual channels between shards: `queues[to]` holds what was handed to `to`.
pub struct VirtualChannels {
    /// One queue per target shard.
    pub queues: Vec<VecDeque<Handoff>>,
    /// Most handoffs (packets) a queue holds.
    pub capacity: usize,
    /// Batches taken.
    pub batches: u64,
    /// Targets that have stopped.
    pub closed: Vec<bool>,
}

impl VirtualChannels {
    /// Channels for `shards` shards of `capacity` each.
    pub fn new(shards: usize, capacity: usize) -> VirtualChannels {
        VirtualChannels {
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            capacity,
            batches: 0,
            closed: vec![false; shards],
        }
    }

    /// Handoffs waiting in all queues.
    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

impl HandoffSink for VirtualChannels {
    fn hand_off(
        &mut self,
        to: usize,
        batch: HandoffBatch,
    ) -> Result<(), (HandoffRefused, HandoffBatch)> {
        if self.closed[to] {
            return Err((HandoffRefused::Closed, batch));
        }
        // As the driver's channels: the first part that fits goes, the rest comes back.
        let room = self.capacity.saturating_sub(self.queues[to].len());
        if room == 0 {
            return Err((HandoffRefused::Full, batch));
        }
        let mut batch = batch;
        let left = (batch.len() > room).then(|| batch.split_off(room));
        self.batches += 1;
        self.queues[to].extend(batch);
        match left {
            None => Ok(()),
            Some(left) => Err((HandoffRefused::Full, left)),
        }
    }
}
