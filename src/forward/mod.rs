//! Pure outbound state: how long to back off after failures, and one shard's
//! [`NextHopTable`]: each next hop's bounded queue and connection state machine, in a
//! table with a maximum size that heals itself (idle and failing entries are forgotten, and a
//! full table evicts its least useful quiet entry for a new next hop).
//!
//! What it deliberately does not do: open sockets, write packets, or read the clock. The
//! driver reports what happened (`on_connected`, `on_connect_failed(now)`, ...) and asks what
//! to do next (`next_step(now)`); every limit that bites is handed back to the caller (a
//! refused push says why) so that the caller counts it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Initial reconnection backoff (Nym's old default).
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_secs(10);
/// Maximum reconnection backoff (Nym's old default).
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(300);

/// Exponential reconnection backoff: `initial`, doubling with each consecutive failure,
/// capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: BACKOFF_INITIAL_DEFAULT,
            max: BACKOFF_MAX_DEFAULT,
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures: zero for none, then
    /// `min(initial * 2^(failures - 1), max)`. Saturates instead of overflowing for any `u32`.
    pub fn delay_after(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        // 2^31 is the largest power of two a u32 multiplier holds; past that it is capped.
        let doublings = (failures - 1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// Where the connection to one next hop stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// No connection and no reason to wait: may connect.
    Idle,
    /// A connection attempt is under way.
    Connecting,
    /// Connected; packets may be written.
    Connected,
    /// The last attempt or write failed: wait until `until` before connecting again.
    BackingOff {
        /// When connecting is allowed again.
        until: Instant,
    },
}

/// The connection state machine of one next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerState {
    state: ConnectionState,
    failures: u32,
    backoff: Backoff,
}

impl PeerState {
    /// An idle peer that has not failed yet.
    pub fn new(backoff: Backoff) -> Self {
        PeerState {
            state: ConnectionState::Idle,
            failures: 0,
            backoff,
        }
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// Consecutive failures since the last successful connection.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether a connection attempt may start now: idle, or backing off and the wait is over.
    pub fn may_connect(&self, now: Instant) -> bool {
        match self.state {
            ConnectionState::Idle => true,
            ConnectionState::BackingOff { until } => now >= until,
            ConnectionState::Connecting | ConnectionState::Connected => false,
        }
    }

    /// A connection attempt started.
    ///
    /// # Panics
    /// If [`Self::may_connect`] is false: the driver must ask first.
    pub fn on_connect_started(&mut self, now: Instant) {
        assert!(
            self.may_connect(now),
            "connect started while {:?}",
            self.state
        );
        self.state = ConnectionState::Connecting;
    }

    /// The attempt succeeded; the failure count resets.
    ///
    /// # Panics
    /// If no attempt was under way.
    pub fn on_connected(&mut self) {
        assert_eq!(self.state, ConnectionState::Connecting);
        self.state = ConnectionState::Connected;
        self.failures = 0;
    }

    /// The attempt failed (refused, timed out, unreachable): back off.
    ///
    /// # Panics
    /// If no attempt was under way.
    pub fn on_connect_failed(&mut self, now: Instant) {
        assert_eq!(self.state, ConnectionState::Connecting);
        self.fail(now);
    }

    /// A write on the open connection failed: the connection is gone; back off as for a failed
    /// attempt, so that a peer that accepts and then resets cannot make us spin.
    ///
    /// # Panics
    /// If not connected.
    pub fn on_write_failed(&mut self, now: Instant) {
        assert_eq!(self.state, ConnectionState::Connected);
        self.fail(now);
    }

    /// The connection was closed cleanly (by us, for idleness, or by the peer): idle.
    pub fn on_closed(&mut self) {
        if self.state == ConnectionState::Connected {
            self.state = ConnectionState::Idle;
        }
    }

    fn fail(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let wait = self.backoff.delay_after(self.failures);
        // An Instant that cannot hold now + 300 s does not occur; waiting not at all is the
        // harmless fallback.
        let until = now.checked_add(wait).unwrap_or(now);
        self.state = ConnectionState::BackingOff { until };
    }
}

/// Names one entry of a [`NextHopTable`] for as long as it is in the table. An entry made
/// later for the same address gets a new id, so the driver's task of a forgotten entry can
/// tell that it is stale.
pub type LinkId = u64;

/// The limits and timings of a [`NextHopTable`] (one shard's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLimits {
    /// Entries at once (`engine.next_hops_max`, per shard).
    pub next_hops_max: usize,
    /// Packets queued per next hop.
    pub queue_packets_max: usize,
    /// Bytes queued and being written per next hop (each packet counted by its footprint).
    pub queue_bytes_max: u64,
    /// An entry with nothing to send for this long is closed and forgotten.
    pub idle_timeout: Duration,
    /// An entry whose connection failed this many times in a row is forgotten.
    pub failures_max: u32,
    /// Waits between connection attempts.
    pub backoff: Backoff,
}

/// One next hop: its connection state, its queue and what it did.
#[derive(Debug)]
struct NextHop<T> {
    link: LinkId,
    state: PeerState,
    /// Grows as packets arrive (up to the limit) and is freed with the entry: a next hop
    /// takes memory only while it has packets.
    queue: VecDeque<(T, u64)>,
    /// Bytes of the packets in `queue`.
    queue_bytes: u64,
    /// Packets handed to the driver for the write now under way.
    writing: usize,
    /// Bytes of those packets: they sit in the link's write buffer until the write reports.
    writing_bytes: u64,
    /// The driver's task waits for work and must be woken for it.
    parked: bool,
    /// Last packet queued or written: the idle timeout counts from here.
    last_active: Instant,
    /// Last successful write (or the entry's creation): eviction order.
    last_useful: Instant,
    sent: u64,
    dropped: u64,
}

impl<T> NextHop<T> {
    /// Holds nothing and is in no connection attempt: may be forgotten without loss.
    fn is_quiet(&self) -> bool {
        self.queue.is_empty()
            && self.writing == 0
            && self.state.state() != ConnectionState::Connecting
    }
}

/// A packet was queued for its next hop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queued {
    /// A new entry: the driver starts a task for this link.
    pub opened: Option<LinkId>,
    /// That entry took the place of this one, whose task must be woken to close.
    pub evicted: Option<LinkId>,
    /// The link's task was waiting for work: wake it.
    pub wake: Option<LinkId>,
}

/// Why [`NextHopTable::push`] refused a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A new next hop, and every entry of the full table holds packets or is connecting.
    TableFull,
    /// The next hop's queue is at its limit in packets or in bytes.
    QueueFull,
    /// The next hop's last connection failed and its backoff has not run out.
    Unreachable,
}

/// What the driver's task of one link should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkStep {
    /// Open a connection to this address, then report how it went.
    Connect(SocketAddr),
    /// Write the packets just handed over, then report how it went.
    Write {
        /// How many.
        packets: usize,
    },
    /// Nothing to do until woken.
    Wait,
    /// The entry is gone: close the connection and end the task.
    Close,
}

/// What a sweep found for one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepEvent {
    /// Idle for the idle timeout: forgotten; its task must be woken to close.
    ClosedIdle(LinkId),
    /// Its backoff ran out with packets waiting: wake its task to connect.
    Wake(LinkId),
}

/// Counts of what the table did, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableFigures {
    /// Entries now.
    pub next_hops: u64,
    /// Entries made.
    pub opened: u64,
    /// Quiet entries forgotten to make room for a new next hop.
    pub evicted: u64,
    /// New next hops refused because no entry could make room.
    pub refused: u64,
    /// Entries forgotten after the idle timeout.
    pub forgotten_idle: u64,
    /// Entries forgotten after `failures_max` failures in a row.
    pub forgotten_failing: u64,
}

/// The next hops one shard forwards to: at most `next_hops_max` entries, each with a bounded queue
/// and a connection state machine. It heals itself: idle entries are forgotten after the idle
/// timeout, failing ones after `failures_max` failures, and a new next hop takes the place of
/// the least useful quiet entry (failing ones first, then the longest without a successful
/// write) when the table is full. Only when every entry holds packets or is connecting is a
/// new next hop refused.
///
/// Every packet that goes in comes out exactly once: written (reported with
/// [`Self::on_written`]), or handed back to the caller's closure to be counted as dropped.
#[derive(Debug)]
pub struct NextHopTable<T> {
    entries: HashMap<SocketAddr, NextHop<T>>,
    limits: TableLimits,
    next_link: LinkId,
    queued: usize,
    writing: usize,
    /// Bytes queued and being written, all entries.
    bytes: u64,
    figures: TableFigures,
}

impl<T> NextHopTable<T> {
    /// An empty table.
    pub fn new(limits: TableLimits) -> Self {
        NextHopTable {
            entries: HashMap::new(),
            limits,
            next_link: 0,
            queued: 0,
            writing: 0,
            bytes: 0,
            figures: TableFigures::default(),
        }
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Packets queued across all entries.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Packets handed to the driver for writes under way.
    pub fn writing(&self) -> usize {
        self.writing
    }

    /// Bytes queued and being written, all entries (the footprints given to [`Self::push`]).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Queued and writing packets counted entry by entry (for checks of the running totals).
    ///
    /// # Panics
    /// If an entry's byte totals or the table's disagree with its packets: a bug of ours.
    pub fn recount(&self) -> (usize, usize) {
        let mut bytes = 0;
        let counts = self.entries.values().fold((0, 0), |(q, w), e| {
            let queued: u64 = e.queue.iter().map(|(_, b)| b).sum();
            assert_eq!(queued, e.queue_bytes, "queue bytes of one entry");
            assert!(
                e.writing > 0 || e.writing_bytes == 0,
                "bytes writing with no write"
            );
            bytes += e.queue_bytes + e.writing_bytes;
            (q + e.queue.len(), w + e.writing)
        });
        assert_eq!(bytes, self.bytes, "table bytes");
        counts
    }

    /// What the table did so far.
    pub fn figures(&self) -> TableFigures {
        TableFigures {
            next_hops: self.entries.len() as u64,
            ..self.figures
        }
    }

    /// The link of the entry for `address`, if any.
    pub fn link_of(&self, address: &SocketAddr) -> Option<LinkId> {
        self.entries.get(address).map(|e| e.link)
    }

    /// Per entry: address, packets written, packets dropped.
    pub fn counts(&self) -> impl Iterator<Item = (SocketAddr, u64, u64)> + '_ {
        self.entries.iter().map(|(a, e)| (*a, e.sent, e.dropped))
    }

    /// Queue `item`, which occupies `bytes`, for `address` at `now`, making an entry if there
    /// is none (evicting the least useful quiet entry of a full table).
    pub fn push(
        &mut self,
        address: SocketAddr,
        item: T,
        bytes: u64,
        now: Instant,
    ) -> Result<Queued, Refused> {
        let mut queued = Queued::default();
        if !self.entries.contains_key(&address) {
            if self.entries.len() >= self.limits.next_hops_max {
                match self.least_useful_quiet() {
                    Some(victim) => {
                        if let Some(entry) = self.entries.remove(&victim) {
                            queued.evicted = Some(entry.link);
                            self.figures.evicted += 1;
                        }
                    }
                    None => {
                        self.figures.refused += 1;
                        return Err(Refused::TableFull);
                    }
                }
            }
            let link = self.next_link;
            self.next_link += 1;
            self.figures.opened += 1;
            self.entries.insert(
                address,
                NextHop {
                    link,
                    state: PeerState::new(self.limits.backoff),
                    queue: VecDeque::new(),
                    queue_bytes: 0,
                    writing: 0,
                    writing_bytes: 0,
                    parked: false,
                    last_active: now,
                    last_useful: now,
                    sent: 0,
                    dropped: 0,
                },
            );
            queued.opened = Some(link);
        }
        let Some(entry) = self.entries.get_mut(&address) else {
            unreachable!("the entry was found or made above");
        };
        if let ConnectionState::BackingOff { until } = entry.state.state() {
            if now < until {
                entry.dropped += 1;
                return Err(Refused::Unreachable);
            }
        }
        let entry_bytes = entry.queue_bytes + entry.writing_bytes;
        if entry.queue.len() >= self.limits.queue_packets_max
            || entry_bytes + bytes > self.limits.queue_bytes_max
        {
            entry.dropped += 1;
            return Err(Refused::QueueFull);
        }
        entry.queue.push_back((item, bytes));
        entry.queue_bytes += bytes;
        entry.last_active = now;
        self.queued += 1;
        self.bytes += bytes;
        if entry.parked {
            entry.parked = false;
            queued.wake = Some(entry.link);
        }
        Ok(queued)
    }

    /// The quiet entry to evict: failing entries first, then the one longest without a
    /// successful write.
    fn least_useful_quiet(&self) -> Option<SocketAddr> {
        self.entries
            .iter()
            .filter(|(_, e)| e.is_quiet())
            .min_by_key(|(_, e)| (e.state.failures() == 0, e.last_useful))
            .map(|(a, _)| *a)
    }

    /// What the task of `link` (for `address`) should do at `now`. For [`LinkStep::Write`],
    /// the packets go to `take`, oldest first, at most `batch_max`.
    ///
    /// # Panics
    /// If asked while a connection attempt or a write of this link is under way: the driver
    /// reports those first.
    pub fn next_step(
        &mut self,
        address: SocketAddr,
        link: LinkId,
        now: Instant,
        batch_max: usize,
        take: &mut impl FnMut(T),
    ) -> LinkStep {
        let Some(entry) = self.entries.get_mut(&address).filter(|e| e.link == link) else {
            return LinkStep::Close;
        };
        assert_eq!(entry.writing, 0, "next step asked during a write");
        assert_ne!(
            entry.state.state(),
            ConnectionState::Connecting,
            "next step asked during a connection attempt"
        );
        if entry.queue.is_empty() {
            entry.parked = true;
            return LinkStep::Wait;
        }
        if entry.state.state() == ConnectionState::Connected {
            let packets = entry.queue.len().min(batch_max.max(1));
            let mut bytes = 0;
            for (item, size) in entry.queue.drain(..packets) {
                bytes += size;
                take(item);
            }
            entry.queue_bytes -= bytes;
            entry.writing_bytes = bytes;
            entry.writing = packets;
            self.queued -= packets;
            self.writing += packets;
            return LinkStep::Write { packets };
        }
        if entry.state.may_connect(now) {
            entry.state.on_connect_started(now);
            return LinkStep::Connect(address);
        }
        // Backing off with packets queued before the failure was known: the sweep wakes it.
        entry.parked = true;
        LinkStep::Wait
    }

    fn entry_mut(&mut self, address: &SocketAddr, link: LinkId) -> Option<&mut NextHop<T>> {
        self.entries.get_mut(address).filter(|e| e.link == link)
    }

    /// The connection of `link` is open.
    pub fn on_connected(&mut self, address: SocketAddr, link: LinkId) {
        if let Some(entry) = self.entry_mut(&address, link) {
            entry.state.on_connected();
        }
    }

    /// The connection attempt of `link` failed at `now`: its queue goes to `dropped`, and
    /// after `failures_max` failures in a row the entry is forgotten. Whether it was.
    pub fn on_connect_failed(
        &mut self,
        address: SocketAddr,
        link: LinkId,
        now: Instant,
        dropped: &mut impl FnMut(T),
    ) -> bool {
        let Some(entry) = self.entry_mut(&address, link) else {
            return false;
        };
        entry.state.on_connect_failed(now);
        self.fail(address, dropped)
    }

    /// The write of `link` went out at `now`.
    pub fn on_written(&mut self, address: SocketAddr, link: LinkId, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&address).filter(|e| e.link == link) {
            let packets = entry.writing;
            entry.writing = 0;
            self.bytes -= entry.writing_bytes;
            entry.writing_bytes = 0;
            entry.sent += packets as u64;
            entry.last_active = now;
            entry.last_useful = now;
            self.writing -= packets;
        }
    }

    /// The write of `link` failed at `now`: the packets of that write and the queue go to
    /// `dropped` (whether any arrived cannot be known), the connection backs off, and after
    /// `failures_max` failures in a row the entry is forgotten. Whether it was.
    pub fn on_write_failed(
        &mut self,
        address: SocketAddr,
        link: LinkId,
        now: Instant,
        writing_dropped: &mut impl FnMut(usize),
        dropped: &mut impl FnMut(T),
    ) -> bool {
        let Some(entry) = self.entries.get_mut(&address).filter(|e| e.link == link) else {
            return false;
        };
        let packets = entry.writing;
        entry.writing = 0;
        self.bytes -= entry.writing_bytes;
        entry.writing_bytes = 0;
        entry.dropped += packets as u64;
        entry.state.on_write_failed(now);
        self.writing -= packets;
        writing_dropped(packets);
        self.fail(address, dropped)
    }

    /// After a failure: drop the queue, and forget the entry past `failures_max`.
    fn fail(&mut self, address: SocketAddr, dropped: &mut impl FnMut(T)) -> bool {
        let Some(entry) = self.entries.get_mut(&address) else {
            return false;
        };
        let count = entry.queue.len();
        entry.dropped += count as u64;
        self.queued -= count;
        self.bytes -= entry.queue_bytes;
        entry.queue_bytes = 0;
        entry.queue.drain(..).for_each(|(item, _)| dropped(item));
        entry.queue = VecDeque::new();
        if entry.state.failures() >= self.limits.failures_max {
            self.entries.remove(&address);
            self.figures.forgotten_failing += 1;
            return true;
        }
        false
    }

    /// At `now`: forget entries idle for the idle timeout, and wake parked entries whose
    /// backoff ran out with packets waiting. Walks every entry: call it about once a second.
    pub fn sweep(&mut self, now: Instant, event: &mut impl FnMut(SweepEvent)) {
        let idle_timeout = self.limits.idle_timeout;
        let mut forgotten = 0u64;
        self.entries.retain(|_, entry| {
            if entry.is_quiet() && now.saturating_duration_since(entry.last_active) >= idle_timeout
            {
                forgotten += 1;
                event(SweepEvent::ClosedIdle(entry.link));
                return false;
            }
            if entry.parked && !entry.queue.is_empty() && entry.state.may_connect(now) {
                entry.parked = false;
                event(SweepEvent::Wake(entry.link));
            }
            true
        });
        self.figures.forgotten_idle += forgotten;
    }

    /// Shutdown: every queued packet goes to `dropped`; every link is handed to `link` to be
    /// woken (writes under way still report).
    pub fn drain_all(&mut self, dropped: &mut impl FnMut(T), link: &mut impl FnMut(LinkId)) {
        for entry in self.entries.values_mut() {
            let count = entry.queue.len();
            entry.dropped += count as u64;
            self.queued -= count;
            self.bytes -= entry.queue_bytes;
            entry.queue_bytes = 0;
            entry.queue.drain(..).for_each(|(item, _)| dropped(item));
            entry.parked = false;
            link(entry.link);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_initial_up_to_max_without_overflow() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay_after(0), Duration::ZERO);
        assert_eq!(backoff.delay_after(1), Duration::from_secs(10));
        assert_eq!(backoff.delay_after(2), Duration::from_secs(20));
        assert_eq!(backoff.delay_after(5), Duration::from_secs(160));
        assert_eq!(backoff.delay_after(6), Duration::from_secs(300));
        for failures in [7, 31, 32, 33, 64, u32::MAX - 1, u32::MAX] {
            assert_eq!(backoff.delay_after(failures), Duration::from_secs(300));
        }
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(huge.delay_after(u32::MAX), Duration::MAX);
        let mut previous = Duration::ZERO;
        for failures in 0..100 {
            let delay = backoff.delay_after(failures);
            assert!(delay >= previous && delay <= backoff.max);
            previous = delay;
        }
    }

    #[test]
    fn state_machine_backs_off_on_failures_and_resets_on_success() {
        let t0 = Instant::now();
        let mut peer = PeerState::new(Backoff::default());
        assert!(peer.may_connect(t0));
        peer.on_connect_started(t0);
        assert!(!peer.may_connect(t0));
        peer.on_connect_failed(t0);
        let until = t0 + Duration::from_secs(10);
        assert_eq!(peer.state(), ConnectionState::BackingOff { until });
        assert!(!peer.may_connect(until - Duration::from_nanos(1)));
        assert!(peer.may_connect(until));
        peer.on_connect_started(until);
        peer.on_connect_failed(until);
        assert_eq!(peer.failures(), 2);
        assert_eq!(
            peer.state(),
            ConnectionState::BackingOff {
                until: until + Duration::from_secs(20)
            }
        );
        let later = until + Duration::from_secs(20);
        peer.on_connect_started(later);
        peer.on_connected();
        assert_eq!(peer.state(), ConnectionState::Connected);
        assert_eq!(peer.failures(), 0);
        assert!(!peer.may_connect(later));
        peer.on_write_failed(later);
        assert_eq!(
            peer.state(),
            ConnectionState::BackingOff {
                until: later + Duration::from_secs(10)
            }
        );
        let mut closed = PeerState::new(Backoff::default());
        closed.on_connect_started(t0);
        closed.on_connected();
        closed.on_closed();
        assert!(closed.may_connect(t0));
    }

    #[test]
    #[should_panic(expected = "connect started while")]
    fn connecting_twice_is_a_driver_bug() {
        let t0 = Instant::now();
        let mut peer = PeerState::new(Backoff::default());
        peer.on_connect_started(t0);
        peer.on_connect_started(t0);
    }

    fn limits() -> TableLimits {
        TableLimits {
            next_hops_max: 2,
            queue_packets_max: 3,
            queue_bytes_max: 1000,
            idle_timeout: Duration::from_secs(10),
            failures_max: 2,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(4),
            },
        }
    }

    #[test]
    fn a_next_hop_takes_queue_memory_only_while_it_has_packets() {
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:1".parse().expect("valid literal");
        let mut table: NextHopTable<u32> = NextHopTable::new(limits());
        let queued = table.push(a, 1, 100, t0).expect("room");
        assert_eq!(queued.opened, Some(0));
        let link = table.link_of(&a).expect("entry");
        assert_eq!(
            table.next_step(a, link, t0, 8, &mut |_| {}),
            LinkStep::Connect(a)
        );
        let mut dropped = Vec::new();
        assert!(!table.on_connect_failed(a, link, t0, &mut |p| dropped.push(p)));
        assert_eq!(dropped, [1]);
        assert_eq!(
            table.entries[&a].queue.capacity(),
            0,
            "freed with the queue"
        );
        assert_eq!(table.push(a, 2, 100, t0), Err(Refused::Unreachable));
        assert_eq!(table.entries[&a].queue.capacity(), 0);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            table.push(a, 3, 100, later).expect("backoff over").wake,
            None
        );
        assert_eq!(
            table.next_step(a, link, later, 8, &mut |_| {}),
            LinkStep::Connect(a)
        );
        // Second failure in a row with failures_max 2: forgotten.
        assert!(table.on_connect_failed(a, link, later, &mut |_| {}));
        assert!(table.is_empty());
        assert_eq!(table.figures().forgotten_failing, 1);
        assert_eq!(table.recount(), (0, 0));
        assert_eq!((table.queued(), table.writing()), (0, 0));
    }

    #[test]
    fn eviction_takes_failing_entries_first_then_the_longest_without_a_write() {
        let t0 = Instant::now();
        let addresses: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 1)))
            .collect();
        let mut limits = limits();
        limits.next_hops_max = 3;
        let mut table: NextHopTable<u32> = NextHopTable::new(limits);
        // 0 and 1 connect and write (1 later than 0); 2 fails.
        for (i, &address) in addresses[..3].iter().enumerate() {
            let at = t0 + Duration::from_millis(i as u64);
            table.push(address, 0, 100, at).expect("room");
            let link = table.link_of(&address).expect("entry");
            assert_eq!(
                table.next_step(address, link, at, 8, &mut |_| {}),
                LinkStep::Connect(address)
            );
            if i < 2 {
                table.on_connected(address, link);
                assert_eq!(
                    table.next_step(address, link, at, 8, &mut |_| {}),
                    LinkStep::Write { packets: 1 }
                );
                table.on_written(address, link, at);
            } else {
                table.on_connect_failed(address, link, at, &mut |_| {});
            }
        }
        let failing = table.link_of(&addresses[2]);
        let queued = table.push(addresses[3], 0, 100, t0).expect("evicts");
        assert_eq!(queued.evicted, failing, "the failing entry goes first");
        let oldest = table.link_of(&addresses[0]);
        let fifth = SocketAddr::from(([10, 0, 0, 5], 1));
        assert_eq!(
            table.push(fifth, 0, 100, t0).expect("evicts").evicted,
            oldest
        );
        // 3 and 5 hold packets, 1 is quiet: it goes next; then nothing is quiet.
        let sixth = SocketAddr::from(([10, 0, 0, 6], 1));
        assert!(table
            .push(sixth, 0, 100, t0)
            .expect("evicts")
            .evicted
            .is_some());
        let seventh = SocketAddr::from(([10, 0, 0, 7], 1));
        assert_eq!(table.push(seventh, 0, 100, t0), Err(Refused::TableFull));
        assert_eq!(table.figures().evicted, 3);
        assert_eq!(table.figures().refused, 1);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn a_next_hop_is_bounded_in_bytes_including_its_write_under_way() {
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:1".parse().expect("valid literal");
        let mut limits = limits();
        limits.queue_packets_max = 100;
        let mut table: NextHopTable<u32> = NextHopTable::new(limits);
        table.push(a, 1, 600, t0).expect("room");
        assert_eq!(table.push(a, 2, 401, t0), Err(Refused::QueueFull));
        table.push(a, 3, 400, t0).expect("exactly the limit");
        assert_eq!(table.bytes(), 1000);
        let link = table.link_of(&a).expect("entry");
        assert_eq!(
            table.next_step(a, link, t0, 8, &mut |_| {}),
            LinkStep::Connect(a)
        );
        table.on_connected(a, link);
        let mut taken = Vec::new();
        assert_eq!(
            table.next_step(a, link, t0, 1, &mut |p| taken.push(p)),
            LinkStep::Write { packets: 1 }
        );
        assert_eq!(taken, [1]);
        // The write under way still counts: no room yet.
        assert_eq!(table.bytes(), 1000);
        assert_eq!(table.push(a, 4, 1, t0), Err(Refused::QueueFull));
        assert_eq!(table.recount(), (1, 1));
        table.on_written(a, link, t0);
        assert_eq!(table.bytes(), 400);
        table.push(a, 5, 600, t0).expect("room after the write");
        let mut dropped = Vec::new();
        assert_eq!(
            table.next_step(a, link, t0, 8, &mut |p| taken.push(p)),
            LinkStep::Write { packets: 2 }
        );
        table.on_write_failed(a, link, t0, &mut |_| {}, &mut |p| dropped.push(p));
        assert_eq!(table.bytes(), 0);
        assert_eq!(table.recount(), (0, 0));
        assert_eq!(
            table.entries[&a].dropped, 4,
            "two refused, two lost in the write"
        );
    }
}
