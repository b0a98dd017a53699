//! The engine's whole policy for one shard, with no I/O: [`ShardCore`].
//!
//! In the manner of quinn-proto's `Endpoint`, the core owns the hop processor (with its replay
//! filter), the delay wheel, the next-hop table (queues and connection states), the packet
//! counters and the shutdown phase. Time comes in as a `now` argument and nothing here reads a
//! socket or sleeps. Events come in as calls:
//!
//! - [`ShardCore::on_frame`]: a whole frame was read on one of this shard's connections;
//! - [`ShardCore::on_handoff`]: another shard handed this one a packet;
//! - [`ShardCore::handle_timeout`]: the time is `now` (due packets leave the wheel, the table
//!   is swept, the drain deadline passes);
//! - [`ShardCore::on_connected`], [`ShardCore::on_connect_failed`], [`ShardCore::on_written`],
//!   [`ShardCore::on_write_failed`]: what became of a link's connection attempt or write.
//!
//! and work comes out: a packet for another shard goes to the [`HandoffSink`] passed in (the
//! core counts what the sink accepted or refused); links to open or wake come out of
//! [`ShardCore::poll_action`]; a link's task asks [`ShardCore::link_next`] what to do next
//! (connect, write these bytes, wait, close); [`ShardCore::next_timeout`] says when to call
//! again. Each packet's fate comes back as an [`Outcome`].
//!
//! Conservation holds between any two calls, exactly, per shard:
//! `received + taken_over = forwarded + handed_off + dropped + held + queued + writing`,
//! where the right-hand gauges are measured (wheel length, queue lengths, packets handed to a
//! write), not derived from the counters: [`ShardCore::check_conservation`].
//!
//! Routing has one function: [`crate::shard::tag_owner`] (replay tag to shard). A packet
//! crosses cores at most once: the shard that read it derives its shared secret and hands it
//! to the tag's owner, which checks the replay filter and the MAC, unwraps it, holds it and
//! writes it on its own link to the next hop (each shard keeps its own next-hop table, so a
//! busy next hop has one connection per shard). A shard asserts that it owns the tag of what
//! another shard handed it: a mismatch is a bug of ours, never peer input.
//!
//! What it deliberately does not do: accept, read, connect, write, sleep or ring doorbells
//! (that is the driver, `worker.rs`), or count connections (the driver's readers do).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::accounting::{allocation_size, DropReason};
use crate::config::{EngineSection, ForwardTo};
use crate::delay::{DelayWheel, WheelConfig, WheelConfigError};
use crate::forward::{
    Backoff, LinkId, LinkStep, NextHopTable, Refused, SweepEvent, TableFigures, TableLimits,
};
use crate::framing::FrameHeader;
use crate::sphinx::{
    ExpandedPacket, FinalHopInfo, Finished, HopProcessor, KeyUpdate, KeyUpdateError, LiveKey,
};
use crate::topology::KnownNodes;

use super::stats::ShardCounts;
use super::tag_owner;

/// Tick of the delay wheel.
pub const WHEEL_TICK: Duration = Duration::from_millis(1);
/// Slots of the delay wheel: 16 s in one revolution at 1 ms ticks.
pub const WHEEL_SLOTS: usize = 16_384;
/// Packets written to a next hop in one write call.
pub const WRITE_BATCH_PACKETS_MAX: usize = 32;
/// How often the next-hop table is swept for idle entries and expired backoffs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest time between two log lines about a full next-hop table.
pub const TABLE_FULL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One shard's limits, derived from `[engine]`: whole-node limits are split between shards
/// here, once, so that every limit below is per shard or per next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// This shard.
    pub index: usize,
    /// Shards in the engine.
    pub shards: usize,
    /// Longest delay honoured; longer ones are clamped to it.
    pub delay_max: Duration,
    /// Packets held in this shard's wheel.
    pub held_packets_max: usize,
    /// Bytes of packets this shard holds (wheel, queues, writes under way): its share of
    /// `engine.packet_memory_bytes_max`.
    pub memory_bytes_max: u64,
    /// Slots of the wheel.
    pub wheel_slots: usize,
    /// The next-hop table's limits (`engine.next_hops_max` is per shard).
    pub table: TableLimits,
    /// Packets per write.
    pub write_batch_packets_max: usize,
    /// Whether packets go only to known nodes (once the core is given them).
    pub forward_to: ForwardTo,
    /// The destination of the node's own loop packets: a final hop for it is a loop come
    /// back ([`ShardCore::take_loop`]), not a drop. None: no monitor.
    pub loop_destination: Option<[u8; 32]>,
}

impl CoreConfig {
    /// Shard `index` of `shards` under `engine`.
    pub fn new(engine: &EngineSection, index: usize, shards: usize) -> CoreConfig {
        let shards = shards.max(1);
        CoreConfig {
            index,
            shards,
            delay_max: engine.delay_max,
            held_packets_max: engine.held_packets_max,
            memory_bytes_max: engine
                .packet_memory_bytes_max
                .div_ceil(shards as u64)
                .max(1),
            wheel_slots: WHEEL_SLOTS,
            table: TableLimits {
                next_hops_max: engine.next_hops_max.max(1),
                queue_packets_max: engine.next_hop_queue_packets_max,
                queue_bytes_max: engine.next_hop_queue_bytes_max,
                idle_timeout: engine.next_hop_idle_timeout,
                failures_max: engine.next_hop_failures_max,
                backoff: Backoff {
                    initial: engine.backoff_initial,
                    max: engine.backoff_max,
                },
            },
            write_batch_packets_max: WRITE_BATCH_PACKETS_MAX,
            forward_to: engine.forward_to,
            loop_destination: None,
        }
    }
}

/// A processed packet waiting for its due time, then for its next hop's connection.
#[derive(Debug)]
pub struct Held {
    /// When it falls due: time in the node past this is added latency.
    pub due: Instant,
    /// The next hop's packet.
    pub packet: Vec<u8>,
    /// The frame header it goes out with (as it came in).
    pub header: FrameHeader,
    /// Where it goes.
    pub next_hop: SocketAddr,
}

impl Held {
    /// The memory it occupies, as the byte budgets count it: the packet's allocation (as the
    /// allocator rounds it, [`allocation_size`]) and the record around it. Encoded into a
    /// write buffer it stays counted until the write reports.
    pub fn footprint(&self) -> u64 {
        (std::mem::size_of::<Held>() + allocation_size(self.packet.capacity())) as u64
    }
}

/// A packet passed to the shard owning its replay tag, which checks the filter and the MAC,
/// unwraps it, holds it until due and forwards it on its own link to the next hop.
///
/// The expanded packet (about 700 bytes) is boxed so that a channel slot stays small: a
/// bounded channel touches every slot once it has wrapped, and inline slots would cost
/// `cross_shard_packets_max` x 700 bytes per shard.
pub struct Handoff {
    /// The packet with its shared secret.
    pub packet: Box<ExpandedPacket>,
    /// Its frame header.
    pub header: FrameHeader,
    /// When its frame was read: its delay counts from here.
    pub received_at: Instant,
}

impl Handoff {
    /// The memory it occupies in a cross-shard channel (the record and the boxed packet).
    pub fn footprint(&self) -> u64 {
        (std::mem::size_of::<Handoff>() as u64) + self.packet.footprint()
    }
}

/// Packets and bytes in flight towards one shard, shared by the shards that send to it and
/// the one that takes: a reservation is two atomic adds, never a lock. Bounds what the
/// cross-shard channel holds, whatever the size of its batches.
#[derive(Debug, Default)]
pub struct InboxBudget {
    bytes: std::sync::atomic::AtomicU64,
    packets: std::sync::atomic::AtomicU64,
}

/// The most an [`InboxBudget`] lets one shard's inbox hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxLimits {
    /// Bytes (footprints).
    pub bytes: u64,
    /// Packets.
    pub packets: u64,
}

impl InboxBudget {
    /// Reserve `packets` packets of `bytes` bytes if that keeps both totals within `limits`;
    /// whether it did.
    pub fn try_reserve(&self, bytes: u64, packets: u64, limits: InboxLimits) -> bool {
        use std::sync::atomic::Ordering;
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > limits.bytes {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        let before = self.packets.fetch_add(packets, Ordering::AcqRel);
        if before + packets > limits.packets {
            self.packets.fetch_sub(packets, Ordering::AcqRel);
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Give back `packets` packets of `bytes` reserved earlier (taken, or refused by the
    /// channel).
    pub fn release(&self, bytes: u64, packets: u64) {
        use std::sync::atomic::Ordering;
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.packets.fetch_sub(packets, Ordering::AcqRel);
    }

    /// Bytes reserved now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Why a [`HandoffSink`] did not take a handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffRefused {
    /// The target shard's channel is full.
    Full,
    /// The target shard has stopped.
    Closed,
}

/// Packets for one other shard, passed in one channel message.
pub type HandoffBatch = Vec<Handoff>;

/// Most packets in one [`HandoffBatch`]: a batch this long goes at once, shorter ones when
/// the driver flushes ([`ShardCore::flush_handoffs`]) after each read.
pub const HANDOFF_BATCH_MAX: usize = 32;

/// Where the core puts packets for other shards: the driver's bounded channels (with their
/// doorbells), or the simulation's virtual ones.
pub trait HandoffSink {
    /// Pass `batch` to shard `to` as one message, or say why not and give back what was not
    /// taken: all of it, or the packets after a first part that fitted (those given back are
    /// dropped and counted).
    fn hand_off(
        &mut self,
        to: usize,
        batch: HandoffBatch,
    ) -> Result<(), (HandoffRefused, HandoffBatch)>;
}

/// What became of one packet in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Dropped, and counted under this reason.
    Dropped(DropReason),
    /// Waiting in the batch for this shard, which goes at the next flush (or at once, when
    /// full); packets the channel has no room for are counted as dropped then.
    HandedOff(usize),
    /// In this shard's wheel until `due`: a driver sleeping past it must wake.
    Held {
        /// When it falls due.
        due: Instant,
    },
    /// Already due: in its next hop's queue.
    Queued,
    /// One of the node's own loops, come back: for the monitor.
    Looped,
}

/// One of the node's own loop packets came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopArrival {
    /// The identifier the monitor put in it.
    pub identifier: [u8; 16],
    /// When its frame was read.
    pub at: Instant,
}

/// Loop arrivals a shard keeps for its driver; more are counted and not kept.
pub const LOOP_ARRIVALS_MAX: usize = 256;

/// Work for the driver that no call returns directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new next-hop entry: start a task that asks [`ShardCore::link_next`] what to do.
    Open {
        /// The entry's link.
        link: LinkId,
        /// Where it goes.
        next_hop: SocketAddr,
    },
    /// The task of `link` waits and has something to do (work, or closing): wake it.
    Wake {
        /// The link.
        link: LinkId,
    },
}

/// Where the shard stands in shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Mixing.
    Running,
    /// Not accepting; forwarding what falls due until the deadline.
    Draining(Instant),
    /// Past the deadline: everything left was dropped for shutdown, and so is what comes.
    Closed,
}

/// What the core counts beyond packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreFigures {
    /// Packets held in the wheel.
    pub held: u64,
    /// Packets in next-hop queues.
    pub queued: u64,
    /// Packets handed to writes under way.
    pub writing: u64,
    /// Packets waiting for a batch to another shard.
    pub crossing: u64,
    /// The next-hop table.
    pub table: TableFigures,
    /// Packets whose delay was over `engine.delay_max`, held for the cap instead.
    pub delays_clamped: u64,
    /// Bytes of the packets in the wheel, the queues and writes under way (footprints).
    pub bytes_held: u64,
}

/// Time spent in the two halves of the hop step and past due, for the telemetry.
pub trait Timings {
    /// The first half (parse and first multiplication) took `elapsed`.
    fn expand(&mut self, elapsed: Duration);
    /// The second half (replay, MAC, unwrap) took `elapsed`.
    fn unwrap(&mut self, elapsed: Duration);
    /// A packet went out `past_due` after its due time.
    fn added_latency(&mut self, past_due: Duration);
}

/// Timings that are not recorded (the simulation, tests).
pub struct NoTimings;

impl Timings for NoTimings {
    fn expand(&mut self, _: Duration) {}
    fn unwrap(&mut self, _: Duration) {}
    fn added_latency(&mut self, _: Duration) {}
}

/// One shard's engine state and policy. See the module documentation.
pub struct ShardCore {
    config: CoreConfig,
    processor: HopProcessor,
    wheel: DelayWheel<Held>,
    table: NextHopTable<Held>,
    counts: ShardCounts,
    phase: Phase,
    actions: VecDeque<Action>,
    next_sweep: Instant,
    delays_clamped: u64,
    /// Footprints of the packets in the wheel (the table counts its own).
    wheel_bytes: u64,
    table_full_logged_at: Option<Instant>,
    filter_generations_seen: u64,
    /// Reads the clock for the processing-time histograms only; never for a decision.
    stopwatch: fn() -> Instant,
    /// Packets that fell due in one [`Self::handle_timeout`], reused.
    due: Vec<Held>,
    /// The nodes packets may go to, with `forward_to = "known"`; None: any.
    known: Option<Arc<KnownNodes>>,
    /// Loops come back, for the driver to pass to the monitor.
    loops: VecDeque<LoopArrival>,
    /// Loop arrivals not kept because [`LOOP_ARRIVALS_MAX`] were waiting.
    loops_unreported: u64,
    /// Per other shard, the packets waiting to be handed to it in one batch.
    outgoing: Vec<HandoffBatch>,
    /// Packets in `outgoing`.
    crossing: usize,
    /// Batches handed to other shards.
    batches_sent: u64,
}

impl ShardCore {
    /// A core for `config` that unwraps with `processor`, its wheel's tick 0 at `now`.
    /// `stopwatch` times the hop step for the telemetry (`Instant::now` in the node).
    pub fn new(
        config: CoreConfig,
        processor: HopProcessor,
        now: Instant,
        stopwatch: fn() -> Instant,
    ) -> Result<ShardCore, WheelConfigError> {
        let wheel = DelayWheel::new(
            WheelConfig {
                tick: WHEEL_TICK,
                slot_count: config.wheel_slots,
                capacity: config.held_packets_max,
            },
            now,
        )?;
        Ok(ShardCore {
            config,
            processor,
            wheel,
            table: NextHopTable::new(config.table),
            counts: ShardCounts::default(),
            phase: Phase::Running,
            actions: VecDeque::new(),
            next_sweep: now + SWEEP_INTERVAL,
            delays_clamped: 0,
            wheel_bytes: 0,
            table_full_logged_at: None,
            filter_generations_seen: 0,
            stopwatch,
            due: Vec::with_capacity(4096),
            known: None,
            loops: VecDeque::new(),
            loops_unreported: 0,
            outgoing: (0..config.shards.max(1))
                .map(|to| {
                    let capacity = if to == config.index {
                        0
                    } else {
                        HANDOFF_BATCH_MAX
                    };
                    Vec::with_capacity(capacity)
                })
                .collect(),
            crossing: 0,
            batches_sent: 0,
        })
    }

    /// This shard's limits.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The hop processor (for its replay filter's figures).
    pub fn processor(&self) -> &HopProcessor {
        &self.processor
    }

    /// Change the live keys between two packets (see [`HopProcessor::apply`]): the purged
    /// keys come back, for the driver to free off the packet path.
    pub fn apply_keys(&mut self, update: KeyUpdate) -> Result<Vec<LiveKey>, KeyUpdateError> {
        let purged = self.processor.apply(update)?;
        self.filter_generations_seen = self.processor.replay_filter().generations_turned();
        Ok(purged)
    }

    /// The nodes packets may go to from now on (None: no topology, any address). Ignored
    /// with `forward_to = "any"`. The old set comes back, to be freed by the caller.
    pub fn set_known(&mut self, known: Option<Arc<KnownNodes>>) -> Option<Arc<KnownNodes>> {
        let known = known.filter(|_| self.config.forward_to == ForwardTo::Known);
        std::mem::replace(&mut self.known, known)
    }

    /// The known nodes the core forwards to, if it checks.
    pub fn known(&self) -> Option<&Arc<KnownNodes>> {
        self.known.as_ref()
    }

    /// Packet counters.
    pub fn counts(&self) -> ShardCounts {
        self.counts
    }

    /// Where shutdown stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Gauges and table figures.
    pub fn figures(&self) -> CoreFigures {
        CoreFigures {
            held: self.wheel.len() as u64,
            queued: self.table.queued() as u64,
            writing: self.table.writing() as u64,
            crossing: self.crossing as u64,
            table: self.table.figures(),
            delays_clamped: self.delays_clamped,
            bytes_held: self.bytes_held(),
        }
    }

    /// Footprints of the packets in the wheel, the queues and the writes under way: what
    /// `memory_bytes_max` bounds.
    pub fn bytes_held(&self) -> u64 {
        self.wheel_bytes + self.table.bytes()
    }

    /// Packets in this shard now, measured: wheel, queues, writes under way, and batches not
    /// yet handed to other shards.
    pub fn in_flight(&self) -> u64 {
        (self.wheel.len() + self.table.queued() + self.table.writing() + self.crossing) as u64
    }

    /// Batches handed to other shards so far (each one channel message and at most one
    /// doorbell).
    pub fn batches_sent(&self) -> u64 {
        self.batches_sent
    }

    /// Per next hop: address, packets written, packets dropped.
    pub fn next_hop_counts(&self) -> impl Iterator<Item = (SocketAddr, u64, u64)> + '_ {
        self.table.counts()
    }

    /// Asserts that the counters and the measured gauges agree, and that the table's running
    /// totals match its entries. Walks every entry: for tests and the simulation.
    pub fn check_conservation(&self) {
        let (queued, writing) = self.table.recount();
        assert_eq!(queued, self.table.queued(), "queued total");
        assert_eq!(writing, self.table.writing(), "writing total");
        if self.wheel.is_empty() {
            assert_eq!(self.wheel_bytes, 0, "wheel bytes with no packet held");
        }
        if self.table.queued() + self.table.writing() == 0 {
            assert_eq!(self.table.bytes(), 0, "table bytes with no packet queued");
        }
        assert!(
            self.bytes_held() <= self.config.memory_bytes_max,
            "bytes held {} over the budget {}",
            self.bytes_held(),
            self.config.memory_bytes_max
        );
        let waiting: usize = self.outgoing.iter().map(Vec::len).sum();
        assert_eq!(waiting, self.crossing, "packets waiting for other shards");
        let c = &self.counts;
        let came = c.packets.received + c.taken_over;
        let went =
            c.packets.forwarded + c.handed_off + c.packets.dropped_total() + c.packets.looped;
        assert_eq!(
            came,
            went + self.in_flight(),
            "shard {}: {c:?}, held {}, queued {queued}, writing {writing}",
            self.config.index,
            self.wheel.len()
        );
    }

    fn drop_packet(&mut self, reason: DropReason) -> Outcome {
        self.counts.packets.drop_packet(reason);
        Outcome::Dropped(reason)
    }

    /// A whole frame (`header`, packet `bytes`) was read at `now`.
    pub fn on_frame(
        &mut self,
        header: FrameHeader,
        bytes: &[u8],
        now: Instant,
        sink: &mut impl HandoffSink,
        timings: &mut impl Timings,
    ) -> Outcome {
        self.counts.packets.received += 1;
        if self.phase == Phase::Closed {
            return self.drop_packet(DropReason::Shutdown);
        }
        if let Err(reason) = header.check_mixable() {
            return self.drop_packet(reason);
        }
        let started = (self.stopwatch)();
        let expanded = self.processor.expand_for(bytes, header.key_rotation);
        timings.expand((self.stopwatch)().saturating_duration_since(started));
        let packet = match expanded {
            Ok(packet) => packet,
            Err(reason) => return self.drop_packet(reason),
        };
        let owner = tag_owner(packet.replay_tag(), self.config.shards);
        if owner == self.config.index {
            return self.unwrap_packet(packet, header, now, timings);
        }
        self.send(
            owner,
            Handoff {
                packet: Box::new(packet),
                header,
                received_at: now,
            },
            sink,
        )
    }

    /// A frame that cannot be decoded (the stream is then closed): counted as received and
    /// dropped as [`DropReason::BadFrame`].
    pub fn on_bad_frame(&mut self) -> Outcome {
        self.counts.packets.received += 1;
        self.drop_packet(DropReason::BadFrame)
    }

    /// Another shard handed this one `handoff`: its delay counts from when it was read.
    ///
    /// # Panics
    /// If this shard does not own the packet's replay tag: a routing bug.
    pub fn on_handoff(&mut self, handoff: Handoff, timings: &mut impl Timings) -> Outcome {
        self.counts.taken_over += 1;
        if self.phase == Phase::Closed {
            return self.drop_packet(DropReason::Shutdown);
        }
        let Handoff {
            packet,
            header,
            received_at,
        } = handoff;
        assert_eq!(
            tag_owner(packet.replay_tag(), self.config.shards),
            self.config.index,
            "handed a replay tag this shard does not own"
        );
        self.unwrap_packet(*packet, header, received_at, timings)
    }

    /// Into the batch for shard `to`, which goes at once when full.
    fn send(&mut self, to: usize, handoff: Handoff, sink: &mut impl HandoffSink) -> Outcome {
        self.outgoing[to].push(handoff);
        self.crossing += 1;
        if self.outgoing[to].len() >= HANDOFF_BATCH_MAX {
            self.flush_to(to, sink);
        }
        Outcome::HandedOff(to)
    }

    /// Hand every waiting batch to its shard: the driver calls this after each read's frames
    /// and on each round of its pump, so a packet waits for a batch no longer than one read.
    /// Whether any batch went.
    pub fn flush_handoffs(&mut self, sink: &mut impl HandoffSink) -> bool {
        if self.crossing == 0 {
            return false;
        }
        for to in 0..self.outgoing.len() {
            if !self.outgoing[to].is_empty() {
                self.flush_to(to, sink);
            }
        }
        true
    }

    fn flush_to(&mut self, to: usize, sink: &mut impl HandoffSink) {
        let batch = std::mem::replace(
            &mut self.outgoing[to],
            Vec::with_capacity(HANDOFF_BATCH_MAX),
        );
        let packets = batch.len();
        self.crossing -= packets;
        match sink.hand_off(to, batch) {
            Ok(()) => {
                self.counts.handed_off += packets as u64;
                self.batches_sent += 1;
            }
            Err((refused, mut left)) => {
                // The sink may have taken the first packets and given back the rest.
                let taken = packets - left.len();
                if taken > 0 {
                    self.counts.handed_off += taken as u64;
                    self.batches_sent += 1;
                }
                let reason = match refused {
                    HandoffRefused::Full => DropReason::HandoffFull,
                    HandoffRefused::Closed => DropReason::Shutdown,
                };
                self.counts.packets.dropped[reason as usize] += left.len() as u64;
                if left.capacity() >= HANDOFF_BATCH_MAX {
                    // The allocation is kept for the next batch.
                    left.clear();
                    self.outgoing[to] = left;
                }
            }
        }
    }

    /// Replay check, MAC, unwrap; then into this shard's wheel.
    fn unwrap_packet(
        &mut self,
        packet: ExpandedPacket,
        header: FrameHeader,
        received_at: Instant,
        timings: &mut impl Timings,
    ) -> Outcome {
        let started = (self.stopwatch)();
        let result = self.processor.finish_any(packet, self.config.delay_max);
        timings.unwrap((self.stopwatch)().saturating_duration_since(started));
        self.note_filter_generation();
        let hop = match result {
            Ok(Finished::Forward(hop)) => hop,
            Ok(Finished::Final(info)) => return self.final_hop(info, received_at),
            Err(reason) => return self.drop_packet(reason),
        };
        if let Some(known) = &self.known {
            if !known.contains(hop.next_hop.ip()) {
                return self.drop_packet(DropReason::NextHopUnknown);
            }
        }
        if hop.delay_clamped {
            self.delays_clamped += 1;
        }
        let held = Held {
            due: received_at + hop.delay,
            packet: hop.packet,
            header,
            next_hop: hop.next_hop,
        };
        self.hold(held, received_at)
    }

    /// A packet whose final hop is this node: one of its own loops (kept for the monitor),
    /// or a drop.
    fn final_hop(&mut self, info: FinalHopInfo, at: Instant) -> Outcome {
        if self.config.loop_destination != Some(info.destination) {
            return self.drop_packet(DropReason::FinalHop);
        }
        self.counts.packets.looped += 1;
        if self.loops.len() < LOOP_ARRIVALS_MAX {
            self.loops.push_back(LoopArrival {
                identifier: info.identifier,
                at,
            });
        } else {
            self.loops_unreported += 1;
        }
        Outcome::Looped
    }

    /// The next loop come back, for the monitor.
    pub fn take_loop(&mut self) -> Option<LoopArrival> {
        self.loops.pop_front()
    }

    /// Loop arrivals not kept for the monitor (too many waiting).
    pub fn loops_unreported(&self) -> u64 {
        self.loops_unreported
    }

    /// Log when the replay filter turned a generation over (once per `capacity` packets).
    fn note_filter_generation(&mut self) {
        let filter = self.processor.replay_filter();
        let turned = filter.generations_turned();
        if turned != self.filter_generations_seen {
            self.filter_generations_seen = turned;
            tracing::info!(
                shard = self.config.index,
                generations_turned = turned,
                remembered_at_least = filter.capacity(),
                "replay filter: cleared its older generation; the most recent tags are still remembered"
            );
        }
    }

    /// Into the wheel, or straight to the queue when already due at `now`, if the shard's
    /// memory budget has room for it.
    fn hold(&mut self, held: Held, now: Instant) -> Outcome {
        let bytes = held.footprint();
        if self.bytes_held() + bytes > self.config.memory_bytes_max {
            return self.drop_packet(DropReason::MemoryFull);
        }
        if held.due <= now {
            return self.enqueue(held, now);
        }
        let due = held.due;
        match self.wheel.insert(due, held) {
            Ok(()) => {
                self.wheel_bytes += bytes;
                Outcome::Held { due }
            }
            Err(_) => self.drop_packet(DropReason::WheelFull),
        }
    }

    /// A packet fell due at `now`: into its next hop's queue.
    fn enqueue(&mut self, held: Held, now: Instant) -> Outcome {
        if self.phase == Phase::Closed {
            return self.drop_packet(DropReason::Shutdown);
        }
        let next_hop = held.next_hop;
        let bytes = held.footprint();
        match self.table.push(next_hop, held, bytes, now) {
            Ok(queued) => {
                if let Some(link) = queued.evicted {
                    self.actions.push_back(Action::Wake { link });
                }
                if let Some(link) = queued.opened {
                    self.actions.push_back(Action::Open { link, next_hop });
                }
                if let Some(link) = queued.wake {
                    self.actions.push_back(Action::Wake { link });
                }
                Outcome::Queued
            }
            Err(Refused::TableFull) => {
                self.log_table_full(now);
                self.drop_packet(DropReason::NextHopTableFull)
            }
            Err(Refused::QueueFull) => self.drop_packet(DropReason::NextHopQueueFull),
            Err(Refused::Unreachable) => self.drop_packet(DropReason::NextHopUnreachable),
        }
    }

    fn log_table_full(&mut self, now: Instant) {
        let due = self
            .table_full_logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= TABLE_FULL_LOG_INTERVAL);
        if due {
            self.table_full_logged_at = Some(now);
            let figures = self.table.figures();
            tracing::warn!(
                shard = self.config.index,
                next_hops = figures.next_hops,
                refused = figures.refused,
                "next-hop table full: every entry holds packets or is connecting, so packets for new next hops are dropped as next_hop_table_full. Raise engine.next_hops_max if this node talks to that many nodes"
            );
        }
    }

    /// The time is `now`: release due packets to their queues, sweep the table about once a
    /// second, and close once past the drain deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.pop_due(now, &mut |held| due.push(held));
        for held in due.drain(..) {
            // Out of the wheel: counted again if the queue takes it.
            self.wheel_bytes -= held.footprint();
            self.enqueue(held, now);
        }
        self.due = due;
        if now >= self.next_sweep && self.phase != Phase::Closed {
            self.next_sweep = now + SWEEP_INTERVAL;
            let actions = &mut self.actions;
            self.table.sweep(now, &mut |event| {
                let link = match event {
                    SweepEvent::ClosedIdle(link) | SweepEvent::Wake(link) => link,
                };
                actions.push_back(Action::Wake { link });
            });
        }
        if let Phase::Draining(deadline) = self.phase {
            if now >= deadline {
                self.close();
            }
        }
    }

    /// When [`Self::handle_timeout`] is next needed: the wheel's next due time, the next
    /// sweep, or the drain deadline. Scans the wheel's slots from its cursor: ask it when
    /// about to sleep, not per packet.
    pub fn next_timeout(&self) -> Instant {
        let mut next = self.next_sweep;
        if let Some(due) = self.wheel.next_due() {
            next = next.min(due);
        }
        if let Phase::Draining(deadline) = self.phase {
            next = next.min(deadline);
        }
        next
    }

    /// Stop taking new work from the network; forward what falls due until `deadline`.
    pub fn begin_drain(&mut self, deadline: Instant) {
        if self.phase == Phase::Running {
            self.phase = Phase::Draining(deadline);
        }
    }

    /// Draining, and this shard holds nothing: close now rather than at the deadline (the
    /// driver asks only when no other shard holds anything either). Whether it closed.
    pub fn end_drain_early(&mut self) -> bool {
        if matches!(self.phase, Phase::Draining(_)) && self.in_flight() == 0 {
            self.close();
            return true;
        }
        false
    }

    /// Past the drain deadline: drop what is held and queued as shutdown, and wake every link
    /// so that its task closes (writes under way still report).
    fn close(&mut self) {
        self.phase = Phase::Closed;
        let mut left = 0u64;
        self.wheel.drain_all(&mut |_| left += 1);
        self.wheel_bytes = 0;
        let actions = &mut self.actions;
        self.table.drain_all(&mut |_| left += 1, &mut |link| {
            actions.push_back(Action::Wake { link })
        });
        for batch in &mut self.outgoing {
            left += batch.len() as u64;
            batch.clear();
        }
        self.crossing = 0;
        self.counts.packets.dropped[DropReason::Shutdown as usize] += left;
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// What the task of `link` (for `next_hop`) should do at `now`. For a write, the frames
    /// are encoded into `buffer` (cleared first) and each packet's due time into `dues`.
    pub fn link_next(
        &mut self,
        next_hop: SocketAddr,
        link: LinkId,
        now: Instant,
        buffer: &mut Vec<u8>,
        dues: &mut Vec<Instant>,
    ) -> LinkStep {
        buffer.clear();
        dues.clear();
        let closed = self.phase == Phase::Closed;
        let step = self.table.next_step(
            next_hop,
            link,
            now,
            self.config.write_batch_packets_max,
            &mut |held: Held| {
                let start = buffer.len();
                buffer.resize(start + held.header.encoded_len(), 0);
                held.header.encode(&mut buffer[start..]);
                buffer.extend_from_slice(&held.packet);
                dues.push(held.due);
            },
        );
        match step {
            // After close the queues are empty: a task that would wait ends instead.
            LinkStep::Wait if closed => LinkStep::Close,
            step => step,
        }
    }

    /// The connection of `link` opened.
    pub fn on_connected(&mut self, next_hop: SocketAddr, link: LinkId) {
        self.table.on_connected(next_hop, link);
    }

    /// The connection attempt of `link` failed at `now`: its queue is dropped as
    /// [`DropReason::NextHopUnreachable`], and the next hop backs off (or is forgotten).
    pub fn on_connect_failed(&mut self, next_hop: SocketAddr, link: LinkId, now: Instant) {
        let mut dropped = 0u64;
        self.table
            .on_connect_failed(next_hop, link, now, &mut |_| dropped += 1);
        self.counts.packets.dropped[DropReason::NextHopUnreachable as usize] += dropped;
    }

    /// The write of `link` (the packets with `dues`) went out at `now`.
    pub fn on_written(
        &mut self,
        next_hop: SocketAddr,
        link: LinkId,
        now: Instant,
        dues: &[Instant],
        timings: &mut impl Timings,
    ) {
        let before = self.table.writing();
        self.table.on_written(next_hop, link, now);
        let written = (before - self.table.writing()) as u64;
        self.counts.packets.forwarded += written;
        for due in dues {
            timings.added_latency(now.saturating_duration_since(*due));
        }
    }

    /// The write of `link` failed at `now`: its packets (whether any arrived cannot be known)
    /// and its queue are dropped as [`DropReason::NextHopUnreachable`]; the next hop backs
    /// off (or is forgotten).
    pub fn on_write_failed(&mut self, next_hop: SocketAddr, link: LinkId, now: Instant) {
        let mut written_lost = 0u64;
        let mut queued_lost = 0u64;
        self.table.on_write_failed(
            next_hop,
            link,
            now,
            &mut |writing| written_lost += writing as u64,
            &mut |_| queued_lost += 1,
        );
        self.counts.packets.dropped[DropReason::NextHopUnreachable as usize] +=
            written_lost + queued_lost;
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
