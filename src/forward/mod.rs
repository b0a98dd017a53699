//! Pure outbound state: which shard owns a next hop, how long to back off after failures,
//! the bounded queue of packets waiting for each next hop, and each next hop's connection
//! state machine, kept in a table with a maximum size.
//!
//! What it deliberately does not do: open sockets, write packets, or read the clock. The
//! driver reports what happened (`on_connected`, `on_connect_failed(now)`, ...) and asks what
//! it may do (`may_connect(now)`); every limit that bites is handed back to the caller (a
//! full queue returns the packet, a full table is an error) so that the caller counts it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Initial reconnection backoff (Nym's old default).
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_secs(10);
/// Maximum reconnection backoff (Nym's old default).
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(300);
/// Packets queued per next hop by default.
pub const QUEUE_CAPACITY_DEFAULT: usize = 2000;
/// Next hops tracked per shard by default.
pub const PEERS_MAX_DEFAULT: usize = 4096;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard that owns connections to `address`: FNV-1a over the IP octets and the
/// big-endian port, modulo `shard_count`. Stable across runs and builds, unlike `RandomState`.
///
/// # Panics
/// If `shard_count` is zero: a configuration bug caught at start.
pub fn owner_shard(address: &SocketAddr, shard_count: usize) -> usize {
    assert!(shard_count > 0, "shard_count must be at least 1");
    let hash = match address.ip() {
        IpAddr::V4(ip) => fnv1a(FNV_OFFSET_BASIS, &ip.octets()),
        IpAddr::V6(ip) => fnv1a(FNV_OFFSET_BASIS, &ip.octets()),
    };
    let hash = fnv1a(hash, &address.port().to_be_bytes());
    (hash % shard_count as u64) as usize
}

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

/// A bounded FIFO of packets waiting for one next hop. Its storage is allocated once, at the
/// first push, and never grows past the capacity.
#[derive(Debug)]
pub struct PeerQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> PeerQueue<T> {
    /// An empty queue that will hold at most `capacity` packets; allocates nothing yet.
    pub fn new(capacity: usize) -> Self {
        PeerQueue {
            items: VecDeque::new(),
            capacity,
        }
    }

    /// Appends `item`, or hands it back if the queue is full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.capacity {
            return Err(item);
        }
        if self.items.capacity() == 0 {
            self.items.reserve_exact(self.capacity);
        }
        self.items.push_back(item);
        Ok(())
    }

    /// Takes the oldest packet.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// The oldest packet, left in place (for a write that may not complete).
    pub fn front(&self) -> Option<&T> {
        self.items.front()
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no packet is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Most packets held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes every packet, oldest first (when the next hop is given up on).
    pub fn drain(&mut self, yield_item: &mut impl FnMut(T)) {
        while let Some(item) = self.items.pop_front() {
            yield_item(item);
        }
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

/// One next hop: its connection state and its queue.
#[derive(Debug)]
pub struct Peer<T> {
    /// The connection state machine.
    pub state: PeerState,
    /// Packets waiting to be written.
    pub queue: PeerQueue<T>,
}

/// Why [`PeerTable::get_or_insert`] could not add a next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peer table is full ({peers_max} next hops)")]
pub struct PeerTableFull {
    /// The table's limit.
    pub peers_max: usize,
}

/// The next hops one shard owns, at most `peers_max` of them, with storage for the map
/// allocated at start.
#[derive(Debug)]
pub struct PeerTable<T> {
    peers: HashMap<SocketAddr, Peer<T>>,
    peers_max: usize,
    queue_capacity: usize,
    backoff: Backoff,
    rejected_table_full: u64,
}

impl<T> PeerTable<T> {
    /// An empty table for at most `peers_max` next hops, each with a queue of
    /// `queue_capacity` packets and `backoff` between attempts.
    pub fn new(peers_max: usize, queue_capacity: usize, backoff: Backoff) -> Self {
        PeerTable {
            peers: HashMap::with_capacity(peers_max),
            peers_max,
            queue_capacity,
            backoff,
            rejected_table_full: 0,
        }
    }

    /// The next hop at `address`, added (idle, empty queue) if new and there is room. A full
    /// table is counted in [`Self::rejected_table_full`].
    pub fn get_or_insert(&mut self, address: SocketAddr) -> Result<&mut Peer<T>, PeerTableFull> {
        if !self.peers.contains_key(&address) && self.peers.len() >= self.peers_max {
            self.rejected_table_full += 1;
            return Err(PeerTableFull {
                peers_max: self.peers_max,
            });
        }
        let queue_capacity = self.queue_capacity;
        let backoff = self.backoff;
        Ok(self.peers.entry(address).or_insert_with(|| Peer {
            state: PeerState::new(backoff),
            queue: PeerQueue::new(queue_capacity),
        }))
    }

    /// The next hop at `address`, if tracked.
    pub fn get_mut(&mut self, address: &SocketAddr) -> Option<&mut Peer<T>> {
        self.peers.get_mut(address)
    }

    /// Stops tracking `address` (an idle peer with an empty queue, say), returning it.
    pub fn remove(&mut self, address: &SocketAddr) -> Option<Peer<T>> {
        self.peers.remove(address)
    }

    /// Next hops tracked.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no next hop is tracked.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The most next hops tracked at once.
    pub fn peers_max(&self) -> usize {
        self.peers_max
    }

    /// How many times a new next hop was refused because the table was full.
    pub fn rejected_table_full(&self) -> u64 {
        self.rejected_table_full
    }

    /// Packets waiting across all queues.
    pub fn queued_total(&self) -> usize {
        self.peers.values().map(|peer| peer.queue.len()).sum()
    }

    /// Every tracked next hop, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&SocketAddr, &mut Peer<T>)> {
        self.peers.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_shard_is_stable_and_spreads_addresses() {
        let a: SocketAddr = "10.0.0.1:1789".parse().expect("valid literal");
        // Pinned value: FNV-1a of [10, 0, 0, 1, 0x06, 0xfd]; a change would move peers
        // between shards across versions.
        let expected = fnv1a(FNV_OFFSET_BASIS, &[10, 0, 0, 1, 0x06, 0xfd]);
        assert_eq!(owner_shard(&a, 1_000_003), (expected % 1_000_003) as usize);
        assert_eq!(owner_shard(&a, 1), 0);
        let mut per_shard = [0usize; 4];
        for i in 0..4000u32 {
            let address = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1789));
            let shard = owner_shard(&address, 4);
            assert_eq!(shard, owner_shard(&address, 4));
            per_shard[shard] += 1;
        }
        assert!(
            per_shard.iter().all(|&n| (800..1200).contains(&n)),
            "{per_shard:?}"
        );
        let v6: SocketAddr = "[2001:db8::1]:1789".parse().expect("valid literal");
        assert!(owner_shard(&v6, 3) < 3);
    }

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
    fn queue_is_bounded_fifo_allocated_once() {
        let mut queue = PeerQueue::new(3);
        assert_eq!(queue.items.capacity(), 0);
        for i in 0..3 {
            queue.push(i).expect("room");
        }
        let capacity = queue.items.capacity();
        assert!(capacity >= 3);
        assert_eq!(queue.push(9), Err(9));
        assert_eq!(queue.front(), Some(&0));
        assert_eq!(queue.pop(), Some(0));
        queue.push(3).expect("room again");
        let mut drained = Vec::new();
        queue.drain(&mut |i| drained.push(i));
        assert_eq!(drained, [1, 2, 3]);
        assert!(queue.is_empty());
        assert_eq!(queue.items.capacity(), capacity);
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

    #[test]
    fn table_is_bounded_and_counts_refusals() {
        let mut table: PeerTable<u8> = PeerTable::new(2, 4, Backoff::default());
        let a: SocketAddr = "10.0.0.1:1".parse().expect("valid literal");
        let b: SocketAddr = "10.0.0.2:1".parse().expect("valid literal");
        let c: SocketAddr = "10.0.0.3:1".parse().expect("valid literal");
        table
            .get_or_insert(a)
            .expect("room")
            .queue
            .push(1)
            .expect("room");
        table.get_or_insert(b).expect("room");
        assert_eq!(
            table.get_or_insert(c).err(),
            Some(PeerTableFull { peers_max: 2 })
        );
        assert_eq!(table.rejected_table_full(), 1);
        assert_eq!(table.get_or_insert(a).expect("known").queue.len(), 1);
        assert_eq!(table.queued_total(), 1);
        assert!(table.remove(&b).is_some());
        table.get_or_insert(c).expect("room after removal");
        assert_eq!(table.len(), 2);
        assert_eq!(table.get_or_insert(c).expect("known").queue.capacity(), 4);
    }
}
