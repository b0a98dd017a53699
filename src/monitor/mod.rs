//! The node watches its own mixing: every `monitor.interval` it sends a few Sphinx loop
//! packets whose final hop is itself, on routes through itself alone and, when a topology is
//! known, through other nodes, and it records each loop as returned (in time), late or lost.
//! `GET /report` and `GET /history` answer in the shapes of the node-status API of the
//! operator guide (`mostRecentIPV4`, `last5MinutesIPV4`, ...), with loss per path.
//!
//! Shape: [`Monitor`] is the pure record (time passed in); [`driver`] is the thread that
//! builds and sends the loops and feeds it what the shards report back.
//!
//! A loop is recognised at its final hop by its destination: 32 random bytes drawn at start
//! that only this node knows, so no one else can make a packet count as one of its loops; its
//! identifier (a sequence number and 8 random bytes) names it. On the wire a loop is a packet
//! like any other: the regular size, a delay per hop drawn as a client draws it
//! (exponential, mean `monitor.mean_delay`), sent from the node to the node first, so that the
//! next hop sees an ordinary forwarded packet. Its hops through this node count in the
//! node's received and forwarded figures like any packet's (they are real hops); its arrival
//! counts as `looped`, a series of its own, never as a drop.
//!
//! Bounded: at most `PENDING_MAX` loops in flight (more are not sent), `EDGES_MAX` paths kept,
//! and a fixed history of [`HISTORY_MINUTES`] one-minute buckets.

pub mod driver;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// One-minute buckets kept: a day.
pub const HISTORY_MINUTES: usize = 24 * 60;
/// Loops in flight at most.
pub const PENDING_MAX: usize = 4096;
/// Paths (hop pairs) tallied at most.
pub const EDGES_MAX: usize = 4096;

/// The address family a loop tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4 = 0,
    /// IPv6.
    V6 = 1,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// What became of a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Came back within its expected time and `late_after`.
    Returned,
    /// Came back, later than that.
    Late,
    /// Not back within `lost_after`.
    Lost,
}

/// One loop as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopPlan {
    /// Its identifier.
    pub id: [u8; 16],
    /// The family it tests (the node's own address's).
    pub family: Family,
    /// The mix nodes it crosses, in order, starting and ending with this node.
    pub path: Vec<SocketAddr>,
    /// The sum of its hops' delays.
    pub expected: Duration,
}

/// Counts of loops by fate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Sent.
    pub sent: u64,
    /// Back in time.
    pub returned: u64,
    /// Back late.
    pub late: u64,
    /// Never back.
    pub lost: u64,
}

impl Tally {
    fn add(&mut self, fate: Fate) {
        match fate {
            Fate::Returned => self.returned += 1,
            Fate::Late => self.late += 1,
            Fate::Lost => self.lost += 1,
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.returned += other.returned;
        self.late += other.late;
        self.lost += other.lost;
    }

    /// Percent of the resolved loops that came back (in time or late); None when none
    /// resolved.
    pub fn percent(&self) -> Option<u64> {
        let back = self.returned + self.late;
        let resolved = back + self.lost;
        (resolved > 0).then(|| (back * 100 + resolved / 2) / resolved)
    }

    /// (outcome, count) for sent, returned, late and lost: the /metrics labels.
    pub fn outcomes(&self) -> [(&'static str, u64); 4] {
        [
            ("sent", self.sent),
            ("returned", self.returned),
            ("late", self.late),
            ("lost", self.lost),
        ]
    }

    fn to_json(self) -> Value {
        json!({"sent": self.sent, "returned": self.returned, "late": self.late, "lost": self.lost})
    }
}

/// The limits of the record.
#[derive(Clone, Copy, Debug)]
pub struct MonitorLimits {
    /// A loop back later than its expected time plus this is late.
    pub late_after: Duration,
    /// A loop not back this long after it was sent is lost.
    pub lost_after: Duration,
}

struct Pending {
    plan: LoopPlan,
    sent_at: Instant,
}

/// One minute of outcomes, by family.
#[derive(Clone, Copy, Debug, Default)]
struct Minute {
    /// Minutes since the Unix epoch.
    index: u64,
    tallies: [Tally; 2],
}

/// The record of the node's loops.
pub struct Monitor {
    limits: MonitorLimits,
    pending: HashMap<[u8; 16], Pending>,
    minutes: VecDeque<Minute>,
    most_recent: [Option<bool>; 2],
    totals: [Tally; 2],
    edges: BTreeMap<(SocketAddr, SocketAddr), Tally>,
    /// Arrivals that named no loop in flight: back after being counted lost, or a copy.
    unmatched: u64,
    /// Loops not sent because [`PENDING_MAX`] were in flight.
    refused: u64,
}

fn minute_of(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 60
}

impl Monitor {
    /// An empty record.
    pub fn new(limits: MonitorLimits) -> Monitor {
        Monitor {
            limits,
            pending: HashMap::new(),
            minutes: VecDeque::with_capacity(HISTORY_MINUTES),
            most_recent: [None; 2],
            totals: [Tally::default(); 2],
            edges: BTreeMap::new(),
            unmatched: 0,
            refused: 0,
        }
    }

    /// Whether a loop may be sent now (room in flight).
    pub fn has_room(&self) -> bool {
        self.pending.len() < PENDING_MAX
    }

    /// `plan` was sent at `now` (`wall` in calendar time).
    pub fn sent(&mut self, plan: LoopPlan, now: Instant, wall: SystemTime) {
        if !self.has_room() {
            self.refused += 1;
            return;
        }
        let family = plan.family as usize;
        self.totals[family].sent += 1;
        self.minute(wall).tallies[family].sent += 1;
        for edge in plan.path.windows(2) {
            if let Some(tally) = self.edge(edge[0], edge[1]) {
                tally.sent += 1;
            }
        }
        self.pending.insert(plan.id, Pending { plan, sent_at: now });
    }

    fn minute(&mut self, wall: SystemTime) -> &mut Minute {
        let index = minute_of(wall);
        if self.minutes.back().is_none_or(|m| m.index < index) {
            if self.minutes.len() == HISTORY_MINUTES {
                self.minutes.pop_front();
            }
            self.minutes.push_back(Minute {
                index,
                ..Minute::default()
            });
        }
        // A clock stepped back: count in the newest minute.
        self.minutes.back_mut().expect("just pushed")
    }

    fn edge(&mut self, from: SocketAddr, to: SocketAddr) -> Option<&mut Tally> {
        if self.edges.len() >= EDGES_MAX && !self.edges.contains_key(&(from, to)) {
            return None;
        }
        Some(self.edges.entry((from, to)).or_default())
    }

    fn resolve(&mut self, pending: Pending, fate: Fate, wall: SystemTime) {
        let family = pending.plan.family as usize;
        self.totals[family].add(fate);
        self.minute(wall).tallies[family].add(fate);
        self.most_recent[family] = Some(fate != Fate::Lost);
        for edge in pending.plan.path.windows(2) {
            if let Some(tally) = self.edge(edge[0], edge[1]) {
                tally.add(fate);
            }
        }
    }

    /// A loop came back at `at`: its fate, or None when no loop in flight has that id.
    pub fn arrived(&mut self, id: &[u8; 16], at: Instant, wall: SystemTime) -> Option<Fate> {
        let Some(pending) = self.pending.remove(id) else {
            self.unmatched += 1;
            return None;
        };
        let took = at.saturating_duration_since(pending.sent_at);
        let fate = if took <= pending.plan.expected + self.limits.late_after {
            Fate::Returned
        } else {
            Fate::Late
        };
        self.resolve(pending, fate, wall);
        Some(fate)
    }

    /// The time is `now`: loops out longer than `lost_after` are lost.
    pub fn tick(&mut self, now: Instant, wall: SystemTime) {
        let lost_after = self.limits.lost_after;
        let expired: Vec<[u8; 16]> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.sent_at) > lost_after)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(pending) = self.pending.remove(&id) {
                self.resolve(pending, Fate::Lost, wall);
            }
        }
    }

    /// Loops in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Totals since start, by family.
    pub fn totals(&self, family: Family) -> Tally {
        self.totals[family as usize]
    }

    /// Arrivals that named no loop in flight.
    pub fn unmatched(&self) -> u64 {
        self.unmatched
    }

    fn window(&self, wall: SystemTime, minutes: u64, family: Family) -> Tally {
        let now = minute_of(wall);
        let mut tally = Tally::default();
        for m in self.minutes.iter().rev() {
            if m.index + minutes <= now {
                break;
            }
            tally.merge(&m.tallies[family as usize]);
        }
        tally
    }

    /// Each path (hop pair) with its tally, in address order.
    pub fn paths(&self) -> impl Iterator<Item = (&(SocketAddr, SocketAddr), &Tally)> {
        self.edges.iter()
    }

    /// `GET /report` at `wall`, for the node `identity`.
    pub fn report(&self, identity: &str, wall: SystemTime) -> Value {
        let mut body = json!({"identity": identity});
        for (family, suffix) in [(Family::V4, "IPV4"), (Family::V6, "IPV6")] {
            body[format!("mostRecent{suffix}")] = self.most_recent[family as usize].into();
            for (name, minutes) in [("last5Minutes", 5), ("lastHour", 60), ("lastDay", 1440)] {
                body[format!("{name}{suffix}")] =
                    self.window(wall, minutes, family).percent().into();
            }
        }
        body["loops"] = json!({
            "ipv4": self.totals[0].to_json(),
            "ipv6": self.totals[1].to_json(),
            "in_flight": self.pending.len(),
            "unmatched": self.unmatched,
            "not_sent": self.refused,
        });
        let paths: Vec<Value> = self
            .edges
            .iter()
            .map(|((from, to), tally)| {
                let mut path = tally.to_json();
                path["from"] = from.to_string().into();
                path["to"] = to.to_string().into();
                path["percent"] = tally.percent().into();
                path
            })
            .collect();
        body["paths"] = paths.into();
        body
    }

    /// `GET /history`: the last day, an hour a point, oldest first.
    pub fn history(&self, identity: &str, wall: SystemTime) -> Value {
        let now_hour = minute_of(wall) / 60;
        let mut hours: BTreeMap<u64, [Tally; 2]> = BTreeMap::new();
        for m in &self.minutes {
            let hour = m.index / 60;
            if hour + 24 <= now_hour {
                continue;
            }
            let entry = hours.entry(hour).or_default();
            entry[0].merge(&m.tallies[0]);
            entry[1].merge(&m.tallies[1]);
        }
        let points: Vec<Value> = hours
            .iter()
            .map(|(hour, [v4, v6])| {
                let start = UNIX_EPOCH + Duration::from_secs(hour * 3600);
                json!({
                    "timestamp": humantime::format_rfc3339_seconds(start).to_string(),
                    "ipv4Uptime": v4.percent(),
                    "ipv6Uptime": v6.percent(),
                    "ipv4": v4.to_json(),
                    "ipv6": v6.to_json(),
                })
            })
            .collect();
        json!({"identity": identity, "history": points})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MonitorLimits {
        MonitorLimits {
            late_after: Duration::from_secs(2),
            lost_after: Duration::from_secs(30),
        }
    }

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn plan(n: u8, path: &[u16]) -> LoopPlan {
        LoopPlan {
            id: [n; 16],
            family: Family::V4,
            path: path.iter().map(|p| a(*p)).collect(),
            expected: Duration::from_millis(100),
        }
    }

    #[test]
    fn loops_are_returned_late_or_lost_and_windows_count_them() {
        let t0 = Instant::now();
        let w0 = UNIX_EPOCH + Duration::from_secs(1_764_547_200);
        let mut m = Monitor::new(limits());
        m.sent(plan(1, &[1, 2, 1]), t0, w0);
        m.sent(plan(2, &[1, 3, 1]), t0, w0);
        m.sent(plan(3, &[1, 1]), t0, w0);
        let report = m.report("me", w0);
        assert_eq!(report["mostRecentIPV4"], Value::Null);
        assert_eq!(report["last5MinutesIPV4"], Value::Null);
        assert_eq!(
            m.arrived(&[1; 16], t0 + Duration::from_millis(500), w0),
            Some(Fate::Returned)
        );
        assert_eq!(
            m.arrived(&[2; 16], t0 + Duration::from_secs(5), w0),
            Some(Fate::Late)
        );
        assert_eq!(m.arrived(&[2; 16], t0 + Duration::from_secs(5), w0), None);
        m.tick(t0 + Duration::from_secs(10), w0);
        assert_eq!(m.in_flight(), 1, "not lost yet");
        m.tick(t0 + Duration::from_secs(31), w0 + Duration::from_secs(31));
        assert_eq!(m.in_flight(), 0);
        let totals = m.totals(Family::V4);
        assert_eq!(
            (totals.sent, totals.returned, totals.late, totals.lost),
            (3, 1, 1, 1)
        );
        assert_eq!(m.unmatched(), 1);
        let report = m.report("me", w0 + Duration::from_secs(31));
        assert_eq!(report["mostRecentIPV4"], false);
        assert_eq!(report["last5MinutesIPV4"], 67);
        assert_eq!(report["lastDayIPV4"], 67);
        assert_eq!(report["mostRecentIPV6"], Value::Null);
        // Per path: the self-only loop was the lost one.
        let paths = report["paths"].as_array().unwrap();
        let self_path = paths
            .iter()
            .find(|p| p["from"] == "127.0.0.1:1" && p["to"] == "127.0.0.1:1")
            .unwrap();
        assert_eq!(
            (self_path["lost"].as_u64(), self_path["percent"].as_u64()),
            (Some(1), Some(0))
        );
        let via_2 = paths.iter().find(|p| p["to"] == "127.0.0.1:2").unwrap();
        assert_eq!(via_2["percent"], 100);
        // Ten minutes on, the 5-minute window is empty and the day still counts.
        let later = m.report("me", w0 + Duration::from_secs(600));
        assert_eq!(later["last5MinutesIPV4"], Value::Null);
        assert_eq!(later["lastDayIPV4"], 67);
    }

    #[test]
    fn the_history_is_hourly_over_a_day_and_bounded() {
        let t0 = Instant::now();
        let w0 = UNIX_EPOCH + Duration::from_secs(1_764_547_200);
        let mut m = Monitor::new(limits());
        // Two days of a loop a minute, each back.
        for i in 0..(2 * 1440u64) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            let wall = w0 + Duration::from_secs(i * 60);
            let at = t0 + Duration::from_secs(i * 60);
            m.sent(
                LoopPlan {
                    id,
                    ..plan(0, &[1, 1])
                },
                at,
                wall,
            );
            m.arrived(&id, at + Duration::from_millis(200), wall);
        }
        assert!(m.minutes.len() <= HISTORY_MINUTES);
        let wall = w0 + Duration::from_secs(2 * 1440 * 60 - 60);
        let history = m.history("me", wall);
        let points = history["history"].as_array().unwrap();
        assert_eq!(points.len(), 24);
        assert!(points.iter().all(|p| p["ipv4Uptime"] == 100));
        assert!(points.iter().all(|p| p["ipv6Uptime"] == Value::Null));
        assert_eq!(m.report("me", wall)["lastHourIPV4"], 100);
    }

    #[test]
    fn in_flight_loops_are_bounded() {
        let t0 = Instant::now();
        let w0 = UNIX_EPOCH;
        let mut m = Monitor::new(limits());
        for i in 0..(PENDING_MAX as u64 + 5) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            m.sent(
                LoopPlan {
                    id,
                    ..plan(0, &[1, 1])
                },
                t0,
                w0,
            );
        }
        assert_eq!(m.in_flight(), PENDING_MAX);
        assert_eq!(m.report("me", w0)["loops"]["not_sent"], 5);
    }
}
