//! A seeded simulation of the pure data path with a virtual clock: packets arrive (some of
//! them replays, some with delays over the cap), wait in the delay wheel, queue per next hop,
//! and leave over connections to peers that go down and come back.
//!
//! Every step checks that packets are conserved (`received = forwarded + dropped + in
//! flight`, with in flight = wheel + queues), that the wheel never yields an item early nor
//! keeps one that is due, and that backoff waits stay within their bounds. The seed is fixed;
//! `MIXNODE_TEST_SEED` overrides it, and a failure prints it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::accounting::{DropReason, PacketCounts};
use crate::delay::{DelayWheel, WheelConfig};
use crate::forward::{Backoff, ConnectionState, PeerTable};
use crate::replay::ReplayFilter;
use crate::testing::{seed, SplitMix64};

const STEPS: usize = 30_000;
const PEER_COUNT: usize = 6;
const PEERS_MAX: usize = 5;
const QUEUE_CAPACITY: usize = 24;
const WHEEL_CAPACITY: usize = 300;
const DELAY_MAX: Duration = Duration::from_secs(2);
const FAILURES_BEFORE_GIVING_UP: u32 = 5;
const WRITES_PER_STEP: usize = 6;

struct SimPacket {
    due: Instant,
    next_hop: SocketAddr,
}

struct Sim {
    rng: SplitMix64,
    now: Instant,
    counts: PacketCounts,
    filter: ReplayFilter,
    wheel: DelayWheel<SimPacket>,
    table: PeerTable<SimPacket>,
    backoff: Backoff,
    peers: Vec<SocketAddr>,
    peer_up: Vec<bool>,
    accepted_tags: Vec<[u8; 32]>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let now = Instant::now();
        let backoff = Backoff {
            initial: Duration::from_millis(40),
            max: Duration::from_millis(700),
        };
        let config = WheelConfig {
            tick: Duration::from_millis(1),
            slot_count: 512,
            capacity: WHEEL_CAPACITY,
        };
        Sim {
            rng: SplitMix64::new(seed),
            now,
            counts: PacketCounts::default(),
            filter: ReplayFilter::with_default_rate(100_000).expect("valid size"),
            wheel: DelayWheel::new(config, now).expect("valid config"),
            table: PeerTable::new(PEERS_MAX, QUEUE_CAPACITY, backoff),
            backoff,
            peers: (0..PEER_COUNT)
                .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 1789)))
                .collect(),
            peer_up: vec![true; PEER_COUNT],
            accepted_tags: Vec::new(),
        }
    }

    fn in_flight(&self) -> i64 {
        (self.wheel.len() + self.table.queued_total()) as i64
    }

    fn check_conservation(&self) {
        assert_eq!(
            self.counts.in_flight(),
            self.in_flight(),
            "{:?}",
            self.counts
        );
    }

    /// The hop step as the processor orders it: replay lookup, record, then the delay cap.
    fn receive(&mut self) {
        self.counts.received += 1;
        let tag = if !self.accepted_tags.is_empty() && self.rng.chance(1, 8) {
            let index = self.rng.below(self.accepted_tags.len() as u64) as usize;
            self.accepted_tags[index]
        } else {
            self.rng.tag()
        };
        if self.filter.contains(&tag) {
            self.counts.drop_packet(DropReason::Replay);
            return;
        }
        self.filter.insert(&tag);
        if self.accepted_tags.len() < 1000 {
            self.accepted_tags.push(tag);
        }
        let delay_cap_millis = DELAY_MAX.as_millis() as u64;
        let delay = Duration::from_micros(self.rng.below(delay_cap_millis * 1000 * 21 / 20));
        if delay > DELAY_MAX {
            self.counts.drop_packet(DropReason::DelayOverCap);
            return;
        }
        let next_hop = self.peers[self.rng.below(PEER_COUNT as u64) as usize];
        let due = self.now + delay;
        if self.wheel.insert(due, SimPacket { due, next_hop }).is_err() {
            self.counts.drop_packet(DropReason::QueueFull);
        }
    }

    fn release_due(&mut self) {
        let now = self.now;
        let mut released = Vec::new();
        self.wheel.pop_due(now, &mut |packet| released.push(packet));
        let mut previous_due = None;
        for packet in released {
            assert!(packet.due <= now, "released early");
            assert!(previous_due <= Some(packet.due), "released out of order");
            previous_due = Some(packet.due);
            match self.table.get_or_insert(packet.next_hop) {
                Ok(peer) => {
                    if peer.queue.push(packet).is_err() {
                        self.counts.drop_packet(DropReason::QueueFull);
                    }
                }
                Err(_) => self.counts.drop_packet(DropReason::QueueFull),
            }
        }
        if let Some(next_due) = self.wheel.next_due() {
            assert!(next_due > now, "a due packet was left in the wheel");
        }
    }

    fn check_backoff(&self, state: ConnectionState, failures: u32) {
        let ConnectionState::BackingOff { until } = state else {
            panic!("expected backing off, got {state:?}");
        };
        let wait = until - self.now;
        assert_eq!(wait, self.backoff.delay_after(failures));
        assert!(wait >= self.backoff.initial && wait <= self.backoff.max);
    }

    fn drive_peers(&mut self) {
        let now = self.now;
        for (index, address) in self.peers.clone().into_iter().enumerate() {
            let up = self.peer_up[index];
            let Some(peer) = self.table.get_mut(&address) else {
                continue;
            };
            match peer.state.state() {
                ConnectionState::Idle | ConnectionState::BackingOff { .. } => {
                    if peer.state.failures() >= FAILURES_BEFORE_GIVING_UP {
                        let mut dropped = 0;
                        peer.queue.drain(&mut |_| dropped += 1);
                        for _ in 0..dropped {
                            self.counts.drop_packet(DropReason::NextHopUnreachable);
                        }
                        self.table.remove(&address);
                    } else if !peer.queue.is_empty() && peer.state.may_connect(now) {
                        peer.state.on_connect_started(now);
                    }
                }
                ConnectionState::Connecting => {
                    if up {
                        peer.state.on_connected();
                    } else {
                        peer.state.on_connect_failed(now);
                        let (state, failures) = (peer.state.state(), peer.state.failures());
                        self.check_backoff(state, failures);
                    }
                }
                ConnectionState::Connected => {
                    if up {
                        for _ in 0..WRITES_PER_STEP {
                            if peer.queue.pop().is_none() {
                                break;
                            }
                            self.counts.forwarded += 1;
                        }
                    } else {
                        peer.state.on_write_failed(now);
                        let (state, failures) = (peer.state.state(), peer.state.failures());
                        self.check_backoff(state, failures);
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        match self.rng.below(10) {
            0..=4 => {
                for _ in 0..=self.rng.below(6) {
                    self.receive();
                    self.check_conservation();
                }
            }
            5..=8 => {
                let micros = if self.rng.chance(1, 40) {
                    self.rng.below(3_000_000)
                } else {
                    self.rng.below(40_000)
                };
                self.now += Duration::from_micros(micros);
            }
            _ => {
                let index = self.rng.below(PEER_COUNT as u64) as usize;
                self.peer_up[index] = !self.peer_up[index];
            }
        }
        self.release_due();
        self.check_conservation();
        self.drive_peers();
        self.check_conservation();
    }

    fn shut_down(&mut self) {
        let mut dropped = 0u64;
        self.wheel.drain_all(&mut |_| dropped += 1);
        for (_, peer) in self.table.iter_mut() {
            peer.queue.drain(&mut |_| dropped += 1);
        }
        for _ in 0..dropped {
            self.counts.drop_packet(DropReason::Shutdown);
        }
        self.check_conservation();
        assert_eq!(self.counts.in_flight(), 0);
    }
}

#[test]
fn simulated_node_conserves_packets_and_keeps_its_bounds() {
    let seed = seed();
    eprintln!(
        "simulation seed {seed} (set {} to replay)",
        crate::testing::SEED_ENV
    );
    let mut sim = Sim::new(seed);
    for _ in 0..STEPS {
        sim.step();
        assert!(sim.wheel.len() <= WHEEL_CAPACITY);
        assert!(sim.table.len() <= PEERS_MAX);
    }
    sim.shut_down();
    let counts = sim.counts;
    eprintln!(
        "{counts:?}, table refusals {}",
        sim.table.rejected_table_full()
    );
    // The run must have exercised every path it claims to check.
    assert!(counts.forwarded > 0);
    for reason in [
        DropReason::Replay,
        DropReason::DelayOverCap,
        DropReason::QueueFull,
        DropReason::NextHopUnreachable,
    ] {
        assert!(counts.dropped[reason as usize] > 0, "no {reason:?} drop");
    }
    assert_eq!(
        counts.received,
        counts.forwarded + counts.dropped_total(),
        "every packet ends forwarded or dropped"
    );
}
