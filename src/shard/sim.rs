//! A seeded simulation that drives three real [`ShardCore`]s, wired by bounded virtual
//! channels, under a virtual clock, with a model of the driver's link tasks and of next hops
//! that refuse connections, stall writes, drop connections and come back. Frames arrive in
//! bursts: real Sphinx packets (some replays, some asking for delays over the cap), junk,
//! final hops, bad addresses and bad frames. The keys rotate during the run, as the rotation
//! controller changes them: the next key is pre-announced a third of the way in, becomes
//! primary halfway, and the old one is purged at two thirds, while frames for either key
//! come with the right rotation byte, with none (v7 and byte 0), or with a byte naming a
//! key not live (dropped as expired).
//!
//! After every step it checks, for each core, that its counters and its measured gauges
//! agree ([`ShardCore::check_conservation`]), and across the cores that
//! `received = forwarded + dropped + in flight`, where in flight is measured: wheels, queues,
//! writes under way and handoffs in the virtual channels. It also checks that no packet is
//! written before it is due, that the link protocol is kept (the core never asks for a
//! connect or a write out of turn) and that the tables stay within their limit. The seed is
//! fixed; `MIXNODE_TEST_SEED` overrides it, and a failure prints it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::core::{Action, CoreConfig, NoTimings, Outcome, Phase, ShardCore};
use super::testkit::{self, header, outfox_header, Packets, VirtualChannels};
use crate::accounting::DropReason;
use crate::forward::{LinkId, LinkStep};
use crate::framing::{FrameHeader, KeyRotation, SizeTag};
use crate::sphinx::KeyUpdate;
use crate::testing::{seed, SplitMix64, SEED_ENV};

const SHARDS: usize = 3;
const STEPS: usize = 8_000;
/// Next hops that carry most traffic.
const REGULAR_PEERS: usize = 6;
/// Next hops seen rarely: more than the tables hold, so they fill and evict.
const RARE_PEERS: usize = 40;
/// Distinct packets built at start (building costs two scalar multiplications each).
const POOL: usize = 4_000;
const CHANNEL_CAPACITY: usize = 12;

/// One next hop as the network sees it.
#[derive(Clone, Copy)]
struct PeerModel {
    /// Accepts connections.
    up: bool,
    /// Accepts but never reads: writes stall until the write timeout.
    stalls: bool,
}

/// What a link's task is doing, in the driver model.
#[derive(Clone, Copy, Debug)]
enum Task {
    /// Must ask the core what to do next.
    Runnable,
    /// Asked, was told to wait; runnable again when woken.
    Parked,
    /// Connecting: the result comes at `at`.
    Connecting { at: Instant, succeeds: bool },
    /// Writing `packets`: the result comes at `at`.
    Writing { at: Instant, succeeds: bool },
}

struct Link {
    next_hop: SocketAddr,
    task: Task,
    /// The connection's peer dropped it; the next write fails.
    broken: bool,
}

struct Shard {
    core: ShardCore,
    links: BTreeMap<LinkId, Link>,
}

struct Sim {
    rng: SplitMix64,
    now: Instant,
    shards: Vec<Shard>,
    channels: VirtualChannels,
    peers: HashMap<SocketAddr, PeerModel>,
    /// Packets not yet sent, and whether each is for the next rotation's key.
    pool: Vec<(Vec<u8>, bool)>,
    used: Vec<(Vec<u8>, bool)>,
    /// Key changes made so far (0 to 3).
    rotations_done: usize,
    packets: Packets,
    written: u64,
    /// Packets held past the drain deadline, sent just before shutdown.
    late: Vec<Vec<u8>>,
}

/// A next hop that no known node has: its packets are dropped as next_hop_unknown.
const UNLISTED_PEER: usize = REGULAR_PEERS + RARE_PEERS;

fn peer_address(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (index / 200) as u8, (index % 200) as u8 + 1], 1789))
}

fn config(index: usize) -> CoreConfig {
    let mut config = testkit::config(index, SHARDS);
    config.held_packets_max = 8;
    // About 24 packets in wheel and queues together: fills before six queues of five and a
    // full wheel do. Each shard queues only the packets whose tags it owns, so a next hop's
    // queue on one shard sees about a third of that hop's packets.
    config.memory_bytes_max = 24 * SizeTag::Ack.packet_len() as u64;
    config.table.next_hops_max = 6;
    config.table.queue_packets_max = 5;
    config.table.idle_timeout = Duration::from_secs(2);
    config
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut packets = Packets::new(seed);
        let now = Instant::now();
        // Every peer the model runs is a known node; one address that no node has is not.
        let known = std::sync::Arc::new(crate::topology::KnownNodes::from_addresses(
            (0..REGULAR_PEERS + RARE_PEERS).map(|i| vec![peer_address(i).ip()]),
            "simulation",
        ));
        let shards = (0..SHARDS)
            .map(|index| {
                let mut core = testkit::rotating_core(config(index), &packets, now);
                core.set_known(Some(std::sync::Arc::clone(&known)));
                Shard {
                    core,
                    links: BTreeMap::new(),
                }
            })
            .collect();
        let mut rng = SplitMix64::new(seed ^ 0x5349_4d55);
        let mut pool = Vec::with_capacity(POOL);
        for _ in 0..POOL {
            let peer = if rng.chance(1, 40) {
                UNLISTED_PEER
            } else if rng.chance(3, 4) {
                rng.below(REGULAR_PEERS as u64) as usize
            } else {
                REGULAR_PEERS + rng.below(RARE_PEERS as u64) as usize
            };
            // Mostly short delays; one in twenty over the 1 s cap.
            let delay = if rng.chance(1, 20) {
                Duration::from_millis(1_000 + rng.below(5_000))
            } else if rng.chance(1, 3) {
                Duration::ZERO
            } else {
                Duration::from_micros(rng.below(600_000))
            };
            // One in four for the next rotation's key.
            if rng.chance(1, 4) {
                pool.push((packets.forward_rotated(peer_address(peer), delay), true));
            } else {
                pool.push((packets.forward(peer_address(peer), delay), false));
            }
        }
        let late = (0..12)
            .map(|i| {
                packets.forward_rotated(peer_address(i % REGULAR_PEERS), Duration::from_millis(900))
            })
            .collect();
        let peers = (0..REGULAR_PEERS + RARE_PEERS)
            .map(|i| {
                (
                    peer_address(i),
                    PeerModel {
                        up: true,
                        stalls: false,
                    },
                )
            })
            .collect();
        Sim {
            rng,
            now,
            shards,
            channels: VirtualChannels::new(SHARDS, CHANNEL_CAPACITY),
            peers,
            pool,
            used: Vec::new(),
            rotations_done: 0,
            packets,
            written: 0,
            late,
        }
    }

    fn check(&self) {
        let mut came = 0u64;
        let mut went = 0u64;
        let mut in_flight = self.channels.len() as u64;
        for shard in &self.shards {
            shard.core.check_conservation();
            // At most one crossing: a shard hands on only packets it read itself, never one
            // another shard handed it.
            let counts = shard.core.counts();
            assert!(counts.handed_off <= counts.packets.received, "{counts:?}");
            let c = counts.packets;
            came += c.received;
            went += c.forwarded + c.dropped_total() + c.looped;
            in_flight += shard.core.in_flight();
            let figures = shard.core.figures();
            assert!(figures.table.next_hops as usize <= shard.core.config().table.next_hops_max);
            assert!(figures.held as usize <= shard.core.config().held_packets_max);
        }
        assert_eq!(
            came,
            went + in_flight,
            "received = forwarded + dropped + in flight"
        );
        let forwarded: u64 = self
            .shards
            .iter()
            .map(|s| s.core.counts().packets.forwarded)
            .sum();
        assert_eq!(
            forwarded, self.written,
            "forwarded counts exactly the writes that went out"
        );
    }

    /// One frame of some kind to a random shard.
    fn receive_one(&mut self) {
        let shard = self.rng.below(SHARDS as u64) as usize;
        let roll = self.rng.below(100);
        let (frame_header, bytes) = match roll {
            0..=69 if !self.pool.is_empty() => {
                let index = self.rng.below(self.pool.len() as u64) as usize;
                let (packet, rotated) = self.pool.swap_remove(index);
                self.used.push((packet.clone(), rotated));
                (self.rotation_header(rotated), packet)
            }
            0..=79 if !self.used.is_empty() => {
                let index = self.rng.below(self.used.len() as u64) as usize;
                let rotated = self.used[index].1;
                (self.rotation_header(rotated), self.used[index].0.clone())
            }
            85..=92 => (header(), self.packets.junk()),
            93..=94 => (header(), self.packets.final_hop()),
            95 => (header(), self.packets.bad_address()),
            96 => (outfox_header(), vec![0u8; SizeTag::OutfoxAck.packet_len()]),
            97 => {
                self.shards[shard].core.on_bad_frame();
                return;
            }
            _ => (header(), self.packets.junk()),
        };
        let now = self.now;
        let Shard { core, .. } = &mut self.shards[shard];
        let outcome = core.on_frame(
            frame_header,
            &bytes,
            now,
            &mut self.channels,
            &mut NoTimings,
        );
        if let Outcome::Held { due } = outcome {
            assert!(due > now, "held only when not yet due");
        }
        // The driver flushes after each read's frames, and a read holds one frame or many.
        if self.rng.below(3) == 0 {
            core.flush_handoffs(&mut self.channels);
        }
        self.take_actions(shard);
    }

    /// The header a sender would use for a packet of the first key or the next one: mostly
    /// the key's rotation byte, sometimes none (v7, or byte 0), rarely the other key's byte.
    fn rotation_header(&mut self, rotated: bool) -> FrameHeader {
        let own = if rotated {
            KeyRotation::Odd
        } else {
            KeyRotation::Even
        };
        match self.rng.below(10) {
            0 => testkit::header_v7(),
            1 => testkit::header_for(KeyRotation::Unknown),
            2 if self.rng.chance(1, 4) => testkit::header_for(if rotated {
                KeyRotation::Even
            } else {
                KeyRotation::Odd
            }),
            _ => testkit::header_for(own),
        }
    }

    /// The controller's key changes, on every core at once: pre-announce the next key,
    /// promote it, purge the first.
    fn rotate(&mut self) {
        let first = testkit::FIRST_ROTATION;
        for shard in &mut self.shards {
            let update = match self.rotations_done {
                0 => KeyUpdate {
                    purge: vec![],
                    install: vec![self.packets.rotated_key()],
                    primary: first,
                },
                1 => KeyUpdate {
                    purge: vec![],
                    install: vec![],
                    primary: first + 1,
                },
                _ => KeyUpdate {
                    purge: vec![first],
                    install: vec![],
                    primary: first + 1,
                },
            };
            let purged = shard.core.apply_keys(update).expect("a valid key change");
            assert_eq!(purged.len(), usize::from(self.rotations_done == 2));
            let live: Vec<u32> = shard
                .core
                .processor()
                .keys()
                .map(|k| k.rotation_id())
                .collect();
            assert!(live.len() <= 2, "at most two live keys");
        }
        self.rotations_done += 1;
    }

    fn take_actions(&mut self, shard: usize) {
        let Shard { core, links } = &mut self.shards[shard];
        while let Some(action) = core.poll_action() {
            match action {
                Action::Open { link, next_hop } => {
                    assert!(
                        links
                            .insert(
                                link,
                                Link {
                                    next_hop,
                                    task: Task::Runnable,
                                    broken: false
                                }
                            )
                            .is_none(),
                        "link ids are never reused"
                    );
                }
                Action::Wake { link } => {
                    let task = &mut links.get_mut(&link).expect("woken link exists").task;
                    if let Task::Parked = task {
                        *task = Task::Runnable;
                    }
                }
            }
        }
    }

    fn deliver_handoffs(&mut self) {
        // Each pump round flushes what its readers left waiting.
        for shard in &mut self.shards {
            shard.core.flush_handoffs(&mut self.channels);
        }
        for to in 0..SHARDS {
            let count = self.rng.below(CHANNEL_CAPACITY as u64 + 1);
            for _ in 0..count {
                let Some(handoff) = self.channels.queues[to].pop_front() else {
                    break;
                };
                self.shards[to].core.on_handoff(handoff, &mut NoTimings);
                self.take_actions(to);
            }
        }
    }

    /// Run the link tasks: ask runnable ones what to do, finish connects and writes whose
    /// time has come.
    fn drive_links(&mut self) {
        let now = self.now;
        for index in 0..SHARDS {
            let ids: Vec<LinkId> = self.shards[index].links.keys().copied().collect();
            for id in ids {
                self.drive_link(index, id, now);
                self.take_actions(index);
            }
        }
    }

    fn drive_link(&mut self, index: usize, id: LinkId, now: Instant) {
        let Shard { core, links } = &mut self.shards[index];
        let Some(link) = links.get_mut(&id) else {
            return;
        };
        let next_hop = link.next_hop;
        match link.task {
            Task::Parked => {}
            Task::Connecting { at, succeeds } if at <= now => {
                if succeeds {
                    core.on_connected(next_hop, id);
                    link.broken = false;
                } else {
                    core.on_connect_failed(next_hop, id, now);
                }
                link.task = Task::Runnable;
            }
            Task::Writing { at, succeeds } if at <= now => {
                if succeeds && !link.broken {
                    let before = core.counts().packets.forwarded;
                    core.on_written(next_hop, id, now, &[], &mut NoTimings);
                    self.written += core.counts().packets.forwarded - before;
                } else {
                    core.on_write_failed(next_hop, id, now);
                }
                link.task = Task::Runnable;
            }
            Task::Connecting { .. } | Task::Writing { .. } => {}
            Task::Runnable => {
                let mut buffer = Vec::new();
                let mut dues = Vec::new();
                let step = core.link_next(next_hop, id, now, &mut buffer, &mut dues);
                let peer = self.peers[&next_hop];
                match step {
                    LinkStep::Close => {
                        links.remove(&id);
                    }
                    LinkStep::Wait => link.task = Task::Parked,
                    LinkStep::Connect(address) => {
                        assert_eq!(address, next_hop);
                        let latency = Duration::from_micros(50 + self.rng.below(3_000));
                        link.task = Task::Connecting {
                            at: now + latency,
                            succeeds: peer.up,
                        };
                    }
                    LinkStep::Write { packets } => {
                        assert!(packets > 0 && dues.len() == packets);
                        assert!(dues.iter().all(|due| *due <= now), "written before due");
                        let latency = if peer.stalls {
                            Duration::from_secs(5)
                        } else {
                            Duration::from_micros(20 + self.rng.below(2_000))
                        };
                        link.task = Task::Writing {
                            at: now + latency,
                            succeeds: peer.up && !peer.stalls,
                        };
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        match self.rng.below(20) {
            // A burst of frames (sometimes a big one, to fill channels and queues).
            0..=3 => {
                let burst = if self.rng.chance(1, 20) {
                    30
                } else {
                    1 + self.rng.below(4)
                };
                for _ in 0..burst {
                    self.receive_one();
                }
            }
            4..=9 => self.deliver_handoffs(),
            10..=16 => {
                let micros = if self.rng.chance(1, 50) {
                    self.rng.below(4_000_000)
                } else {
                    self.rng.below(30_000)
                };
                self.now += Duration::from_micros(micros);
                for index in 0..SHARDS {
                    self.shards[index].core.handle_timeout(self.now);
                    self.take_actions(index);
                }
            }
            17..=18 => self.drive_links(),
            _ => self.fault(),
        }
        self.check();
    }

    /// Refused connects, stalled writes, dropped connections.
    fn fault(&mut self) {
        let index = self.rng.below((REGULAR_PEERS + RARE_PEERS) as u64) as usize;
        let address = peer_address(index);
        match self.rng.below(3) {
            0 => {
                let peer = self.peers.get_mut(&address).expect("known peer");
                peer.up = !peer.up;
            }
            1 => {
                let peer = self.peers.get_mut(&address).expect("known peer");
                peer.stalls = !peer.stalls;
            }
            _ => {
                for shard in &mut self.shards {
                    for link in shard.links.values_mut() {
                        if link.next_hop == address {
                            link.broken = true;
                        }
                    }
                }
            }
        }
    }

    /// Drain, pass the deadline, and let every task finish: nothing may be left in flight.
    fn shut_down(&mut self) {
        for (index, packet) in std::mem::take(&mut self.late).into_iter().enumerate() {
            let now = self.now;
            let shard = index % SHARDS;
            self.shards[shard].core.on_frame(
                testkit::header_for(KeyRotation::Odd),
                &packet,
                now,
                &mut self.channels,
                &mut NoTimings,
            );
            self.take_actions(shard);
        }
        self.deliver_handoffs();
        let deadline = self.now + Duration::from_millis(300);
        for shard in &mut self.shards {
            shard.core.begin_drain(deadline);
        }
        while self.now < deadline + Duration::from_secs(6) {
            self.now += Duration::from_millis(5);
            for index in 0..SHARDS {
                self.shards[index].core.handle_timeout(self.now);
                self.take_actions(index);
            }
            self.deliver_handoffs();
            self.drive_links();
            self.check();
        }
        for to in 0..SHARDS {
            while let Some(handoff) = self.channels.queues[to].pop_front() {
                self.shards[to].core.on_handoff(handoff, &mut NoTimings);
            }
        }
        self.drive_links();
        self.check();
        for shard in &self.shards {
            assert_eq!(shard.core.phase(), Phase::Closed);
            assert_eq!(shard.core.in_flight(), 0, "nothing left after close");
            assert!(shard.links.is_empty(), "every link task ended");
        }
    }
}

#[test]
fn three_real_cores_conserve_packets_under_faults() {
    let seed = seed();
    eprintln!("simulation seed {seed} (set {SEED_ENV} to replay)");
    let mut sim = Sim::new(seed);
    for step in 0..STEPS {
        if step > 0 && step % (STEPS / 3) == 0 && sim.rotations_done < 3 {
            sim.rotate();
        }
        if step == STEPS - 1 && sim.rotations_done < 3 {
            sim.rotate();
        }
        sim.step();
    }
    assert_eq!(sim.rotations_done, 3);
    sim.shut_down();
    let mut total = crate::accounting::PacketCounts::default();
    let mut evicted = 0;
    let mut forgotten_idle = 0;
    let mut clamped = 0;
    for shard in &sim.shards {
        total.add(&shard.core.counts().packets);
        let figures = shard.core.figures();
        evicted += figures.table.evicted;
        forgotten_idle += figures.table.forgotten_idle;
        clamped += figures.delays_clamped;
    }
    eprintln!("{total:?}, evicted {evicted}, forgotten idle {forgotten_idle}, clamped {clamped}");
    assert_eq!(total.received, total.forwarded + total.dropped_total());
    // The run must have exercised every path it claims to check.
    assert!(total.forwarded > 0);
    assert!(evicted > 0 && forgotten_idle > 0 && clamped > 0);
    for reason in DropReason::ALL {
        assert!(total.dropped[reason as usize] > 0, "no {reason:?} drop");
    }
}
