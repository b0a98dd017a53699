//! The driver of one shard: its accept loop, its readers, its pump (cross-shard inbox, the
//! core's timeouts, publication, shutdown), one task per next-hop link, and the doorbells.
//! Every decision is the [`ShardCore`]'s; this file only does the I/O the core asks for and
//! reports back what happened. Single-threaded: state lives in `RefCell`s and no borrow is
//! held across an `.await`.

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

use super::core::{
    Action, CoreConfig, Handoff, HandoffBatch, HandoffRefused, HandoffSink, InboxBudget,
    InboxLimits, Outcome, Phase, ShardCore,
};
use super::inbound::{Admit, CloseReason, InboundLimits, InboundTable};
use super::noise_io::{self, NoiseReader, NoiseWriter, ReadError};
use super::stats::{KeyFigures, ShardCounts, ShardSnapshot, ShardStats};
use super::telemetry::{PeerCounts, ShardTelemetry, TelemetryReport};
use super::{Control, Doorbell, DoorbellReceiver, FilterMessage, FINAL_IMAGE};
use crate::config::EngineSection;
use crate::forward::{LinkId, LinkStep};
use crate::framing::{FrameDecoder, FrameHeader};
use crate::noise::framing::Deframer;
use crate::noise::link::Handshake;
use crate::noise::{Failure, FailurePenalties, NoiseCounts, NoiseIdentity, Role};
use crate::replay::snapshot::{FilterImage, SnapshotCursor};
use crate::sphinx::{HopProcessor, KeyUpdate, LiveKey};
use crate::topology::KnownNodes;

/// Longest sleep of an idle pump: bounds how late a shard notices a shutdown request and how
/// old its published figures get. Handoffs (doorbell) and packets held for less than this
/// (the core's next timeout) wake it sooner.
const PUMP_SLEEP_MAX: Duration = Duration::from_millis(20);
/// Handoffs taken from the inbox per round (in whole batches) before the timeouts get a turn.
const INBOX_ROUND_MAX: usize = 64;
/// Longest a reader works through frames before giving the other tasks (the writers) a turn.
const READER_TURN_MAX: Duration = Duration::from_micros(250);
/// Words of the replay filter copied per pump round while a save is under way (512 KiB,
/// tens of microseconds).
const SNAPSHOT_WORDS_PER_ROUND: usize = 64 * 1024;
/// How long every shard must be seen holding nothing before a drain ends early: several
/// pump rounds, so that a packet one shard just took from its channel shows in its figures.
const DRAIN_IDLE_CONFIRM: Duration = Duration::from_millis(60);
/// A write to a next hop that makes no progress for this long fails the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a shard thread needs, moved into it at start.
pub(super) struct ShardInit {
    pub index: usize,
    pub shards: usize,
    pub listener_fd: RawFd,
    pub inbox: Receiver<HandoffBatch>,
    pub senders: Vec<Sender<HandoffBatch>>,
    /// Packets and bytes in flight towards each shard (this one's own at `index`).
    pub inbox_budgets: Vec<Arc<InboxBudget>>,
    /// The known nodes at start (None: no topology), and the channel of later ones.
    pub known: Option<Arc<KnownNodes>>,
    pub known_updates: Receiver<Option<Arc<KnownNodes>>>,
    /// The monitor's loops (None: no monitor).
    pub loops: Option<super::LoopSink>,
    /// Doorbells of the other shards, by shard index (None for this one).
    pub bells_out: Vec<Option<Doorbell>>,
    /// This shard's doorbell, one receiver per other shard.
    pub bells_in: Vec<DoorbellReceiver>,
    /// This shard's end of the watchdog's socket pair.
    pub watchdog_fd: RawFd,
    pub processor: HopProcessor,
    /// Key changes from the rotation controller, applied between packets.
    pub key_updates: Receiver<KeyUpdate>,
    /// Where purged keys go to be freed off the packet path.
    pub purged_keys: Sender<LiveKey>,
    pub engine: EngineSection,
    pub control: Arc<Control>,
    pub stats: Arc<Vec<ShardStats>>,
    pub telemetry: Sender<TelemetryReport>,
    pub filter_images: Sender<FilterMessage>,
    /// The node's Noise key pair (None: `engine.noise = "off"`, or no key).
    pub noise: Option<NoiseIdentity>,
}

/// The cross-shard channels as the core's [`HandoffSink`]: a batch that goes in rings the
/// target's doorbell once.
struct Outbox {
    senders: Vec<Sender<HandoffBatch>>,
    /// Packets and bytes in flight towards each shard, and the most each may have.
    budgets: Vec<Arc<InboxBudget>>,
    limits: InboxLimits,
    /// The other shards' doorbells, connected (None for this shard, or until connected).
    bells: Vec<Option<ConnectedSender<()>>>,
    /// Doorbells rung (a ring taken by the slot).
    rung: u64,
}

impl HandoffSink for Outbox {
    fn hand_off(
        &mut self,
        to: usize,
        mut batch: HandoffBatch,
    ) -> Result<(), (HandoffRefused, HandoffBatch)> {
        let budget = &self.budgets[to];
        let mut bytes: u64 = batch.iter().map(Handoff::footprint).sum();
        let mut packets = batch.len() as u64;
        let mut left = None;
        if !budget.try_reserve(bytes, packets, self.limits) {
            // Not all of it fits: send the longest first part that does, give back the rest.
            (bytes, packets) = (0, 0);
            for handoff in &batch {
                let footprint = handoff.footprint();
                if !budget.try_reserve(footprint, 1, self.limits) {
                    break;
                }
                bytes += footprint;
                packets += 1;
            }
            if packets == 0 {
                return Err((HandoffRefused::Full, batch));
            }
            left = Some(batch.split_off(packets as usize));
        }
        let sent = self.senders[to].try_send(batch);
        if sent.is_ok() {
            if let Some(bell) = &self.bells[to] {
                // A full slot means a ring is already pending; a closed one, that the other
                // shard has stopped (its inbox is drained at close).
                if bell.try_send(()).is_ok() {
                    self.rung += 1;
                }
            }
        }
        match (sent, left) {
            (Ok(()), None) => Ok(()),
            (Ok(()), Some(left)) => Err((HandoffRefused::Full, left)),
            (Err(refused), left) => {
                budget.release(bytes, packets);
                let (reason, mut batch) = match refused {
                    TrySendError::Full(batch) => (HandoffRefused::Full, batch),
                    TrySendError::Disconnected(batch) => (HandoffRefused::Closed, batch),
                };
                batch.extend(left.into_iter().flatten());
                Err((reason, batch))
            }
        }
    }
}

/// The driver's side of one next-hop link: how to wake its task.
struct LinkTask {
    wake: Semaphore,
    handle: RefCell<Option<JoinHandle<()>>>,
}

struct Shard {
    index: usize,
    engine: EngineSection,
    control: Arc<Control>,
    stats: Arc<Vec<ShardStats>>,
    core: RefCell<ShardCore>,
    outbox: RefCell<Outbox>,
    inbox: Receiver<HandoffBatch>,
    /// Packets and bytes in flight towards this shard: released as handoffs are taken.
    inbox_budget: Arc<InboxBudget>,
    known_updates: Receiver<Option<Arc<KnownNodes>>>,
    /// Where loops that came back go (the monitor).
    loop_arrivals: Option<Sender<super::core::LoopArrival>>,
    /// Loop arrivals the monitor's channel had no room for.
    loops_unreported: Cell<u64>,
    /// Wakes a sleeping pump: a doorbell rang, or a packet due before its wake-up was held.
    pump_wake: Semaphore,
    /// When the sleeping pump will wake on its own; None while it runs.
    pump_sleeping_until: Cell<Option<Instant>>,
    links: RefCell<HashMap<LinkId, Rc<LinkTask>>>,
    /// Inbound connections: admission and deadlines.
    inbound: RefCell<InboundTable>,
    connections_outbound: Cell<u64>,
    connections_refused: Cell<u64>,
    accept_errors: Cell<u64>,
    read_timeouts: Cell<u64>,
    connections_evicted: Cell<u64>,
    connections_closed_idle: Cell<u64>,
    connections_closed_first_frame: Cell<u64>,
    readers: RefCell<HashMap<u64, JoinHandle<()>>>,
    next_reader_id: Cell<u64>,
    telemetry: RefCell<ShardTelemetry>,
    filter_images: Sender<FilterMessage>,
    /// The save request answered last.
    snapshot_epoch: Cell<u64>,
    /// The keys still to copy for the request under way, and the copy under way.
    snapshot_pending: RefCell<Vec<u32>>,
    snapshot: RefCell<Option<(u32, SnapshotCursor)>>,
    key_updates: Receiver<KeyUpdate>,
    purged_keys: Sender<LiveKey>,
    /// While draining, since when every shard was seen holding nothing.
    idle_since: Cell<Option<Instant>>,
    /// The node's Noise key pair, if it speaks Noise.
    noise: Option<NoiseIdentity>,
    noise_counts: RefCell<NoiseCounts>,
    /// Addresses that failed a Noise handshake lately, and until when they wait.
    noise_penalties: RefCell<FailurePenalties>,
}

/// This shard's inbound table: its shares of the node-wide limits.
fn inbound_table(
    engine: &EngineSection,
    shards: usize,
    known: Option<Arc<KnownNodes>>,
) -> InboundTable {
    let mut table = InboundTable::new(InboundLimits {
        connections_max: engine.connections_inbound_max.div_ceil(shards).max(1),
        per_ip_max: engine.connections_per_ip_max.div_ceil(shards).max(1),
        reserved_known: engine.connections_reserved_known.div_ceil(shards),
        first_frame_timeout: engine.first_frame_timeout,
        frame_timeout: engine.read_timeout,
        idle_timeout: engine.connection_idle_timeout,
    });
    table.set_known(known);
    table
}

/// The shard's main future: returns its final counts after shutdown.
pub(super) async fn run(init: ShardInit) -> ShardCounts {
    init.stats[init.index].count_syscalls_of_this_thread();
    // SAFETY: the fd is a listening TCP socket created for this shard and owned by nothing else.
    let listener = unsafe { TcpListener::from_raw_fd(init.listener_fd) };
    let shards = init.shards;
    let mut config = CoreConfig::new(&init.engine, init.index, shards);
    config.loop_destination = init.loops.as_ref().map(|l| l.destination);
    let core = match ShardCore::new(config, init.processor, Instant::now(), Instant::now) {
        Ok(mut core) => {
            core.set_known(init.known.clone());
            core
        }
        Err(err) => {
            tracing::error!(shard = init.index, error = %err, "cannot size the delay wheel");
            return ShardCounts::default();
        }
    };
    let shard = Rc::new(Shard {
        index: init.index,
        engine: init.engine.clone(),
        control: init.control,
        stats: init.stats,
        core: RefCell::new(core),
        outbox: RefCell::new(Outbox {
            senders: init.senders,
            budgets: init.inbox_budgets.clone(),
            limits: InboxLimits {
                bytes: init
                    .engine
                    .cross_shard_bytes_max
                    .div_ceil(shards as u64)
                    .max(1),
                packets: init.engine.cross_shard_packets_max as u64,
            },
            bells: (0..shards).map(|_| None).collect(),
            rung: 0,
        }),
        inbox: init.inbox,
        inbox_budget: Arc::clone(&init.inbox_budgets[init.index]),
        known_updates: init.known_updates,
        loop_arrivals: init.loops.as_ref().map(|l| l.arrivals.clone()),
        loops_unreported: Cell::new(0),
        pump_wake: Semaphore::new(0),
        pump_sleeping_until: Cell::new(None),
        links: RefCell::new(HashMap::new()),
        inbound: RefCell::new(inbound_table(&init.engine, shards, init.known)),
        connections_outbound: Cell::new(0),
        connections_refused: Cell::new(0),
        accept_errors: Cell::new(0),
        read_timeouts: Cell::new(0),
        connections_evicted: Cell::new(0),
        connections_closed_idle: Cell::new(0),
        connections_closed_first_frame: Cell::new(0),
        readers: RefCell::new(HashMap::new()),
        next_reader_id: Cell::new(0),
        telemetry: RefCell::new(ShardTelemetry::new(
            init.index,
            init.telemetry,
            Instant::now(),
        )),
        filter_images: init.filter_images,
        snapshot_epoch: Cell::new(0),
        snapshot_pending: RefCell::new(Vec::new()),
        snapshot: RefCell::new(None),
        key_updates: init.key_updates,
        purged_keys: init.purged_keys,
        idle_since: Cell::new(None),
        noise: init.noise,
        noise_counts: RefCell::new(NoiseCounts::default()),
        noise_penalties: RefCell::new(FailurePenalties::new(init.engine.noise_failure_penalty)),
    });
    for bell in init.bells_in {
        glommio::spawn_local(listen_for_doorbell(Rc::clone(&shard), bell)).detach();
    }
    glommio::spawn_local(listen_for_watchdog(Rc::clone(&shard), init.watchdog_fd)).detach();
    // Connected before accepting: a handoff never goes out without its ring. Each connect
    // waits for the other shard's receiver, which that shard connects in a task of its own.
    for (target, bell) in init.bells_out.into_iter().enumerate() {
        if let Some(bell) = bell {
            let connected = bell.connect().await;
            shard.outbox.borrow_mut().bells[target] = Some(connected);
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
    /// A whole frame arrived on one of this shard's connections.
    fn on_frame(self: &Rc<Self>, header: FrameHeader, bytes: &[u8], now: Instant) {
        let outcome = self.core.borrow_mut().on_frame(
            header,
            bytes,
            now,
            &mut *self.outbox.borrow_mut(),
            &mut *self.telemetry.borrow_mut(),
        );
        self.after(outcome);
    }

    fn on_handoff(self: &Rc<Self>, handoff: Handoff) {
        self.inbox_budget.release(handoff.footprint(), 1);
        let outcome = self
            .core
            .borrow_mut()
            .on_handoff(handoff, &mut *self.telemetry.borrow_mut());
        self.after(outcome);
    }

    /// Hand the batches waiting for other shards to them (after a read's frames, and on
    /// each round of the pump).
    fn flush_handoffs(&self) {
        self.core
            .borrow_mut()
            .flush_handoffs(&mut *self.outbox.borrow_mut());
    }

    /// Wake the pump for a packet due before it would wake, and carry out the core's actions.
    fn after(self: &Rc<Self>, outcome: Outcome) {
        if let Outcome::Held { due } = outcome {
            if self
                .pump_sleeping_until
                .get()
                .is_some_and(|until| due < until)
            {
                self.wake_pump();
            }
        }
        self.run_actions();
    }

    /// Start the tasks of new links and wake the ones the core has work for.
    fn run_actions(self: &Rc<Self>) {
        if let Some(arrivals) = &self.loop_arrivals {
            while let Some(arrival) = self.core.borrow_mut().take_loop() {
                if arrivals.try_send(arrival).is_err() {
                    self.loops_unreported.set(self.loops_unreported.get() + 1);
                }
            }
        }
        loop {
            let Some(action) = self.core.borrow_mut().poll_action() else {
                break;
            };
            match action {
                Action::Open { link, next_hop } => {
                    let task = Rc::new(LinkTask {
                        wake: Semaphore::new(0),
                        handle: RefCell::new(None),
                    });
                    self.links.borrow_mut().insert(link, Rc::clone(&task));
                    let handle = glommio::spawn_local(writer(
                        Rc::clone(self),
                        Rc::clone(&task),
                        link,
                        next_hop,
                    ))
                    .detach();
                    task.handle.replace(Some(handle));
                }
                Action::Wake { link } => {
                    if let Some(task) = self.links.borrow().get(&link) {
                        task.wake.signal(1);
                    }
                }
            }
        }
    }

    /// The node's Noise key pair when connections from `ip` must speak Noise: the topology
    /// lists `ip` with a Noise key.
    fn noise_from(&self, ip: std::net::IpAddr) -> Option<NoiseIdentity> {
        let noise = self.noise.as_ref()?;
        let core = self.core.borrow();
        core.known()
            .is_some_and(|known| known.expects_noise_from(ip))
            .then(|| noise.clone())
    }

    /// The node's Noise key pair and the peer's key when a connection to `address` must
    /// speak Noise: the topology lists that mix address with a Noise key.
    fn noise_to(&self, address: SocketAddr) -> Option<(NoiseIdentity, [u8; 32])> {
        let noise = self.noise.as_ref()?;
        let core = self.core.borrow();
        let remote = core.known()?.noise_key_of(address)?;
        Some((noise.clone(), remote))
    }

    fn noise_failed(&self, role: Role, failure: Failure, peer: SocketAddr) {
        tracing::debug!(shard = self.index, %peer, role = role.as_str(), reason = failure.as_str(), "noise link failed");
        self.noise_counts.borrow_mut().failed(role, failure);
    }

    /// Count an inbound connection closed by a deadline.
    fn count_close(&self, reason: CloseReason) {
        let counter = match reason {
            CloseReason::FirstFrame => &self.connections_closed_first_frame,
            CloseReason::SlowFrame => &self.read_timeouts,
            CloseReason::Idle => &self.connections_closed_idle,
            CloseReason::Evicted => &self.connections_evicted,
        };
        counter.set(counter.get() + 1);
    }

    /// Wake the pump if it sleeps; at most one wake per sleep.
    fn wake_pump(&self) {
        if self.pump_sleeping_until.take().is_some() {
            self.pump_wake.signal(1);
        }
    }

    fn publish(&self) {
        let core = self.core.borrow();
        let filter = core.processor().replay_filter();
        let figures = core.figures();
        let snapshot = ShardSnapshot {
            counts: core.counts(),
            held: figures.held,
            queued: figures.queued,
            writing: figures.writing,
            crossing: figures.crossing,
            next_hops: figures.table.next_hops,
            next_hops_opened: figures.table.opened,
            next_hops_evicted: figures.table.evicted,
            next_hops_forgotten_idle: figures.table.forgotten_idle,
            next_hops_forgotten_failing: figures.table.forgotten_failing,
            delays_clamped: figures.delays_clamped,
            connections_inbound: self.inbound.borrow().len() as u64,
            connections_outbound: self.connections_outbound.get(),
            connections_refused: self.connections_refused.get(),
            accept_errors: self.accept_errors.get(),
            read_timeouts: self.read_timeouts.get(),
            bytes_held: figures.bytes_held,
            inbox_bytes: self.inbox_budget.bytes(),
            known_addresses: core.known().map_or(0, |k| k.addresses() as u64),
            connections_known: self.inbound.borrow().known_len() as u64,
            connections_evicted: self.connections_evicted.get(),
            connections_closed_idle: self.connections_closed_idle.get(),
            connections_closed_first_frame: self.connections_closed_first_frame.get(),
            replay_filter_items: filter.items_inserted(),
            replay_filter_capacity: filter.capacity(),
            replay_filter_fill_ppm: (filter.fill_ratio() * 1e6) as u64,
            replay_filter_generations_turned: filter.generations_turned(),
            keys: key_figures(core.processor()),
            noise: *self.noise_counts.borrow(),
            doorbells_rung: self.outbox.borrow().rung,
            handoff_batches: core.batches_sent(),
            syscalls: None,
            // The watchdog's figures; filled in when read.
            stalls: 0,
            stalled: false,
        };
        self.stats[self.index].publish(&snapshot);
    }

    /// While draining: whether every shard has stopped accepting and none has held a packet
    /// or had one coming in its channel for [`DRAIN_IDLE_CONFIRM`] (other shards are seen
    /// through their published figures, which lag by up to a pump round).
    fn drained_everywhere(&self, now: Instant) -> bool {
        let all_draining = self.control.draining.load(Ordering::Acquire)
            >= self.control.running.load(Ordering::Acquire);
        let idle = all_draining
            && self.core.borrow().in_flight() == 0
            && self.inbox.is_empty()
            && self.stats.iter().enumerate().all(|(i, stats)| {
                let s = stats.published();
                i == self.index || (s.in_flight_measured() == 0 && s.inbox_bytes == 0)
            });
        if !idle {
            self.idle_since.set(None);
            return false;
        }
        let since = self.idle_since.get().unwrap_or(now);
        self.idle_since.set(Some(since));
        now.saturating_duration_since(since) >= DRAIN_IDLE_CONFIRM
    }

    /// Take the newest known nodes the topology thread sent, between packets. The sets
    /// replaced are freed here: a few hundred kilobytes at most, every few minutes.
    fn apply_known_updates(&self) {
        let mut newest = None;
        while let Ok(known) = self.known_updates.try_recv() {
            newest = Some(known);
        }
        if let Some(known) = newest {
            let addresses = known.as_ref().map_or(0, |k| k.addresses());
            self.core.borrow_mut().set_known(known.clone());
            self.inbound.borrow_mut().set_known(known);
            tracing::debug!(shard = self.index, addresses, "known nodes changed");
        }
    }

    /// Apply the key changes the rotation controller sent, between packets. Purged keys go
    /// back to be freed elsewhere (a filter can be tens of MiB).
    fn apply_key_updates(&self) {
        while let Ok(update) = self.key_updates.try_recv() {
            let primary = update.primary;
            match self.core.borrow_mut().apply_keys(update) {
                Ok(purged) => {
                    tracing::info!(
                        shard = self.index,
                        primary,
                        purged = purged.len(),
                        "sphinx keys changed"
                    );
                    for key in purged {
                        let _ = self.purged_keys.try_send(key);
                    }
                }
                Err(err) => {
                    tracing::error!(shard = self.index, error = %err, "refused a sphinx key change; the keys stay as they were")
                }
            }
        }
    }

    /// Answer a save request: copy a bounded part of each live key's replay filter per round,
    /// and send each image when complete, then say the answer is done. Never blocks: a full
    /// channel skips this save (the next one comes).
    fn advance_snapshot(&self) {
        let requested = self.control.save_epoch.load(Ordering::Acquire);
        if requested == self.snapshot_epoch.get() {
            return;
        }
        let core = self.core.borrow();
        let processor = core.processor();
        let mut pending = self.snapshot_pending.borrow_mut();
        let mut slot = self.snapshot.borrow_mut();
        if pending.is_empty() && slot.is_none() {
            pending.extend(processor.keys().map(|key| key.rotation_id()));
            pending.reverse();
        }
        if slot.is_none() {
            if let Some(rotation_id) = pending.pop() {
                if let Some(key) = processor.keys().find(|k| k.rotation_id() == rotation_id) {
                    *slot = Some((rotation_id, SnapshotCursor::new(key.replay_filter())));
                }
            }
        }
        if let Some((rotation_id, cursor)) = slot.as_mut() {
            let rotation_id = *rotation_id;
            match processor.keys().find(|k| k.rotation_id() == rotation_id) {
                // Purged meanwhile: nothing to save for it.
                None => *slot = None,
                Some(key) => {
                    if let Some(image) =
                        cursor.advance(key.replay_filter(), SNAPSHOT_WORDS_PER_ROUND)
                    {
                        *slot = None;
                        let _ = self
                            .filter_images
                            .try_send(FilterMessage::image(self.index, requested, key, image));
                    }
                }
            }
        }
        if slot.is_none() && pending.is_empty() {
            self.snapshot_epoch.set(requested);
            let _ = self.filter_images.try_send(FilterMessage::Done {
                shard: self.index,
                epoch: requested,
            });
        }
    }

    /// The shard has stopped: send every key's whole filter for the final save.
    fn send_final_image(&self) {
        let core = self.core.borrow();
        for key in core.processor().keys() {
            let image = FilterImage::of(key.replay_filter());
            let _ = self.filter_images.try_send(FilterMessage::image(
                self.index,
                FINAL_IMAGE,
                key,
                image,
            ));
        }
        let _ = self.filter_images.try_send(FilterMessage::Done {
            shard: self.index,
            epoch: FINAL_IMAGE,
        });
    }

    /// About once a second, send the telemetry report (histograms and per-next-hop counts)
    /// to the control thread. Never blocks; allocates only when a report is due.
    fn publish_telemetry(&self, now: Instant) {
        if !self.telemetry.borrow().report_due(now) {
            return;
        }
        let peers = self
            .core
            .borrow()
            .next_hop_counts()
            .map(|(next_hop, sent, dropped)| PeerCounts {
                next_hop,
                sent,
                dropped,
            })
            .collect();
        self.telemetry.borrow_mut().send_report(now, peers);
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                let admit = shard.inbound.borrow().admit(peer.ip());
                match admit {
                    Admit::RefusePerIp => {
                        shard
                            .connections_refused
                            .set(shard.connections_refused.get() + 1);
                        drop(stream);
                        continue;
                    }
                    Admit::AcceptEvicting(victim) => {
                        // A cancelled reader does not run its own bookkeeping.
                        if let Some(task) = shard.readers.borrow_mut().remove(&victim) {
                            task.cancel();
                        }
                        shard.inbound.borrow_mut().remove(victim);
                        shard
                            .connections_evicted
                            .set(shard.connections_evicted.get() + 1);
                    }
                    Admit::Accept => {}
                }
                let id = shard.next_reader_id.get();
                shard.next_reader_id.set(id + 1);
                shard
                    .inbound
                    .borrow_mut()
                    .insert(id, peer.ip(), Instant::now());
                let task =
                    glommio::spawn_local(reader(Rc::clone(&shard), stream, id, peer)).detach();
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

/// One inbound connection: the Noise handshake when the topology says the peer speaks it,
/// then its frames.
async fn reader(shard: Rc<Shard>, mut stream: TcpStream, id: u64, peer: SocketAddr) {
    let link = match shard.noise_from(peer.ip()) {
        Some(identity) => answer_noise(&shard, &mut stream, identity, peer)
            .await
            .map(Some),
        None => Some(None),
    };
    if let Some(noise) = link {
        read_frames(&shard, stream, id, noise, peer).await;
        // A stream that ended mid-read (a corrupt frame) may have left packets waiting.
        shard.flush_handoffs();
    }
    shard.inbound.borrow_mut().remove(id);
    shard.readers.borrow_mut().remove(&id);
}

/// The responder's handshake on an inbound connection, counted, and the address's penalty
/// kept: the link's reader, or None when the connection must close.
async fn answer_noise(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    identity: NoiseIdentity,
    peer: SocketAddr,
) -> Option<NoiseReader> {
    if !shard
        .noise_penalties
        .borrow()
        .admits(peer.ip(), Instant::now())
    {
        shard.noise_failed(Role::Responder, Failure::Penalised, peer);
        return None;
    }
    let deadline = Instant::now() + shard.engine.noise_handshake_timeout;
    let mut deframer = Deframer::new();
    let responder = Handshake::responder(&identity.private, &identity.public);
    let shaken = noise_io::handshake(stream, responder, &mut deframer, deadline).await;
    let reader = match shaken {
        Ok(transport) => {
            shard
                .noise_counts
                .borrow_mut()
                .handshake_done(Role::Responder);
            shard.noise_penalties.borrow_mut().succeeded(peer.ip());
            Some(NoiseReader::new(transport, deframer))
        }
        Err(failure) => {
            shard.noise_failed(Role::Responder, failure, peer);
            shard
                .noise_penalties
                .borrow_mut()
                .failed(peer.ip(), Instant::now());
            None
        }
    };
    shard.publish();
    reader
}

async fn read_frames(
    shard: &Rc<Shard>,
    mut stream: TcpStream,
    id: u64,
    mut noise: Option<NoiseReader>,
    peer: SocketAddr,
) {
    let mut decoder = FrameDecoder::new();
    let mut turn_started = Instant::now();
    // When the first byte of the frame not yet whole arrived.
    let mut partial_since: Option<Instant> = None;
    'connection: loop {
        let Some((deadline, reason)) = shard.inbound.borrow().deadline(id, partial_since) else {
            break;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            shard.count_close(reason);
            break;
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let read = match noise.as_mut() {
            None => stream
                .read(decoder.spare_mut())
                .await
                .map_err(ReadError::Io),
            Some(noise) => noise.read(&mut stream, decoder.spare_mut(), deadline).await,
        };
        let read_at = match read {
            Ok(0) => break,
            Ok(n) => {
                decoder.advance(n);
                Instant::now()
            }
            Err(ReadError::Io(e)) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    shard.count_close(reason);
                }
                break;
            }
            Err(ReadError::Noise(failure)) => {
                shard.noise_failed(Role::Responder, failure, peer);
                break;
            }
        };
        let mut completed = false;
        loop {
            let now = Instant::now();
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    completed = true;
                    shard.inbound.borrow_mut().on_frame(id, now);
                    shard.on_frame(frame.header, frame.packet, now)
                }
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be resynchronised: count the bad frame and close.
                    shard.core.borrow_mut().on_bad_frame();
                    tracing::debug!(shard = shard.index, error = %e, "closing a corrupt stream");
                    break 'connection;
                }
            }
            // Let the writers send what the last frames produced once this turn has lasted
            // long enough: a reader whose socket always has data would otherwise hold the
            // core until glommio's preemption timer fires (100 ms), and yielding after every
            // frame would cost the writers their batching.
            if turn_started.elapsed() >= READER_TURN_MAX {
                shard.flush_handoffs();
                futures_lite::future::yield_now().await;
                turn_started = Instant::now();
            }
        }
        partial_since = match decoder.buffered_len() {
            0 => None,
            // What is left began with this read (a frame just completed), or is the rest of
            // the frame already under way.
            _ if completed || partial_since.is_none() => Some(read_at),
            _ => partial_since,
        };
        // The packets for other shards go in one batch per shard, then the pump may sleep
        // for a while: publish what this read changed.
        shard.flush_handoffs();
        shard.publish();
        // Also after each read's frames, so that writers run between reads.
        futures_lite::future::yield_now().await;
        turn_started = Instant::now();
    }
}

/// The shard's clock: the cross-shard inbox, the core's timeouts, publication, and shutdown.
async fn pump(shard: Rc<Shard>, accept: JoinHandle<()>) -> ShardCounts {
    let mut accept = Some(accept);
    loop {
        shard.stats[shard.index].beat();
        let mut work = 0usize;
        while work < INBOX_ROUND_MAX {
            match shard.inbox.try_recv() {
                Ok(batch) => {
                    work += batch.len();
                    for handoff in batch {
                        shard.on_handoff(handoff);
                    }
                    glommio::yield_if_needed().await;
                }
                Err(_) => break,
            }
        }
        // Nothing the pump does hands packets on, but a reader cancelled mid-read may have
        // left some waiting.
        shard.flush_handoffs();
        let now = Instant::now();
        shard.core.borrow_mut().handle_timeout(now);
        shard.run_actions();
        shard.publish();
        shard.publish_telemetry(now);
        shard.apply_key_updates();
        shard.apply_known_updates();
        shard.advance_snapshot();

        let phase = shard.core.borrow().phase();
        match phase {
            Phase::Running => {
                if let Some(deadline) = shard.control.stop_requested() {
                    if let Some(task) = accept.take() {
                        task.cancel();
                    }
                    let readers: Vec<_> = shard.readers.borrow_mut().drain().collect();
                    // A cancelled reader does not run its own bookkeeping.
                    for (id, task) in readers {
                        shard.inbound.borrow_mut().remove(id);
                        task.cancel();
                    }
                    shard.core.borrow_mut().begin_drain(deadline);
                    shard.control.draining.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
            }
            Phase::Draining(_) => {
                if shard.drained_everywhere(now) {
                    shard.core.borrow_mut().end_drain_early();
                    continue;
                }
            }
            Phase::Closed => {
                // Closing waits on the other shards and the link tasks, not on this pump's
                // rounds: not watched from here on.
                shard.stats[shard.index].mark_ended();
                close(&shard).await;
                break;
            }
        }

        if work > 0 || !shard.inbox.is_empty() {
            futures_lite::future::yield_now().await;
        } else {
            pump_sleep(&shard, now).await;
        }
    }
    let counts = shard.core.borrow().counts();
    shard.publish();
    shard.send_final_image();
    shard.stats[shard.index].mark_ended();
    counts
}

/// Sleep until the core's next timeout (at most [`PUMP_SLEEP_MAX`]), or until woken by a
/// doorbell or an earlier packet.
async fn pump_sleep(shard: &Rc<Shard>, now: Instant) {
    let until = shard.core.borrow().next_timeout().min(now + PUMP_SLEEP_MAX);
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

/// Hears the watchdog's rings and wakes the pump: a completed read also wakes an executor
/// that parked with work pending. Ends when the watchdog stops.
async fn listen_for_watchdog(shard: Rc<Shard>, fd: RawFd) {
    // SAFETY: the fd is this shard's end of a socket pair made for it, owned by nothing else.
    let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(fd) };
    let mut rings = [0u8; 64];
    while let Ok(n) = stream.read(&mut rings).await {
        if n == 0 {
            break;
        }
        shard.wake_pump();
    }
}

/// Hears one other shard's doorbell and wakes the pump, which drains the inbox. Ends when that
/// shard has stopped.
async fn listen_for_doorbell(shard: Rc<Shard>, bell: DoorbellReceiver) {
    let bell = bell.connect().await;
    while bell.recv().await.is_some() {
        shard.wake_pump();
    }
}

/// The core has closed (past the drain deadline): take in what other shards still send (the
/// core drops it as shutdown) until every shard has stopped sending, then wait for the link
/// tasks to end.
async fn close(shard: &Rc<Shard>) {
    shard.run_actions();
    shard.control.stopped_sending.fetch_add(1, Ordering::AcqRel);
    loop {
        let all_stopped = shard.control.stopped_sending.load(Ordering::Acquire)
            >= shard.control.running.load(Ordering::Acquire);
        while let Ok(batch) = shard.inbox.try_recv() {
            for handoff in batch {
                shard.on_handoff(handoff);
            }
        }
        if all_stopped {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let tasks: Vec<_> = shard
        .links
        .borrow()
        .values()
        .filter_map(|task| task.handle.borrow_mut().take())
        .collect();
    for task in tasks {
        task.await;
    }
}

/// The task of one next-hop link: does what the core's [`ShardCore::link_next`] says
/// (connect, write, wait, close) and reports each result back.
async fn writer(shard: Rc<Shard>, task: Rc<LinkTask>, link: LinkId, next_hop: SocketAddr) {
    let mut stream: Option<TcpStream> = None;
    // The link's Noise transport, when the next hop speaks Noise.
    let mut noise: Option<NoiseWriter> = None;
    // Grows to one batch while the link writes; freed with the task.
    let mut buffer: Vec<u8> = Vec::new();
    let mut dues: Vec<Instant> = Vec::new();
    loop {
        let step = shard.core.borrow_mut().link_next(
            next_hop,
            link,
            Instant::now(),
            &mut buffer,
            &mut dues,
        );
        match step {
            LinkStep::Close => break,
            LinkStep::Wait => {
                if task.wake.acquire(1).await.is_err() {
                    break;
                }
            }
            LinkStep::Connect(address) => {
                let connected =
                    TcpStream::connect_timeout(address, shard.engine.connect_timeout).await;
                let connected = match (connected, shard.noise_to(address)) {
                    (Ok(mut s), Some((identity, remote))) => {
                        let deadline = Instant::now() + shard.engine.noise_handshake_timeout;
                        let mut deframer = Deframer::for_handshake();
                        let initiator = Handshake::initiator(&identity.private, &remote);
                        let shaken =
                            noise_io::handshake(&mut s, initiator, &mut deframer, deadline).await;
                        match shaken {
                            Ok(transport) => {
                                shard
                                    .noise_counts
                                    .borrow_mut()
                                    .handshake_done(Role::Initiator);
                                noise = Some(NoiseWriter::new(transport));
                                Ok(s)
                            }
                            Err(failure) => {
                                shard.noise_failed(Role::Initiator, failure, address);
                                Err(std::io::Error::other(format!(
                                    "noise handshake failed: {}",
                                    failure.as_str()
                                )))
                            }
                        }
                    }
                    (Ok(s), None) => {
                        noise = None;
                        Ok(s)
                    }
                    (Err(e), _) => Err(std::io::Error::other(e.to_string())),
                };
                match connected {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                        shard.core.borrow_mut().on_connected(next_hop, link);
                        shard
                            .connections_outbound
                            .set(shard.connections_outbound.get() + 1);
                        stream = Some(s);
                    }
                    Err(e) => {
                        tracing::debug!(shard = shard.index, peer = %next_hop, error = %e, "next hop unreachable");
                        shard
                            .core
                            .borrow_mut()
                            .on_connect_failed(next_hop, link, Instant::now());
                        shard.publish();
                    }
                }
            }
            LinkStep::Write { .. } => {
                let result = match (stream.as_mut(), noise.as_mut()) {
                    (Some(s), Some(noise)) => noise.write_all(s, &buffer).await,
                    (Some(s), None) => s.write_all(&buffer).await,
                    // The core only writes on a link it was told is connected.
                    (None, _) => Err(std::io::Error::other("no connection")),
                };
                match result {
                    Ok(()) => {
                        shard.core.borrow_mut().on_written(
                            next_hop,
                            link,
                            Instant::now(),
                            &dues,
                            &mut *shard.telemetry.borrow_mut(),
                        );
                    }
                    Err(e) => {
                        tracing::debug!(shard = shard.index, peer = %next_hop, error = %e, "write to next hop failed");
                        shard
                            .core
                            .borrow_mut()
                            .on_write_failed(next_hop, link, Instant::now());
                        if stream.take().is_some() {
                            shard
                                .connections_outbound
                                .set(shard.connections_outbound.get() - 1);
                        }
                    }
                }
                shard.publish();
            }
        }
    }
    if stream.take().is_some() {
        shard
            .connections_outbound
            .set(shard.connections_outbound.get() - 1);
    }
    shard.links.borrow_mut().remove(&link);
}

/// The published figures of `processor`'s live keys, by slot.
fn key_figures(processor: &HopProcessor) -> [KeyFigures; 2] {
    let mut figures = [KeyFigures::default(); 2];
    let primary = processor.primary_rotation_id();
    for key in processor.keys() {
        let slot = if processor.is_rotating() {
            (key.rotation_id() & 1) as usize
        } else {
            0
        };
        let filter = key.replay_filter();
        figures[slot] = KeyFigures {
            live: true,
            rotation_id: key.rotation_id(),
            primary: key.rotation_id() == primary,
            filter_items: filter.items_inserted(),
            filter_capacity: filter.capacity(),
            filter_fill_ppm: (filter.fill_ratio() * 1e6) as u64,
        };
    }
    figures
}
