//! One shard: its accept loop, its readers, its pump (cross-shard inbox and delay wheel) and
//! one writer task per next hop it owns. Single-threaded: state lives in `RefCell`s and no
//! borrow is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::shared_channel::ConnectedSender;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;
use x25519_dalek::StaticSecret;

use super::stats::{ShardCounts, ShardSnapshot, ShardStats};
use super::telemetry::{PeerCounts, ShardTelemetry, TelemetryReport};
use super::{Control, Doorbell, DoorbellReceiver};
use crate::accounting::DropReason;
use crate::config::EngineSection;
use crate::delay::{DelayWheel, WheelConfig};
use crate::forward::{owner_shard, Backoff, ConnectionState, PeerQueue, PeerState};
use crate::framing::{FrameDecoder, FrameHeader};
use crate::replay::ReplayFilter;
use crate::sphinx::{ExpandedPacket, HopProcessor};

/// Longest sleep of an idle pump: bounds how late a shard notices a shutdown request and how
/// old its published figures get. Handoffs (doorbell) and packets held for less than this
/// (the wheel's next due time) wake it sooner.
const PUMP_SLEEP_MAX: Duration = Duration::from_millis(20);
/// Handoffs taken from the inbox per round before the wheel gets a turn.
const INBOX_BATCH_MAX: usize = 64;
/// Longest a reader works through frames before giving the other tasks (the writers) a turn.
const READER_TURN_MAX: Duration = Duration::from_micros(250);
/// Packets written to a next hop in one write call.
const WRITE_BATCH_PACKETS_MAX: usize = 32;
/// Tick of the delay wheel.
const WHEEL_TICK: Duration = Duration::from_millis(1);
/// Slots of the delay wheel: 16 s in one revolution at 1 ms ticks.
const WHEEL_SLOTS: usize = 16_384;
/// A write to a next hop that makes no progress for this long fails the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a shard thread needs, moved into it at start.
pub(super) struct ShardInit {
    pub index: usize,
    pub shards: usize,
    pub listener_fd: RawFd,
    pub inbox: Receiver<Handoff>,
    pub senders: Vec<Sender<Handoff>>,
    /// Doorbells of the other shards, by shard index (None for this one).
    pub bells_out: Vec<Option<Doorbell>>,
    /// This shard's doorbell, one receiver per other shard.
    pub bells_in: Vec<DoorbellReceiver>,
    pub secret: StaticSecret,
    pub filter: ReplayFilter,
    pub engine: EngineSection,
    pub control: Arc<Control>,
    pub stats: Arc<Vec<ShardStats>>,
    pub telemetry: Sender<TelemetryReport>,
}

/// A packet passed between shards.
///
/// The expanded packet (about 700 bytes) is boxed so that a channel slot stays small: a
/// bounded channel touches every slot once it has wrapped, and inline slots would cost
/// `cross_shard_packets_max` x 700 bytes per shard. One small allocation per handoff is
/// noise next to the scalar multiplications.
pub(super) enum Handoff {
    /// For the shard owning the replay tag: check, then unwrap.
    Unwrap {
        packet: Box<ExpandedPacket>,
        header: FrameHeader,
        received_at: Instant,
    },
    /// For the shard owning the next hop: hold until due, then forward.
    Hold { due: Instant, held: Held },
}

/// A processed packet waiting for its due time, then for its next hop's connection.
pub(super) struct Held {
    /// When it fell due: the time in the node past this is added latency.
    due: Instant,
    packet: Vec<u8>,
    header: FrameHeader,
    next_hop: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Running,
    /// Not accepting; forwarding what falls due until the deadline.
    Draining(Instant),
    /// Past the deadline: everything left is dropped for shutdown.
    Closed,
}

struct Peer {
    address: SocketAddr,
    queue: RefCell<PeerQueue<Held>>,
    state: Cell<PeerState>,
    wake: Semaphore,
    idle: Cell<bool>,
    sent: Cell<u64>,
    dropped: Cell<u64>,
}

struct Shard {
    index: usize,
    shards: usize,
    engine: EngineSection,
    control: Arc<Control>,
    stats: Arc<Vec<ShardStats>>,
    senders: Vec<Sender<Handoff>>,
    /// The other shards' doorbells, connected (None for this shard, or until connected).
    bells: RefCell<Vec<Option<ConnectedSender<()>>>>,
    inbox: Receiver<Handoff>,
    /// Wakes a sleeping pump: a doorbell rang, or a packet due before its wake-up was held.
    pump_wake: Semaphore,
    /// When the sleeping pump will wake on its own; None while it runs.
    pump_sleeping_until: Cell<Option<Instant>>,
    processor: RefCell<HopProcessor>,
    wheel: RefCell<DelayWheel<Held>>,
    peers: RefCell<HashMap<SocketAddr, Rc<Peer>>>,
    peers_max: usize,
    connections_max: usize,
    counts: RefCell<ShardCounts>,
    queued: Cell<u64>,
    connections_inbound: Cell<u64>,
    connections_outbound: Cell<u64>,
    connections_refused: Cell<u64>,
    accept_errors: Cell<u64>,
    read_timeouts: Cell<u64>,
    phase: Cell<Phase>,
    readers: RefCell<HashMap<u64, JoinHandle<()>>>,
    next_reader_id: Cell<u64>,
    writers: RefCell<Vec<JoinHandle<()>>>,
    replay_warned: Cell<bool>,
    /// Scratch for packets that fell due in one round of the pump.
    due: RefCell<Vec<Held>>,
    telemetry: RefCell<ShardTelemetry>,
}

/// The shard's main future: returns its final counts after shutdown.
pub(super) async fn run(init: ShardInit) -> ShardCounts {
    // SAFETY: the fd is a listening TCP socket created for this shard and owned by nothing else.
    let listener = unsafe { TcpListener::from_raw_fd(init.listener_fd) };
    let shards = init.shards;
    let e = &init.engine;
    let wheel = DelayWheel::new(
        WheelConfig {
            tick: WHEEL_TICK,
            slot_count: WHEEL_SLOTS,
            capacity: e.held_packets_max,
        },
        Instant::now(),
    );
    let wheel = match wheel {
        Ok(w) => w,
        Err(err) => {
            tracing::error!(shard = init.index, error = %err, "cannot size the delay wheel");
            return ShardCounts::default();
        }
    };
    let shard = Rc::new(Shard {
        index: init.index,
        shards,
        peers_max: e.peers_max.div_ceil(shards).max(1),
        connections_max: e.connections_inbound_max.div_ceil(shards).max(1),
        engine: init.engine.clone(),
        control: init.control,
        stats: init.stats,
        senders: init.senders,
        bells: RefCell::new((0..shards).map(|_| None).collect()),
        inbox: init.inbox,
        pump_wake: Semaphore::new(0),
        pump_sleeping_until: Cell::new(None),
        processor: RefCell::new(HopProcessor::with_kind(
            init.secret,
            init.filter,
            init.engine.hop_processor,
        )),
        wheel: RefCell::new(wheel),
        peers: RefCell::new(HashMap::new()),
        counts: RefCell::new(ShardCounts::default()),
        queued: Cell::new(0),
        connections_inbound: Cell::new(0),
        connections_outbound: Cell::new(0),
        connections_refused: Cell::new(0),
        accept_errors: Cell::new(0),
        read_timeouts: Cell::new(0),
        phase: Cell::new(Phase::Running),
        readers: RefCell::new(HashMap::new()),
        next_reader_id: Cell::new(0),
        writers: RefCell::new(Vec::new()),
        replay_warned: Cell::new(false),
        due: RefCell::new(Vec::with_capacity(4096)),
        telemetry: RefCell::new(ShardTelemetry::new(
            init.index,
            init.telemetry,
            Instant::now(),
        )),
    });
    for bell in init.bells_in {
        glommio::spawn_local(listen_for_doorbell(Rc::clone(&shard), bell)).detach();
    }
    // Connected before accepting: a handoff never goes out without its ring. Each connect
    // waits for the other shard's receiver, which that shard connects in a task of its own.
    for (target, bell) in init.bells_out.into_iter().enumerate() {
        if let Some(bell) = bell {
            let connected = bell.connect().await;
            shard.bells.borrow_mut()[target] = Some(connected);
        }
    }
    let accept = glommio::spawn_local(accept_loop(Rc::clone(&shard), listener)).detach();
    let counts = pump(Rc::clone(&shard), accept).await;
    tracing::info!(
        shard = shard.index,
        received = counts.packets.received,
        forwarded = counts.packets.forwarded,
        dropped = counts.packets.dropped_total(),
        handed_off = counts.handed_off,
        taken_over = counts.taken_over,
        "shard stopped"
    );
    counts
}

impl Shard {
    fn drop_packet(&self, reason: DropReason) {
        self.counts.borrow_mut().packets.drop_packet(reason);
    }

    fn drop_packets(&self, reason: DropReason, count: u64) {
        self.counts.borrow_mut().packets.dropped[reason as usize] += count;
    }

    /// A whole frame arrived on one of this shard's connections.
    fn on_frame(self: &Rc<Self>, header: FrameHeader, bytes: &[u8], now: Instant) {
        self.counts.borrow_mut().packets.received += 1;
        if let Err(reason) = header.check_mixable() {
            self.drop_packet(reason);
            return;
        }
        let expanded = self.processor.borrow().expand(bytes);
        self.telemetry.borrow_mut().record_expand(now.elapsed());
        match expanded {
            Err(reason) => self.drop_packet(reason),
            Ok(packet) => {
                let owner = super::tag_owner(packet.replay_tag(), self.shards);
                if owner == self.index {
                    self.unwrap_packet(packet, header, now);
                } else {
                    self.send(
                        owner,
                        Handoff::Unwrap {
                            packet: Box::new(packet),
                            header,
                            received_at: now,
                        },
                    );
                }
            }
        }
    }

    /// Replay check, MAC, unwrap; then route to the next hop's owner.
    fn unwrap_packet(
        self: &Rc<Self>,
        packet: ExpandedPacket,
        header: FrameHeader,
        received_at: Instant,
    ) {
        let started = Instant::now();
        let result = self
            .processor
            .borrow_mut()
            .finish(packet, self.engine.delay_max);
        self.telemetry.borrow_mut().record_unwrap(started.elapsed());
        match result {
            Err(reason) => self.drop_packet(reason),
            Ok(hop) => {
                let due = received_at + hop.delay;
                let held = Held {
                    due,
                    packet: hop.packet,
                    header,
                    next_hop: hop.next_hop,
                };
                let owner = owner_shard(&hop.next_hop, self.shards);
                if owner == self.index {
                    self.hold(due, held);
                } else {
                    self.send(owner, Handoff::Hold { due, held });
                }
            }
        }
    }

    fn hold(self: &Rc<Self>, due: Instant, held: Held) {
        if self.phase.get() == Phase::Closed {
            self.drop_packet(DropReason::Shutdown);
            return;
        }
        // Already due (a zero delay): straight to the next hop's queue, not a wheel round.
        if due <= Instant::now() {
            self.enqueue(held);
            return;
        }
        if self.wheel.borrow_mut().insert(due, held).is_err() {
            self.drop_packet(DropReason::QueueFull);
            return;
        }
        // The pump may be asleep until later than this packet is due.
        if self
            .pump_sleeping_until
            .get()
            .is_some_and(|until| due < until)
        {
            self.wake_pump();
        }
    }

    /// Wake the pump if it sleeps; at most one wake per sleep.
    fn wake_pump(&self) {
        if self.pump_sleeping_until.take().is_some() {
            self.pump_wake.signal(1);
        }
    }

    fn send(&self, target: usize, handoff: Handoff) {
        if self.phase.get() == Phase::Closed {
            self.drop_packet(DropReason::Shutdown);
            return;
        }
        match self.senders[target].try_send(handoff) {
            Ok(()) => {
                self.counts.borrow_mut().handed_off += 1;
                // A full slot means a ring is already pending; a closed one, that the other
                // shard has stopped (its inbox is drained at close).
                if let Some(bell) = &self.bells.borrow()[target] {
                    let _ = bell.try_send(());
                }
            }
            Err(TrySendError::Full(_)) => self.drop_packet(DropReason::QueueFull),
            Err(TrySendError::Disconnected(_)) => self.drop_packet(DropReason::Shutdown),
        }
    }

    fn on_handoff(self: &Rc<Self>, handoff: Handoff) {
        self.counts.borrow_mut().taken_over += 1;
        if self.phase.get() == Phase::Closed {
            self.drop_packet(DropReason::Shutdown);
            return;
        }
        match handoff {
            Handoff::Unwrap {
                packet,
                header,
                received_at,
            } => self.unwrap_packet(*packet, header, received_at),
            Handoff::Hold { due, held } => self.hold(due, held),
        }
    }

    /// A held packet fell due: queue it for its next hop.
    fn enqueue(self: &Rc<Self>, held: Held) {
        let peer = {
            let mut peers = self.peers.borrow_mut();
            match peers.get(&held.next_hop) {
                Some(peer) => Rc::clone(peer),
                None => {
                    if peers.len() >= self.peers_max {
                        drop(peers);
                        self.drop_packet(DropReason::QueueFull);
                        return;
                    }
                    let peer = Rc::new(Peer {
                        address: held.next_hop,
                        queue: RefCell::new(PeerQueue::new(self.engine.peer_queue_packets_max)),
                        state: Cell::new(PeerState::new(Backoff {
                            initial: self.engine.backoff_initial,
                            max: self.engine.backoff_max,
                        })),
                        wake: Semaphore::new(0),
                        idle: Cell::new(false),
                        sent: Cell::new(0),
                        dropped: Cell::new(0),
                    });
                    peers.insert(held.next_hop, Rc::clone(&peer));
                    let writer =
                        glommio::spawn_local(writer(Rc::clone(self), Rc::clone(&peer))).detach();
                    self.writers.borrow_mut().push(writer);
                    peer
                }
            }
        };
        if peer.queue.borrow_mut().push(held).is_err() {
            self.drop_packet(DropReason::QueueFull);
            peer.dropped.set(peer.dropped.get() + 1);
            return;
        }
        self.queued.set(self.queued.get() + 1);
        if peer.idle.replace(false) {
            peer.wake.signal(1);
        }
    }

    fn publish(&self) {
        let processor = self.processor.borrow();
        let filter = processor.replay_filter();
        let snapshot = ShardSnapshot {
            counts: *self.counts.borrow(),
            held: self.wheel.borrow().len() as u64,
            queued: self.queued.get(),
            connections_inbound: self.connections_inbound.get(),
            connections_outbound: self.connections_outbound.get(),
            connections_refused: self.connections_refused.get(),
            accept_errors: self.accept_errors.get(),
            read_timeouts: self.read_timeouts.get(),
            replay_filter_items: filter.items_inserted(),
            replay_filter_capacity: filter.capacity(),
            replay_filter_fill_ppm: (filter.fill_ratio() * 1e6) as u64,
        };
        if filter.is_over_capacity() && !self.replay_warned.replace(true) {
            tracing::warn!(
                shard = self.index,
                items = snapshot.replay_filter_items,
                capacity = snapshot.replay_filter_capacity,
                "replay filter is past the packet count it was sized for: its false-positive rate now exceeds the configured one. Raise engine.replay_filter_packets_max"
            );
        }
        self.stats[self.index].publish(&snapshot);
    }

    /// About once a second, send the telemetry report (histograms and per-next-hop counts)
    /// to the control thread. Never blocks; allocates only when a report is due.
    fn publish_telemetry(&self, now: Instant) {
        if !self.telemetry.borrow().report_due(now) {
            return;
        }
        let peers = self
            .peers
            .borrow()
            .values()
            .map(|peer| PeerCounts {
                next_hop: peer.address,
                sent: peer.sent.get(),
                dropped: peer.dropped.get(),
            })
            .collect();
        self.telemetry.borrow_mut().send_report(now, peers);
    }

    fn closing(&self) -> bool {
        self.phase.get() == Phase::Closed
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if shard.connections_inbound.get() as usize >= shard.connections_max {
                    shard
                        .connections_refused
                        .set(shard.connections_refused.get() + 1);
                    drop(stream);
                    continue;
                }
                let id = shard.next_reader_id.get();
                shard.next_reader_id.set(id + 1);
                let task = glommio::spawn_local(reader(Rc::clone(&shard), stream, id)).detach();
                shard.readers.borrow_mut().insert(id, task);
            }
            Err(e) => {
                // Out of descriptors or a transient error: count, back off, log once a minute.
                shard.accept_errors.set(shard.accept_errors.get() + 1);
                let now = Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60)) {
                    log_accept_error(shard.index, shard.accept_errors.get(), &e);
                    last_error_log = Some(now);
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The once-a-minute line for failed accepts; out of descriptors names the fix.
fn log_accept_error(shard: usize, accept_errors: u64, error: &glommio::GlommioError<()>) {
    let os_error = match error {
        glommio::GlommioError::IoError(e) => e.raw_os_error(),
        glommio::GlommioError::EnhancedIoError { source, .. } => source.raw_os_error(),
        _ => None,
    };
    let out_of_descriptors = matches!(os_error, Some(libc::EMFILE | libc::ENFILE));
    if out_of_descriptors {
        tracing::warn!(
            shard,
            accept_errors,
            %error,
            "accept failed: out of file descriptors; backing off. Fix: raise the open-files limit ({} in the systemd unit, or {})",
            crate::node::limits::UNIT_FIX,
            crate::node::limits::SHELL_FIX
        );
    } else {
        tracing::warn!(shard, accept_errors, %error, "accept failed; backing off");
    }
}

async fn reader(shard: Rc<Shard>, mut stream: TcpStream, id: u64) {
    shard
        .connections_inbound
        .set(shard.connections_inbound.get() + 1);
    let mut decoder = FrameDecoder::new();
    let mut turn_started = Instant::now();
    'connection: loop {
        let timeout = (decoder.buffered_len() > 0).then_some(shard.engine.read_timeout);
        if stream.set_read_timeout(timeout).is_err() {
            break;
        }
        match stream.read(decoder.spare_mut()).await {
            Ok(0) => break,
            Ok(n) => decoder.advance(n),
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    shard.read_timeouts.set(shard.read_timeouts.get() + 1);
                }
                break;
            }
        }
        loop {
            let now = Instant::now();
            match decoder.next_frame() {
                Ok(Some(frame)) => shard.on_frame(frame.header, frame.packet, now),
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be resynchronised: count the bad frame and close.
                    shard.counts.borrow_mut().packets.received += 1;
                    shard.drop_packet(DropReason::BadFrame);
                    tracing::debug!(shard = shard.index, error = %e, "closing a corrupt stream");
                    break 'connection;
                }
            }
            // Let the writers send what the last frames produced once this turn has lasted
            // long enough: a reader whose socket always has data would otherwise hold the
            // core until glommio's preemption timer fires (100 ms), and yielding after every
            // frame would cost the writers their batching.
            if turn_started.elapsed() >= READER_TURN_MAX {
                futures_lite::future::yield_now().await;
                turn_started = Instant::now();
            }
        }
        // The pump may sleep for a while: publish what this read changed.
        shard.publish();
        // Also after each read's frames, so that writers run between reads.
        futures_lite::future::yield_now().await;
        turn_started = Instant::now();
    }
    shard
        .connections_inbound
        .set(shard.connections_inbound.get() - 1);
    shard.readers.borrow_mut().remove(&id);
}

/// The shard's clock: the cross-shard inbox, the delay wheel, publication, and shutdown.
async fn pump(shard: Rc<Shard>, accept: JoinHandle<()>) -> ShardCounts {
    let mut accept = Some(accept);
    loop {
        let mut work = 0usize;
        for _ in 0..INBOX_BATCH_MAX {
            match shard.inbox.try_recv() {
                Ok(handoff) => {
                    shard.on_handoff(handoff);
                    work += 1;
                    glommio::yield_if_needed().await;
                }
                Err(_) => break,
            }
        }
        let now = Instant::now();
        // Reused every round: taking due packets out allocates nothing once warm.
        let mut due = shard.due.take();
        shard
            .wheel
            .borrow_mut()
            .pop_due(now, &mut |held| due.push(held));
        work += due.len();
        for held in due.drain(..) {
            shard.enqueue(held);
        }
        shard.due.replace(due);
        shard.publish();
        shard.publish_telemetry(now);

        match shard.phase.get() {
            Phase::Running => {
                if let Some(deadline) = shard.control.stop_requested() {
                    if let Some(task) = accept.take() {
                        task.cancel();
                    }
                    let readers: Vec<_> = shard.readers.borrow_mut().drain().collect();
                    // A cancelled reader does not run its own bookkeeping.
                    let open = shard.connections_inbound.get();
                    shard.connections_inbound.set(open - readers.len() as u64);
                    for (_, task) in readers {
                        task.cancel();
                    }
                    shard.phase.set(Phase::Draining(deadline));
                }
            }
            Phase::Draining(deadline) => {
                if now >= deadline {
                    close(&shard).await;
                    break;
                }
            }
            Phase::Closed => break,
        }

        if work > 0 || !shard.inbox.is_empty() {
            futures_lite::future::yield_now().await;
        } else {
            pump_sleep(&shard, now).await;
        }
    }
    let counts = *shard.counts.borrow();
    shard.publish();
    counts
}

/// Sleep until the wheel's next due time (at most [`PUMP_SLEEP_MAX`]), or until woken by a
/// doorbell or an earlier packet. `next_due` scans the wheel's slots from its cursor; it is
/// asked only when the pump has nothing else to do.
async fn pump_sleep(shard: &Rc<Shard>, now: Instant) {
    let cap = now + PUMP_SLEEP_MAX;
    let until = shard
        .wheel
        .borrow()
        .next_due()
        .map_or(cap, |due| due.min(cap));
    if until <= now {
        return;
    }
    shard.pump_sleeping_until.set(Some(until));
    let sleep = glommio::timer::sleep(until.saturating_duration_since(now));
    let woken = async {
        let _ = shard.pump_wake.acquire(1).await;
    };
    futures_lite::future::or(sleep, woken).await;
    shard.pump_sleeping_until.set(None);
}

/// Hears one other shard's doorbell and wakes the pump, which drains the inbox. Ends when that
/// shard has stopped.
async fn listen_for_doorbell(shard: Rc<Shard>, bell: DoorbellReceiver) {
    let bell = bell.connect().await;
    while bell.recv().await.is_some() {
        shard.wake_pump();
    }
}

/// Past the drain deadline: drop what is held, stop the writers, and take in what other
/// shards still send until every shard has stopped sending.
async fn close(shard: &Rc<Shard>) {
    shard.phase.set(Phase::Closed);
    let mut left = 0u64;
    shard.wheel.borrow_mut().drain_all(&mut |_| left += 1);
    shard.drop_packets(DropReason::Shutdown, left);
    let peers: Vec<_> = shard.peers.borrow().values().cloned().collect();
    for peer in &peers {
        peer.wake.signal(1);
    }
    shard.control.stopped_sending.fetch_add(1, Ordering::AcqRel);
    loop {
        let all_stopped = shard.control.stopped_sending.load(Ordering::Acquire)
            >= shard.control.running.load(Ordering::Acquire);
        while let Ok(handoff) = shard.inbox.try_recv() {
            shard.on_handoff(handoff);
        }
        if all_stopped {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let writers: Vec<_> = shard.writers.borrow_mut().drain(..).collect();
    for writer in writers {
        writer.await;
    }
}

/// Drop every packet queued for `peer` with `reason`.
fn drop_queue(shard: &Shard, peer: &Peer, reason: DropReason) {
    let mut count = 0u64;
    peer.queue.borrow_mut().drain(&mut |_| count += 1);
    shard.queued.set(shard.queued.get() - count);
    shard.drop_packets(reason, count);
    peer.dropped.set(peer.dropped.get() + count);
    shard.publish();
}

/// Owns the connection to one next hop: connects with backoff and writes queued packets in
/// batches.
async fn writer(shard: Rc<Shard>, peer: Rc<Peer>) {
    let mut stream: Option<TcpStream> = None;
    let mut buffer: Vec<u8> = Vec::with_capacity(WRITE_BATCH_PACKETS_MAX * 2500);
    let mut dues = [Instant::now(); WRITE_BATCH_PACKETS_MAX];
    loop {
        if shard.closing() {
            drop_queue(&shard, &peer, DropReason::Shutdown);
            break;
        }
        if peer.queue.borrow().is_empty() {
            peer.idle.set(true);
            if peer.wake.acquire(1).await.is_err() {
                break;
            }
            continue;
        }
        if stream.is_none() {
            let now = Instant::now();
            let mut state = peer.state.get();
            if let ConnectionState::BackingOff { until } = state.state() {
                if now < until {
                    // Packets keep queueing (bounded) while we wait; wake up for shutdown.
                    let wait = until
                        .saturating_duration_since(now)
                        .min(Duration::from_millis(100));
                    glommio::timer::sleep(wait).await;
                    continue;
                }
            }
            state.on_connect_started(now);
            let connected =
                TcpStream::connect_timeout(peer.address, shard.engine.connect_timeout).await;
            match connected {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                    state.on_connected();
                    shard
                        .connections_outbound
                        .set(shard.connections_outbound.get() + 1);
                    stream = Some(s);
                }
                Err(e) => {
                    state.on_connect_failed(Instant::now());
                    tracing::debug!(shard = shard.index, peer = %peer.address, error = %e, failures = state.failures(), "next hop unreachable");
                    drop_queue(&shard, &peer, DropReason::NextHopUnreachable);
                }
            }
            peer.state.set(state);
            continue;
        }
        buffer.clear();
        let mut batch = 0u64;
        {
            let mut queue = peer.queue.borrow_mut();
            while batch < WRITE_BATCH_PACKETS_MAX as u64 {
                let Some(held) = queue.pop() else { break };
                dues[batch as usize] = held.due;
                let start = buffer.len();
                buffer.resize(start + held.header.encoded_len(), 0);
                held.header.encode(&mut buffer[start..]);
                buffer.extend_from_slice(&held.packet);
                batch += 1;
            }
        }
        shard.queued.set(shard.queued.get() - batch);
        let Some(s) = stream.as_mut() else { continue };
        match s.write_all(&buffer).await {
            Ok(()) => {
                shard.counts.borrow_mut().packets.forwarded += batch;
                peer.sent.set(peer.sent.get() + batch);
                record_added_latency(&shard, &dues[..batch as usize]);
                shard.publish();
            }
            Err(e) => {
                // Whether any of the batch arrived cannot be known: count it as not delivered.
                shard.drop_packets(DropReason::NextHopUnreachable, batch);
                peer.dropped.set(peer.dropped.get() + batch);
                tracing::debug!(shard = shard.index, peer = %peer.address, error = %e, "write to next hop failed");
                let mut state = peer.state.get();
                state.on_write_failed(Instant::now());
                peer.state.set(state);
                stream = None;
                shard
                    .connections_outbound
                    .set(shard.connections_outbound.get() - 1);
            }
        }
    }
    if stream.take().is_some() {
        shard
            .connections_outbound
            .set(shard.connections_outbound.get() - 1);
    }
}

/// A batch with these due times was just written: record each packet's time past due.
fn record_added_latency(shard: &Shard, dues: &[Instant]) {
    let now = Instant::now();
    let mut telemetry = shard.telemetry.borrow_mut();
    for due in dues {
        telemetry.record_added_latency(now.saturating_duration_since(*due));
    }
}
