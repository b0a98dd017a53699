//! The measuring side's state (pure): one target's echoes and round trips, why a target could
//! not be measured, and when the next run is due. Time comes in as `now`.
//!
//! A target is measured over one connection, one echo at a time: send an echo, wait for its
//! reply (at most the packet timeout), wait the spacing, send the next. The first failure ends
//! the target, as in Nym's VerLoc: a reply that does not check, a timeout or a broken
//! connection leaves the node without a measurement for this run.

use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::packet::{build_echo, check_reply, EchoBytes, ReplyBytes, ReplyReject};
use super::stats::Measurement;

/// Why a target has no measurement this run. Also the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetFailure {
    /// Its host did not resolve to an address.
    Unresolved,
    /// The connection was refused or did not open within the connect timeout.
    Unreachable,
    /// No whole reply within the packet timeout.
    Timeout,
    /// The connection broke (reset or closed) while sending or waiting.
    ConnectionLost,
    /// A reply's echo differs from the echo sent.
    EchoMismatch,
    /// A reply's signature does not verify with the node's identity key.
    BadSignature,
    /// The node is stopping.
    Stopped,
}

impl TargetFailure {
    /// Every reason, for counters.
    pub const ALL: [TargetFailure; 7] = [
        TargetFailure::Unresolved,
        TargetFailure::Unreachable,
        TargetFailure::Timeout,
        TargetFailure::ConnectionLost,
        TargetFailure::EchoMismatch,
        TargetFailure::BadSignature,
        TargetFailure::Stopped,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            TargetFailure::Unresolved => "unresolved",
            TargetFailure::Unreachable => "unreachable",
            TargetFailure::Timeout => "timeout",
            TargetFailure::ConnectionLost => "connection_lost",
            TargetFailure::EchoMismatch => "echo_mismatch",
            TargetFailure::BadSignature => "bad_reply_signature",
            TargetFailure::Stopped => "stopped",
        }
    }

    /// Index into [`TargetFailure::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl From<ReplyReject> for TargetFailure {
    fn from(reject: ReplyReject) -> Self {
        match reject {
            ReplyReject::EchoMismatch => TargetFailure::EchoMismatch,
            ReplyReject::BadSignature => TargetFailure::BadSignature,
        }
    }
}

/// The first sequence number for a target, from a random `u64`: low enough that
/// `packets_total` increments cannot overflow.
pub fn first_sequence(random: u64, packets_total: usize) -> u64 {
    random % (u64::MAX - packets_total as u64)
}

/// The echo awaiting its reply; `sent_at` is `None` until it has been written.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    echo: EchoBytes,
    sent_at: Option<Instant>,
}

/// One target's measurement in progress.
#[derive(Debug)]
pub struct TargetProbe {
    responder: VerifyingKey,
    packets_total: usize,
    next_sequence: u64,
    in_flight: Option<InFlight>,
    round_trips: Vec<Duration>,
}

impl TargetProbe {
    /// Measure the node with identity `responder` with `packets_total` echoes, numbered from
    /// `first_sequence` (see [`first_sequence`]).
    pub fn new(responder: VerifyingKey, packets_total: usize, first_sequence: u64) -> TargetProbe {
        assert!(
            first_sequence <= u64::MAX - packets_total as u64,
            "sequence would overflow"
        );
        TargetProbe {
            responder,
            packets_total,
            next_sequence: first_sequence,
            in_flight: None,
            round_trips: Vec::with_capacity(packets_total),
        }
    }

    /// All echoes answered.
    pub fn is_done(&self) -> bool {
        self.round_trips.len() >= self.packets_total
    }

    /// The next echo to send; `None` when all are answered. At most one echo is in flight:
    /// calling again before its reply is a bug. Signing happens here, before the clock starts.
    pub fn next_echo(&mut self, identity: &SigningKey) -> Option<EchoBytes> {
        assert!(self.in_flight.is_none(), "an echo is already in flight");
        if self.is_done() {
            return None;
        }
        let echo = build_echo(self.next_sequence, identity);
        self.next_sequence += 1;
        self.in_flight = Some(InFlight {
            echo,
            sent_at: None,
        });
        Some(echo)
    }

    /// The echo in flight was written at `now`: the round trip starts.
    pub fn on_sent(&mut self, now: Instant) {
        let in_flight = self.in_flight.as_mut().expect("on_sent without an echo");
        assert!(in_flight.sent_at.is_none(), "on_sent twice");
        in_flight.sent_at = Some(now);
    }

    /// When the reply to the echo in flight is due, given the packet timeout.
    pub fn reply_deadline(&self, packet_timeout: Duration) -> Option<Instant> {
        self.in_flight
            .and_then(|f| f.sent_at)
            .map(|sent| sent + packet_timeout)
    }

    /// A whole reply arrived at `now`: check it against the echo in flight. Its round trip, or
    /// why it is not a measurement.
    pub fn on_reply(&mut self, reply: &ReplyBytes, now: Instant) -> Result<Duration, ReplyReject> {
        // A reply with nothing sent cannot match anything we sent.
        let in_flight = self.in_flight.take().ok_or(ReplyReject::EchoMismatch)?;
        let sent_at = in_flight.sent_at.ok_or(ReplyReject::EchoMismatch)?;
        check_reply(reply, &in_flight.echo, &self.responder)?;
        let round_trip = now.saturating_duration_since(sent_at);
        self.round_trips.push(round_trip);
        Ok(round_trip)
    }

    /// Round trips measured so far.
    pub fn round_trips(&self) -> &[Duration] {
        &self.round_trips
    }

    /// The figures, once every echo is answered; `None` before.
    pub fn measurement(&self) -> Option<Measurement> {
        if self.is_done() {
            Measurement::from_round_trips(&self.round_trips)
        } else {
            None
        }
    }
}

/// How a run ended, for scheduling the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The node list was read and every node was tried.
    Finished,
    /// The node list could not be had.
    NoNodeList,
}

/// How long to wait before the next run: the run interval after a run, the retry interval when
/// the node list could not be had.
pub fn next_run_delay(
    outcome: RunOutcome,
    run_interval: Duration,
    retry_interval: Duration,
) -> Duration {
    match outcome {
        RunOutcome::Finished => run_interval,
        RunOutcome::NoNodeList => retry_interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verloc::packet::{answer_echo, sign_reply};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// A virtual clock: every step is an offset from one base instant.
    struct Clock(Instant);
    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    #[test]
    fn measures_every_echo() {
        let (me, them) = (key(1), key(2));
        let clock = Clock(Instant::now());
        let mut probe = TargetProbe::new(them.verifying_key(), 3, 10);
        let mut t = 0;
        for rtt in [5, 7, 9] {
            let echo = probe.next_echo(&me).unwrap();
            assert_eq!(probe.reply_deadline(Duration::from_millis(100)), None);
            probe.on_sent(clock.at(t));
            assert_eq!(
                probe.reply_deadline(Duration::from_millis(100)),
                Some(clock.at(t + 100))
            );
            let reply = answer_echo(&echo, &them).unwrap();
            assert_eq!(
                probe.on_reply(&reply, clock.at(t + rtt)),
                Ok(Duration::from_millis(rtt))
            );
            t += rtt + 50;
        }
        assert!(probe.is_done());
        assert_eq!(probe.next_echo(&me), None);
        let m = probe.measurement().unwrap();
        assert_eq!(m.minimum, Duration::from_millis(5));
        assert_eq!(m.mean, Duration::from_millis(7));
        assert_eq!(m.maximum, Duration::from_millis(9));
    }

    #[test]
    fn sequence_numbers_increase() {
        let me = key(1);
        let now = Instant::now();
        let mut probe = TargetProbe::new(key(2).verifying_key(), 2, 41);
        let echo = probe.next_echo(&me).unwrap();
        probe.on_sent(now);
        assert_eq!(crate::verloc::packet::echo_sequence(&echo), 41);
        probe
            .on_reply(&answer_echo(&echo, &key(2)).unwrap(), now)
            .unwrap();
        let echo = probe.next_echo(&me).unwrap();
        assert_eq!(crate::verloc::packet::echo_sequence(&echo), 42);
    }

    #[test]
    fn replaying_an_earlier_reply_is_not_a_measurement() {
        let (me, them) = (key(1), key(2));
        let now = Instant::now();
        let mut probe = TargetProbe::new(them.verifying_key(), 3, 0);
        let first = probe.next_echo(&me).unwrap();
        probe.on_sent(now);
        let first_reply = answer_echo(&first, &them).unwrap();
        probe.on_reply(&first_reply, now).unwrap();
        probe.next_echo(&me).unwrap();
        probe.on_sent(now);
        assert_eq!(
            probe.on_reply(&first_reply, now),
            Err(ReplyReject::EchoMismatch)
        );
        assert_eq!(probe.round_trips().len(), 1);
        assert_eq!(probe.measurement(), None);
    }

    #[test]
    fn forged_reply_is_not_a_measurement() {
        let (me, them) = (key(1), key(2));
        let now = Instant::now();
        let mut probe = TargetProbe::new(them.verifying_key(), 1, 0);
        let echo = probe.next_echo(&me).unwrap();
        probe.on_sent(now);
        assert_eq!(
            probe.on_reply(&sign_reply(&echo, &key(3)), now),
            Err(ReplyReject::BadSignature)
        );
        assert_eq!(probe.measurement(), None);
    }

    #[test]
    fn unsolicited_reply_is_refused() {
        let them = key(2);
        let mut probe = TargetProbe::new(them.verifying_key(), 1, 0);
        let reply = answer_echo(&build_echo(0, &key(1)), &them).unwrap();
        assert_eq!(
            probe.on_reply(&reply, Instant::now()),
            Err(ReplyReject::EchoMismatch)
        );
    }

    #[test]
    fn sequence_never_overflows() {
        assert_eq!(first_sequence(u64::MAX, 100), u64::MAX % (u64::MAX - 100));
        assert!(first_sequence(u64::MAX - 1, 100) <= u64::MAX - 100);
        assert_eq!(first_sequence(5, 100), 5);
    }

    #[test]
    fn schedule() {
        let (run, retry) = (Duration::from_secs(43_200), Duration::from_secs(1800));
        assert_eq!(next_run_delay(RunOutcome::Finished, run, retry), run);
        assert_eq!(next_run_delay(RunOutcome::NoNodeList, run, retry), retry);
    }
}
