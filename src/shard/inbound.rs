//! One shard's inbound connections as a policy with no I/O: [`InboundTable`].
//!
//! Three deadlines bound what a connection may hold without sending packets:
//!
//! - the first whole frame must arrive within `engine.first_frame_timeout` of the accept (a
//!   connection that never sends a byte is closed);
//! - a frame whose first byte arrived must be whole within `engine.read_timeout`, counted from
//!   that byte, not from the last read (one byte every few seconds does not keep it open);
//! - between frames, a connection may stay silent for `engine.connection_idle_timeout`.
//!
//! Admission has two limits: `engine.connections_per_ip_max` per source address (this shard's
//! share), and this shard's share of `engine.connections_inbound_max`. When the shard is full a
//! new connection is still taken: the one whose last whole frame is oldest is closed to make
//! room, so that a crowd of idle or slow connections cannot lock new senders out. Only when the
//! new one's address is itself at its cap is it refused.
//!
//! With a topology, `engine.connections_reserved_known` (this shard's share) is room that
//! only known nodes' addresses may fill: once connections from other addresses hold all but
//! the reserved room, a new one from another address closes the longest silent of those,
//! never a known node's. A known node's new connection closes the longest silent unknown
//! one when the shard is full, and a known one only when there is no other.
//!
//! What it deliberately does not do: read sockets or keep time (the driver passes `now` and
//! cancels the reader of a connection closed here).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::topology::KnownNodes;

/// Deadlines of an inbound connection (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundLimits {
    /// Connections this shard holds at once.
    pub connections_max: usize,
    /// Connections from one source address this shard holds at once.
    pub per_ip_max: usize,
    /// Of `connections_max`, connections only known nodes may take (with a topology).
    pub reserved_known: usize,
    /// From accept to the first whole frame.
    pub first_frame_timeout: Duration,
    /// From a frame's first byte to its last.
    pub frame_timeout: Duration,
    /// Silence allowed between frames.
    pub idle_timeout: Duration,
}

/// Why a connection is closed by the table's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No whole frame within the first-frame timeout.
    FirstFrame,
    /// A frame started but did not complete in time.
    SlowFrame,
    /// Silent between frames for the idle timeout.
    Idle,
    /// Closed to make room for a new connection (it was the longest without a frame).
    Evicted,
}

/// What to do with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Take it.
    Accept,
    /// Take it after closing connection `evict` (the longest without a whole frame).
    AcceptEvicting(u64),
    /// Refuse it: its source address holds its share of connections already.
    RefusePerIp,
}

#[derive(Clone, Copy, Debug)]
struct Connection {
    ip: IpAddr,
    /// From a known node's address.
    known: bool,
    accepted_at: Instant,
    /// The last whole frame, if any.
    last_frame_at: Option<Instant>,
}

/// One shard's inbound connections: admission and deadlines.
#[derive(Debug)]
pub struct InboundTable {
    limits: InboundLimits,
    connections: HashMap<u64, Connection>,
    per_ip: HashMap<IpAddr, usize>,
    /// The known nodes (None: no topology; no room is kept).
    known: Option<Arc<KnownNodes>>,
    /// Connections held from known nodes' addresses.
    known_count: usize,
}

impl InboundTable {
    /// An empty table under `limits`.
    pub fn new(limits: InboundLimits) -> InboundTable {
        InboundTable {
            limits,
            connections: HashMap::new(),
            per_ip: HashMap::new(),
            known: None,
            known_count: 0,
        }
    }

    /// The known nodes from now on (None: no topology). Connections held are sorted again.
    /// The old set comes back, to be freed by the caller.
    pub fn set_known(&mut self, known: Option<Arc<KnownNodes>>) -> Option<Arc<KnownNodes>> {
        let old = std::mem::replace(&mut self.known, known);
        self.known_count = 0;
        for connection in self.connections.values_mut() {
            connection.known = self
                .known
                .as_ref()
                .is_some_and(|k| k.contains(connection.ip));
            self.known_count += usize::from(connection.known);
        }
        old
    }

    /// Connections held from known nodes' addresses.
    pub fn known_len(&self) -> usize {
        self.known_count
    }

    fn is_known(&self, ip: IpAddr) -> bool {
        self.known.as_ref().is_some_and(|k| k.contains(ip))
    }

    /// The limits.
    pub fn limits(&self) -> &InboundLimits {
        &self.limits
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Connections held from `ip`.
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Whether a new connection from `ip` may be taken, and at whose cost.
    pub fn admit(&self, ip: IpAddr) -> Admit {
        if self.from_ip(ip) >= self.limits.per_ip_max.max(1) {
            return Admit::RefusePerIp;
        }
        let max = self.limits.connections_max.max(1);
        let known = self.is_known(ip);
        let reserved = if self.known.is_some() {
            self.limits.reserved_known.min(max - 1)
        } else {
            0
        };
        let unknown = self.connections.len() - self.known_count;
        let over_share = !known && unknown >= max - reserved;
        if self.connections.len() < max && !over_share {
            return Admit::Accept;
        }
        // Unknown addresses first (the only candidates for a newcomer from one); then the
        // longest without a whole frame: never-sent ones by accept time, others by their
        // last frame. Ties go to the lower id (the older connection).
        let victim = self
            .connections
            .iter()
            .filter(|(_, c)| known || !over_share || !c.known)
            .min_by_key(|(id, c)| (c.known, c.last_frame_at.unwrap_or(c.accepted_at), **id))
            .map(|(id, _)| *id);
        match victim {
            Some(id) => Admit::AcceptEvicting(id),
            None => Admit::Accept,
        }
    }

    /// Connection `id` from `ip` was taken at `now`.
    pub fn insert(&mut self, id: u64, ip: IpAddr, now: Instant) {
        let known = self.is_known(ip);
        self.known_count += usize::from(known);
        let previous = self.connections.insert(
            id,
            Connection {
                ip,
                known,
                accepted_at: now,
                last_frame_at: None,
            },
        );
        debug_assert!(previous.is_none(), "connection ids are not reused");
        *self.per_ip.entry(ip).or_insert(0) += 1;
    }

    /// Connection `id` ended (closed by either side, or evicted).
    pub fn remove(&mut self, id: u64) {
        let Some(connection) = self.connections.remove(&id) else {
            return;
        };
        self.known_count -= usize::from(connection.known);
        if let Some(count) = self.per_ip.get_mut(&connection.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&connection.ip);
            }
        }
    }

    /// Connection `id` delivered a whole frame at `now`.
    pub fn on_frame(&mut self, id: u64, now: Instant) {
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.last_frame_at = Some(now);
        }
    }

    /// When connection `id` must have made progress, and why it is closed if it has not: with
    /// `partial_since` the time the first byte of an incomplete frame arrived, if one did.
    pub fn deadline(
        &self,
        id: u64,
        partial_since: Option<Instant>,
    ) -> Option<(Instant, CloseReason)> {
        let connection = self.connections.get(&id)?;
        let l = &self.limits;
        let mut due = match connection.last_frame_at {
            None => (
                connection.accepted_at + l.first_frame_timeout,
                CloseReason::FirstFrame,
            ),
            Some(at) => (at + l.idle_timeout, CloseReason::Idle),
        };
        if let Some(since) = partial_since {
            let frame_due = since + l.frame_timeout;
            // A frame in progress must finish within its own timeout, and a first frame
            // within the first-frame timeout, whichever comes first.
            if connection.last_frame_at.is_some() || frame_due < due.0 {
                due = (frame_due, CloseReason::SlowFrame);
            }
        }
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> InboundLimits {
        InboundLimits {
            connections_max: 3,
            per_ip_max: 2,
            reserved_known: 0,
            first_frame_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_full_table_evicts_the_connection_longest_without_a_frame() {
        let t0 = Instant::now();
        let mut table = InboundTable::new(limits());
        table.insert(1, ip(1), t0);
        table.insert(2, ip(2), t0 + Duration::from_secs(1));
        table.insert(3, ip(3), t0 + Duration::from_secs(2));
        // 1 sends frames; 2 never did and is the oldest silent one.
        table.on_frame(1, t0 + Duration::from_secs(3));
        assert_eq!(table.admit(ip(4)), Admit::AcceptEvicting(2));
        table.remove(2);
        table.insert(4, ip(4), t0 + Duration::from_secs(4));
        assert_eq!(table.admit(ip(5)), Admit::AcceptEvicting(3));
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn one_address_is_capped_and_the_cap_frees_with_its_connections() {
        let t0 = Instant::now();
        let mut table = InboundTable::new(limits());
        table.insert(1, ip(1), t0);
        table.insert(2, ip(1), t0);
        assert_eq!(table.admit(ip(1)), Admit::RefusePerIp);
        assert_eq!(table.admit(ip(2)), Admit::Accept);
        table.remove(1);
        assert_eq!(table.admit(ip(1)), Admit::Accept);
        table.remove(2);
        assert_eq!(table.from_ip(ip(1)), 0);
        table.remove(2);
        assert!(table.is_empty());
    }

    #[test]
    fn deadlines_count_from_accept_from_a_frames_first_byte_and_from_the_last_frame() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut table = InboundTable::new(limits());
        table.insert(1, ip(1), t0);
        assert_eq!(
            table.deadline(1, None),
            Some((t0 + s(10), CloseReason::FirstFrame))
        );
        // A first frame started late must still finish by the first-frame deadline.
        assert_eq!(
            table.deadline(1, Some(t0 + s(8))),
            Some((t0 + s(10), CloseReason::FirstFrame))
        );
        assert_eq!(
            table.deadline(1, Some(t0 + s(1))),
            Some((t0 + s(6), CloseReason::SlowFrame))
        );
        table.on_frame(1, t0 + s(20));
        assert_eq!(
            table.deadline(1, None),
            Some((t0 + s(80), CloseReason::Idle))
        );
        // Trickling: the deadline stays at the frame's first byte plus the frame timeout.
        assert_eq!(
            table.deadline(1, Some(t0 + s(30))),
            Some((t0 + s(35), CloseReason::SlowFrame))
        );
        assert_eq!(table.deadline(9, None), None);
    }

    #[test]
    fn room_kept_for_known_nodes_is_never_taken_by_other_addresses() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut limits = limits();
        limits.connections_max = 4;
        limits.reserved_known = 2;
        limits.per_ip_max = 4;
        let mut table = InboundTable::new(limits);
        // No topology: no room kept, the cap is shared.
        table.insert(1, ip(1), t0);
        table.insert(2, ip(2), t0 + s(1));
        assert_eq!(table.admit(ip(3)), Admit::Accept);
        let known = KnownNodes::from_addresses(vec![vec![ip(100)], vec![ip(101)]], "test");
        table.set_known(Some(Arc::new(known)));
        assert_eq!(table.known_len(), 0);
        // Two unknown connections hold all but the reserved room: a third unknown one
        // closes the longest silent unknown one.
        assert_eq!(table.admit(ip(3)), Admit::AcceptEvicting(1));
        // A known node is taken outright, twice.
        assert_eq!(table.admit(ip(100)), Admit::Accept);
        table.insert(10, ip(100), t0 + s(2));
        table.insert(11, ip(101), t0 + s(3));
        assert_eq!(table.known_len(), 2);
        // Full: an unknown newcomer closes an unknown one, never a known one, even though
        // the known ones are the longest silent.
        table.on_frame(1, t0 + s(9));
        table.on_frame(2, t0 + s(8));
        assert_eq!(table.admit(ip(3)), Admit::AcceptEvicting(2));
        // A known newcomer of a full shard closes the longest silent unknown one too.
        assert_eq!(table.admit(ip(100)), Admit::AcceptEvicting(2));
        // Only known connections: a known newcomer closes the longest silent known one.
        table.remove(1);
        table.remove(2);
        table.insert(12, ip(100), t0 + s(4));
        table.insert(13, ip(101), t0 + s(5));
        assert_eq!(table.known_len(), 4);
        assert_eq!(table.admit(ip(101)), Admit::AcceptEvicting(10));
        // ... and an unknown one (below its share) may close one of those beyond the room.
        assert_eq!(table.admit(ip(3)), Admit::AcceptEvicting(10));
        // The topology changes: the connections are sorted again.
        table.set_known(Some(Arc::new(KnownNodes::from_addresses(
            vec![vec![ip(100)]],
            "t",
        ))));
        assert_eq!(table.known_len(), 2);
        table.set_known(None);
        assert_eq!(table.known_len(), 0);
    }
}
