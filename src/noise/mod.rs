//! Noise on mixnet links, as today's nym-nodes speak it (nym-noise): the message framing
//! ([`framing`], fuzzed on its own), the pre-shared key, the handshake and transport through
//! snow ([`link`]), and the counts of what happened on links. All pure: the shard driver
//! (`shard/noise_io.rs`) does the reads and writes, and the shard that owns a connection owns
//! its cipher state.
//!
//! Facts (read from the published nym-noise 2.0 crate): pattern
//! `Noise_XKpsk3_25519_AESGCM_SHA256`, no prologue; PSK version 1 = SHA-256(`"NYMTECH_NOISE_
//! dQw4w9WgXcQ"` || the responder's Noise public key); every message has an 8-byte header
//! (version, pattern, type, payload length u16 BE, 3 reserved bytes).

pub mod blocking;
pub mod framing;
pub mod link;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// What the version-1 PSK hashes before the responder's key.
pub const PSK_V1_PREFIX: &[u8] = b"NYMTECH_NOISE_dQw4w9WgXcQ";

/// The version-1 pre-shared key for a link to the responder whose Noise public key is
/// `responder`.
pub fn psk_v1(responder: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(PSK_V1_PREFIX);
    hasher.update(responder);
    hasher.finalize().into()
}

/// The node's Noise key pair, as the engine uses it.
#[derive(Clone)]
pub struct NoiseIdentity {
    /// The private key.
    pub private: [u8; 32],
    /// The public key, as announced.
    pub public: [u8; 32],
}

impl NoiseIdentity {
    /// The pair of `private`.
    pub fn from_private(private: [u8; 32]) -> NoiseIdentity {
        NoiseIdentity {
            private,
            public: link::public_key(&private),
        }
    }
}

impl std::fmt::Debug for NoiseIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseIdentity")
            .field("public", &bs58::encode(self.public).into_string())
            .finish_non_exhaustive()
    }
}

/// Which end of a link the node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It accepted the connection.
    Responder = 0,
    /// It opened the connection (to a next hop).
    Initiator = 1,
}

impl Role {
    /// Both, in counting order.
    pub const ALL: [Role; 2] = [Role::Responder, Role::Initiator];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Responder => "responder",
            Role::Initiator => "initiator",
        }
    }
}

/// Why a Noise link was closed; only that connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The handshake did not finish within `engine.noise_handshake_timeout`.
    Timeout = 0,
    /// The peer closed the connection during the handshake.
    Closed = 1,
    /// A handshake message did not check: junk, a wrong key or PSK, a data message too soon.
    BadHandshake = 2,
    /// A message with another Noise version or pattern than XKpsk3 version 1.
    WrongPattern = 3,
    /// A data message whose tag did not check.
    Decrypt = 4,
    /// A message that cannot be one after the handshake (another type, a bad length).
    BadMessage = 5,
    /// Closed before any handshake work: the address failed a handshake lately and is still
    /// waiting out its penalty ([`FailurePenalties`]).
    Penalised = 6,
}

impl Failure {
    /// How many reasons.
    pub const COUNT: usize = 7;
    /// Every reason, in counting order.
    pub const ALL: [Failure; Failure::COUNT] = [
        Failure::Timeout,
        Failure::Closed,
        Failure::BadHandshake,
        Failure::WrongPattern,
        Failure::Decrypt,
        Failure::BadMessage,
        Failure::Penalised,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::BadHandshake => "bad_handshake",
            Failure::WrongPattern => "wrong_pattern",
            Failure::Decrypt => "decrypt",
            Failure::BadMessage => "bad_message",
            Failure::Penalised => "penalised",
        }
    }

    /// The failure a framing error means (`during_handshake`: before the transport).
    pub fn of_frame(error: framing::FrameError, during_handshake: bool) -> Failure {
        match error {
            framing::FrameError::Version(_) | framing::FrameError::Pattern(_) => {
                Failure::WrongPattern
            }
            _ if during_handshake => Failure::BadHandshake,
            _ => Failure::BadMessage,
        }
    }
}

/// Addresses entries [`FailurePenalties`] keeps at most (per shard).
pub const PENALTY_ENTRIES_MAX: usize = 4096;
/// The longest penalty, as a multiple of the first.
const PENALTY_DOUBLINGS_MAX: u32 = 6;

/// What a failed handshake costs its address: the next handshakes from it wait out a penalty
/// (the first `first`, doubling with each failure in a row up to 64 times that), and a
/// connection that comes sooner is closed before any handshake work. A junk first message
/// costs the node one X25519 multiplication and its sender none; this bounds how often one
/// address can make the node pay it. A finished handshake forgives the address. Bounded:
/// at most [`PENALTY_ENTRIES_MAX`] addresses (when full, the penalty that ends first goes).
#[derive(Debug)]
pub struct FailurePenalties {
    first: Duration,
    entries: HashMap<IpAddr, (u32, Instant)>,
}

impl FailurePenalties {
    /// Penalties starting at `first` (zero: none).
    pub fn new(first: Duration) -> FailurePenalties {
        FailurePenalties {
            first,
            entries: HashMap::new(),
        }
    }

    /// Whether a handshake from `ip` may start at `now`.
    pub fn admits(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries.get(&ip).is_none_or(|(_, until)| now >= *until)
    }

    /// A handshake from `ip` failed at `now`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.first.is_zero() {
            return;
        }
        if !self.entries.contains_key(&ip) && self.entries.len() >= PENALTY_ENTRIES_MAX {
            self.entries.retain(|_, (_, until)| *until > now);
            if self.entries.len() >= PENALTY_ENTRIES_MAX {
                let ending_first = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(ip, _)| *ip);
                if let Some(ending_first) = ending_first {
                    self.entries.remove(&ending_first);
                }
            }
        }
        let entry = self.entries.entry(ip).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let doublings = (entry.0 - 1).min(PENALTY_DOUBLINGS_MAX);
        entry.1 = now + self.first * (1u32 << doublings);
    }

    /// A handshake from `ip` finished.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.entries.remove(&ip);
    }

    /// Addresses with a penalty on record.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Handshakes finished and links closed by failure, by role (one shard's, or summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoiseCounts {
    /// Handshakes finished, by [`Role`].
    pub handshakes: [u64; 2],
    /// Links closed by failure, by [`Role`] and [`Failure`].
    pub failures: [[u64; Failure::COUNT]; 2],
}

impl NoiseCounts {
    /// Words in [`Self::to_words`].
    pub const WORDS: usize = 2 + 2 * Failure::COUNT;

    /// A handshake finished.
    pub fn handshake_done(&mut self, role: Role) {
        self.handshakes[role as usize] += 1;
    }

    /// A link closed by `failure`.
    pub fn failed(&mut self, role: Role, failure: Failure) {
        self.failures[role as usize][failure as usize] += 1;
    }

    /// Failures of `role` for `failure`.
    pub fn failures_of(&self, role: Role, failure: Failure) -> u64 {
        self.failures[role as usize][failure as usize]
    }

    /// Flat, for publishing.
    pub fn to_words(&self) -> [u64; NoiseCounts::WORDS] {
        let mut words = [0u64; NoiseCounts::WORDS];
        words[..2].copy_from_slice(&self.handshakes);
        for (role, counts) in self.failures.iter().enumerate() {
            let at = 2 + role * Failure::COUNT;
            words[at..at + Failure::COUNT].copy_from_slice(counts);
        }
        words
    }

    /// Back from [`Self::to_words`].
    pub fn from_words(words: [u64; NoiseCounts::WORDS]) -> NoiseCounts {
        let mut counts = NoiseCounts::default();
        counts.handshakes.copy_from_slice(&words[..2]);
        for (role, out) in counts.failures.iter_mut().enumerate() {
            let at = 2 + role * Failure::COUNT;
            out.copy_from_slice(&words[at..at + Failure::COUNT]);
        }
        counts
    }

    /// The sum with `other`.
    pub fn plus(&self, other: &NoiseCounts) -> NoiseCounts {
        let mut sum = *self;
        for (a, b) in sum.handshakes.iter_mut().zip(other.handshakes) {
            *a += b;
        }
        for (row, other_row) in sum.failures.iter_mut().zip(other.failures) {
            for (a, b) in row.iter_mut().zip(other_row) {
                *a += b;
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_psk_is_the_hash_of_the_prefix_and_the_responders_key() {
        let key = [7u8; 32];
        let mut joined = PSK_V1_PREFIX.to_vec();
        joined.extend_from_slice(&key);
        let expected: [u8; 32] = Sha256::digest(&joined).into();
        assert_eq!(psk_v1(&key), expected);
        assert_ne!(psk_v1(&[8u8; 32]), expected);
    }

    #[test]
    fn a_failing_address_waits_out_a_doubling_penalty_and_a_success_forgives_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut p = FailurePenalties::new(s);
        assert!(p.admits(ip, t0));
        p.failed(ip, t0);
        assert!(!p.admits(ip, t0 + s / 2));
        assert!(p.admits(other, t0), "only that address");
        assert!(p.admits(ip, t0 + s));
        p.failed(ip, t0 + s);
        assert!(
            !p.admits(ip, t0 + s * 2),
            "doubled: 2 s from the second failure"
        );
        assert!(p.admits(ip, t0 + s * 3));
        for i in 0..20 {
            p.failed(ip, t0 + s * 3);
            assert!(
                p.admits(ip, t0 + s * 3 + s * 64),
                "capped at 64 s after {i}"
            );
        }
        p.succeeded(ip);
        assert!(p.admits(ip, t0 + s * 3));
        assert!(p.is_empty());
        // Zero: no penalties.
        let mut none = FailurePenalties::new(Duration::ZERO);
        none.failed(ip, t0);
        assert!(none.admits(ip, t0));
        // Bounded: a flood of addresses keeps at most the limit, and penalties that ended
        // make room first.
        let mut many = FailurePenalties::new(s);
        for i in 0..(PENALTY_ENTRIES_MAX as u32 + 100) {
            many.failed(IpAddr::from(std::net::Ipv4Addr::from(i)), t0);
        }
        assert_eq!(many.len(), PENALTY_ENTRIES_MAX);
        many.failed(other, t0 + s * 2);
        assert_eq!(many.len(), 1, "the ended penalties went");
    }

    #[test]
    fn counts_round_trip_through_words_and_add_up() {
        let mut a = NoiseCounts::default();
        a.handshake_done(Role::Initiator);
        a.failed(Role::Responder, Failure::Timeout);
        a.failed(Role::Initiator, Failure::BadMessage);
        assert_eq!(NoiseCounts::from_words(a.to_words()), a);
        let sum = a.plus(&a);
        assert_eq!(sum.handshakes, [0, 2]);
        assert_eq!(sum.failures_of(Role::Responder, Failure::Timeout), 2);
        assert_eq!(sum.failures_of(Role::Initiator, Failure::BadMessage), 2);
        assert_eq!(sum.failures_of(Role::Initiator, Failure::Timeout), 0);
        assert_eq!(
            Failure::of_frame(framing::FrameError::Pattern(2), false),
            Failure::WrongPattern
        );
        assert_eq!(
            Failure::of_frame(framing::FrameError::Kind(9), true),
            Failure::BadHandshake
        );
    }
}
