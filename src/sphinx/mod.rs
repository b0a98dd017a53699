//! The hop step: one Sphinx packet in, the next hop's packet, address and delay out, or the
//! [`DropReason`] it was dropped for.
//!
//! [`HopProcessor::process`] orders the work so that junk and replays cost one scalar
//! multiplication: parse, derive the shared secret (first multiplication), look the replay
//! tag up, verify the header MAC, and only then record the tag and unwrap the packet (second,
//! blinding multiplication). Recording only after the MAC verified matters: a forged packet
//! that reuses a genuine packet's group element has the same replay tag, and recording it
//! would make the genuine packet look like a replay.
//!
//! Two implementations do the cryptography, chosen by [`HopProcessorKind`] (config
//! `engine.hop_processor`): [`fast`] (the default: byte-identical to the crate, no allocation,
//! both multiplications through curve25519-dalek's Edwards arithmetic, which uses AVX2 where
//! the CPU has it) and the `sphinx-packet` crate itself, kept as a fallback and as the
//! reference the differential test compares against.
//!
//! The two differ only where the framing never delivers input: the fast path rejects a packet
//! whose payload is too short for Lioness (32 bytes or less) before any multiplication, the
//! crate after the MAC, having recorded the tag.
//!
//! What it deliberately does not do: framing (see [`crate::framing`]), waiting out the delay
//! (see [`crate::delay`]), deciding when keys change (see [`crate::rotation`]; a processor
//! holds the live keys, each with its filter, and applies a [`KeyUpdate`] it is given), or
//! counting: the caller counts the returned reason. Per-hop integrity covers the header only:
//! Sphinx payloads carry no per-hop MAC, so a copy of a whole header with a different body is
//! indistinguishable from the genuine packet here, and whichever arrives first is mixed.

mod address;
pub mod crosscheck;
pub mod fast;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sphinx_packet::header::delays::Delay;
use sphinx_packet::header::shared_secret::ExpandedSharedSecret;
use sphinx_packet::header::HEADER_SIZE;
use sphinx_packet::route::{Destination, Node, NodeAddressBytes};
use sphinx_packet::{ProcessedPacketData, SphinxPacket, SphinxPacketBuilder};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::accounting::DropReason;
use crate::framing::{KeyRotation, SizeTag};
use crate::replay::ReplayFilter;

pub use address::{encode_node_address, parse_node_address, NODE_ADDRESS_LEN};

/// The longest delay a node honours by default (as Nym's nodes do).
pub const DELAY_MAX_DEFAULT: Duration = Duration::from_secs(10);

/// Where and when to send a processed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardMeta {
    /// The next hop's mix port.
    pub next_hop: SocketAddr,
    /// How long to hold the packet before sending it (at most the cap).
    pub delay: Duration,
    /// The packet asked for longer than the cap and `delay` is the cap.
    pub delay_clamped: bool,
}

/// A processed packet ready to be delayed and forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardHop {
    /// The next hop's packet, as long as the packet that came in.
    pub packet: Vec<u8>,
    /// The next hop's mix port.
    pub next_hop: SocketAddr,
    /// How long to hold the packet before sending it (at most the cap).
    pub delay: Duration,
    /// The packet asked for longer than the cap and `delay` is the cap.
    pub delay_clamped: bool,
}

/// Which implementation unwraps packets: config `engine.hop_processor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HopProcessorKind {
    /// [`fast`]: Edwards arithmetic, no allocation; the same bytes as the crate.
    #[default]
    Fast,
    /// The `sphinx-packet` crate's own processing.
    Crate,
}

impl HopProcessorKind {
    /// Both kinds, fast first.
    pub const ALL: [HopProcessorKind; 2] = [HopProcessorKind::Fast, HopProcessorKind::Crate];

    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            HopProcessorKind::Fast => "fast",
            HopProcessorKind::Crate => "crate",
        }
    }
}

impl std::fmt::Display for HopProcessorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HopProcessorKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        HopProcessorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "hop processor {text:?} is unknown: use \"fast\" (the default) or \"crate\" \
                     (the sphinx-packet crate's own processing)"
                )
            })
    }
}

impl TryFrom<String> for HopProcessorKind {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<HopProcessorKind> for String {
    fn from(kind: HopProcessorKind) -> String {
        kind.as_str().to_string()
    }
}

/// One live Sphinx key: its rotation id, the secret, and the replay filter of the tags seen
/// under it.
pub struct LiveKey {
    rotation_id: u32,
    secret: StaticSecret,
    /// The key's bytes for the fast path (it clamps them on use, as the crate does).
    secret_bytes: Zeroizing<[u8; 32]>,
    public_key: PublicKey,
    replay_filter: ReplayFilter,
}

impl LiveKey {
    /// The key `secret` of rotation `rotation_id`, remembering tags in `replay_filter`.
    pub fn new(rotation_id: u32, secret: StaticSecret, replay_filter: ReplayFilter) -> LiveKey {
        LiveKey {
            rotation_id,
            secret_bytes: Zeroizing::new(secret.to_bytes()),
            public_key: PublicKey::from(&secret),
            secret,
            replay_filter,
        }
    }

    /// The rotation the key belongs to.
    pub fn rotation_id(&self) -> u32 {
        self.rotation_id
    }

    /// The public key senders build packets for.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The key's replay filter.
    pub fn replay_filter(&self) -> &ReplayFilter {
        &self.replay_filter
    }

    /// Gives up the key and keeps its filter (for dropping it off the packet path).
    pub fn into_replay_filter(self) -> ReplayFilter {
        self.replay_filter
    }
}

/// A change of the live keys, applied between two packets: purge, install, then make
/// `primary` the primary.
pub struct KeyUpdate {
    /// Rotation ids of keys to forget, with their filters.
    pub purge: Vec<u32>,
    /// New keys (with filters allocated by the caller, off the packet path).
    pub install: Vec<LiveKey>,
    /// The rotation id of the primary key afterwards.
    pub primary: u32,
}

/// Why a [`KeyUpdate`] was refused (a bug of the caller's: the keys stay as they were).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyUpdateError {
    /// The processor holds one static key, which never changes.
    #[error("this processor holds one static key")]
    Static,
    /// A key would be installed where one of the same parity is live.
    #[error("a key of rotation {0} would replace a live key of the same parity")]
    SlotTaken(u32),
    /// The primary named is not live after the update.
    #[error("rotation {0} is not live after the update")]
    NoPrimary(u32),
}

/// Which key or keys a packet is tried with.
enum Choice {
    /// This slot.
    One(usize),
    /// The primary's slot; if the header MAC does not verify under it, the other slot.
    PrimaryThen(usize, usize),
}

/// Processes Sphinx packets with at most two live keys, dropping replays.
///
/// Keys live in two slots by the parity of their rotation id (two live keys always belong to
/// adjacent rotations), so that a v8 frame's rotation byte (1 odd, 2 even) names a slot
/// directly; a packet naming an empty slot is dropped as [`DropReason::ExpiredKey`]. A frame
/// without one (v7, or byte 0) is tried with the primary key and, if its header MAC does not
/// verify under it, with the other key: two scalar multiplications for packets under the
/// second key, and for junk while two keys are live. A processor made by [`Self::new`] holds one
/// static key (the 0.11 network's) that answers every rotation byte.
pub struct HopProcessor {
    keys: [Option<LiveKey>; 2],
    primary: usize,
    /// False for a static key: every rotation byte means it.
    parity_checked: bool,
    kind: HopProcessorKind,
}

fn slot_of(rotation_id: u32) -> usize {
    (rotation_id & 1) as usize
}

impl HopProcessor {
    /// A processor for the one static node key `secret`, remembering tags in
    /// `replay_filter`, using the default (fast) implementation.
    pub fn new(secret: StaticSecret, replay_filter: ReplayFilter) -> Self {
        Self::with_kind(secret, replay_filter, HopProcessorKind::default())
    }

    /// A processor for one static key using the implementation `kind`.
    pub fn with_kind(
        secret: StaticSecret,
        replay_filter: ReplayFilter,
        kind: HopProcessorKind,
    ) -> Self {
        HopProcessor {
            keys: [Some(LiveKey::new(0, secret, replay_filter)), None],
            primary: 0,
            parity_checked: false,
            kind,
        }
    }

    /// A processor for one static key already made (its rotation id is ignored).
    pub fn from_key(key: LiveKey, kind: HopProcessorKind) -> Self {
        HopProcessor {
            keys: [Some(key), None],
            primary: 0,
            parity_checked: false,
            kind,
        }
    }

    /// A processor for rotating keys: `primary`, and optionally the other live key (the
    /// previous rotation's, or the next one's pre-announced).
    ///
    /// # Panics
    /// If both keys have the same parity: a caller bug.
    pub fn rotating(primary: LiveKey, other: Option<LiveKey>, kind: HopProcessorKind) -> Self {
        let primary_slot = slot_of(primary.rotation_id);
        let mut keys = [None, None];
        if let Some(other) = other {
            assert_ne!(
                slot_of(other.rotation_id),
                primary_slot,
                "two live keys of the same parity"
            );
            let slot = slot_of(other.rotation_id);
            keys[slot] = Some(other);
        }
        keys[primary_slot] = Some(primary);
        HopProcessor {
            keys,
            primary: primary_slot,
            parity_checked: true,
            kind,
        }
    }

    /// Which implementation this processor uses.
    pub fn kind(&self) -> HopProcessorKind {
        self.kind
    }

    fn primary_key(&self) -> &LiveKey {
        self.keys[self.primary]
            .as_ref()
            .expect("the primary slot is always filled")
    }

    fn primary_key_mut(&mut self) -> &mut LiveKey {
        self.keys[self.primary]
            .as_mut()
            .expect("the primary slot is always filled")
    }

    /// The primary key's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.primary_key().public_key
    }

    /// The primary key's rotation id (0 for a static key).
    pub fn primary_rotation_id(&self) -> u32 {
        self.primary_key().rotation_id
    }

    /// Whether keys rotate (false: one static key).
    pub fn is_rotating(&self) -> bool {
        self.parity_checked
    }

    /// The live keys, primary first.
    pub fn keys(&self) -> impl Iterator<Item = &LiveKey> {
        let other = 1 - self.primary;
        self.keys[self.primary]
            .iter()
            .chain(self.keys[other].iter())
    }

    /// The primary key's replay filter, for its fill and capacity figures.
    pub fn replay_filter(&self) -> &ReplayFilter {
        &self.primary_key().replay_filter
    }

    /// The primary key's replay filter, to clear it.
    pub fn replay_filter_mut(&mut self) -> &mut ReplayFilter {
        &mut self.primary_key_mut().replay_filter
    }

    /// Purge, install and promote keys as `update` says, all at once; the purged keys come
    /// back so that the caller can free their filters where it likes. Refused (nothing
    /// changed) if it would leave two keys of one parity or no primary.
    pub fn apply(&mut self, update: KeyUpdate) -> Result<Vec<LiveKey>, KeyUpdateError> {
        if !self.parity_checked {
            return Err(KeyUpdateError::Static);
        }
        let mut keep = [true, true];
        for (slot, key) in self.keys.iter().enumerate() {
            if let Some(key) = key {
                keep[slot] = !update.purge.contains(&key.rotation_id);
            }
        }
        let mut filled = [
            self.keys[0].is_some() && keep[0],
            self.keys[1].is_some() && keep[1],
        ];
        for key in &update.install {
            let slot = slot_of(key.rotation_id);
            if filled[slot] {
                return Err(KeyUpdateError::SlotTaken(key.rotation_id));
            }
            filled[slot] = true;
        }
        let primary_slot = slot_of(update.primary);
        let primary_live = update
            .install
            .iter()
            .any(|k| k.rotation_id == update.primary)
            || (keep[primary_slot]
                && self.keys[primary_slot]
                    .as_ref()
                    .is_some_and(|k| k.rotation_id == update.primary));
        if !primary_live {
            return Err(KeyUpdateError::NoPrimary(update.primary));
        }
        let mut purged = Vec::new();
        for (slot, keep) in keep.iter().enumerate() {
            if !keep {
                purged.extend(self.keys[slot].take());
            }
        }
        for key in update.install {
            let slot = slot_of(key.rotation_id);
            self.keys[slot] = Some(key);
        }
        self.primary = primary_slot;
        Ok(purged)
    }

    fn choose(&self, rotation: KeyRotation) -> Result<Choice, DropReason> {
        if !self.parity_checked {
            return Ok(Choice::One(self.primary));
        }
        let named = match rotation {
            KeyRotation::Unknown => {
                let other = 1 - self.primary;
                return Ok(if self.keys[other].is_some() {
                    Choice::PrimaryThen(self.primary, other)
                } else {
                    Choice::One(self.primary)
                });
            }
            KeyRotation::Odd => 1,
            KeyRotation::Even => 0,
        };
        if self.keys[named].is_some() {
            Ok(Choice::One(named))
        } else {
            Err(DropReason::ExpiredKey)
        }
    }

    fn key(&self, slot: usize) -> &LiveKey {
        self.keys[slot].as_ref().expect("chosen slots are filled")
    }

    /// Processes one packet into a freshly allocated buffer, as a frame without a rotation
    /// byte. See [`Self::process_into_for`].
    pub fn process(
        &mut self,
        packet_bytes: &[u8],
        delay_max: Duration,
    ) -> Result<ForwardHop, DropReason> {
        let mut packet = vec![0u8; packet_bytes.len()];
        let meta = self.process_into(packet_bytes, delay_max, &mut packet)?;
        Ok(ForwardHop {
            packet,
            next_hop: meta.next_hop,
            delay: meta.delay,
            delay_clamped: meta.delay_clamped,
        })
    }

    /// [`Self::process_into_for`] a frame without a rotation byte.
    pub fn process_into(
        &mut self,
        packet_bytes: &[u8],
        delay_max: Duration,
        out: &mut [u8],
    ) -> Result<ForwardMeta, DropReason> {
        self.process_into_for(packet_bytes, KeyRotation::Unknown, delay_max, out)
    }

    /// Processes one packet that came with `rotation`, writing the next hop's packet into
    /// `out` (a pooled buffer). The fast implementation allocates nothing.
    ///
    /// Drops with [`DropReason::BadPacket`] (unparsable, MAC or unwrap failure),
    /// [`DropReason::Replay`], [`DropReason::FinalHop`], [`DropReason::BadNextHopAddress`] or
    /// [`DropReason::ExpiredKey`]; a delay above `delay_max` is clamped to it (as nym-node
    /// does). The replay tag is recorded once the header MAC verified, even if a later check
    /// drops the packet: the header is genuine, so a second copy is a replay whatever its fate.
    ///
    /// # Panics
    /// If `out` is not exactly as long as `packet_bytes`: a caller bug.
    pub fn process_into_for(
        &mut self,
        packet_bytes: &[u8],
        rotation: KeyRotation,
        delay_max: Duration,
        out: &mut [u8],
    ) -> Result<ForwardMeta, DropReason> {
        assert_eq!(out.len(), packet_bytes.len(), "output buffer length");
        let choice = self.choose(rotation)?;
        match self.kind {
            HopProcessorKind::Fast => {
                fast::check_len(packet_bytes).map_err(|_| DropReason::BadPacket)?;
                let (slot, expanded) = self.expand_fast(choice, packet_bytes);
                out.copy_from_slice(packet_bytes);
                let key = self.keys[slot].as_mut().expect("chosen slots are filled");
                match finish_fast(&mut key.replay_filter, &expanded, out, delay_max)? {
                    Unwrapped::Forward(meta) => Ok(meta),
                    Unwrapped::Final(_) => Err(DropReason::FinalHop),
                }
            }
            HopProcessorKind::Crate => {
                let (slot, packet, secret) = self.expand_crate(choice, packet_bytes)?;
                let key = self.keys[slot].as_mut().expect("chosen slots are filled");
                match finish_crate(&mut key.replay_filter, packet, secret, delay_max)? {
                    Unwrapped::Forward((next_packet, meta)) => {
                        write_packet(&next_packet, out)?;
                        Ok(meta)
                    }
                    Unwrapped::Final(_) => Err(DropReason::FinalHop),
                }
            }
        }
    }

    /// The first multiplication with the chosen key (or keys): the slot whose key to finish
    /// with, and the fast path's state.
    fn expand_fast(&self, choice: Choice, packet_bytes: &[u8]) -> (usize, fast::Expanded) {
        let alpha = fast::alpha_of(packet_bytes);
        match choice {
            Choice::One(slot) => (
                slot,
                fast::Expanded::new(&self.key(slot).secret_bytes, alpha),
            ),
            Choice::PrimaryThen(primary, other) => {
                let expanded = fast::Expanded::new(&self.key(primary).secret_bytes, alpha);
                if expanded.verify_header_mac(&packet_bytes[..HEADER_SIZE]) {
                    (primary, expanded)
                } else {
                    (
                        other,
                        fast::Expanded::new(&self.key(other).secret_bytes, alpha),
                    )
                }
            }
        }
    }

    fn expand_crate(
        &self,
        choice: Choice,
        packet_bytes: &[u8],
    ) -> Result<(usize, SphinxPacket, ExpandedSharedSecret), DropReason> {
        let packet = SphinxPacket::from_bytes(packet_bytes).map_err(|_| DropReason::BadPacket)?;
        let (slot, secret) = match choice {
            Choice::One(slot) => (
                slot,
                packet
                    .header
                    .compute_expanded_shared_secret(&self.key(slot).secret),
            ),
            Choice::PrimaryThen(primary, other) => {
                let secret = packet
                    .header
                    .compute_expanded_shared_secret(&self.key(primary).secret);
                if packet.header.ensure_header_integrity(&secret).is_ok() {
                    (primary, secret)
                } else {
                    (
                        other,
                        packet
                            .header
                            .compute_expanded_shared_secret(&self.key(other).secret),
                    )
                }
            }
        };
        Ok((slot, packet, secret))
    }

    /// [`Self::expand_for`] a frame without a rotation byte.
    pub fn expand(&self, packet_bytes: &[u8]) -> Result<ExpandedPacket, DropReason> {
        self.expand_for(packet_bytes, KeyRotation::Unknown)
    }

    /// The first half of [`Self::process_into_for`]: choose the key `rotation` names, parse
    /// and derive the shared secret (the first scalar multiplication; two when a frame
    /// without a rotation byte is not for the primary key). The result's
    /// [`ExpandedPacket::replay_tag`] says which replay filter must judge it; [`Self::finish`]
    /// on the processor holding that filter does the rest. With the fast implementation the
    /// packet is copied into the buffer that becomes the next hop's packet, its one
    /// allocation.
    pub fn expand_for(
        &self,
        packet_bytes: &[u8],
        rotation: KeyRotation,
    ) -> Result<ExpandedPacket, DropReason> {
        let choice = self.choose(rotation)?;
        let (slot, inner) = match self.kind {
            HopProcessorKind::Fast => {
                fast::check_len(packet_bytes).map_err(|_| DropReason::BadPacket)?;
                let (slot, expanded) = self.expand_fast(choice, packet_bytes);
                (
                    slot,
                    ExpandedInner::Fast {
                        packet: packet_bytes.to_vec(),
                        expanded,
                    },
                )
            }
            HopProcessorKind::Crate => {
                let (slot, packet, secret) = self.expand_crate(choice, packet_bytes)?;
                (slot, ExpandedInner::Crate { packet, secret })
            }
        };
        Ok(ExpandedPacket {
            rotation_id: self.key(slot).rotation_id,
            inner,
        })
    }

    /// The second half of [`Self::process_into_for`]: replay check in the filter of the key
    /// the packet was expanded with, MAC, record the tag, unwrap (the second multiplication),
    /// address and delay checks. The next hop's packet comes back in a buffer as long as the
    /// packet that came in. Either processor kind can finish what either expanded. A packet
    /// whose key was purged since it was expanded is dropped as [`DropReason::ExpiredKey`].
    pub fn finish(
        &mut self,
        expanded: ExpandedPacket,
        delay_max: Duration,
    ) -> Result<ForwardHop, DropReason> {
        match self.finish_any(expanded, delay_max)? {
            Finished::Forward(hop) => Ok(hop),
            Finished::Final(_) => Err(DropReason::FinalHop),
        }
    }

    /// [`Self::finish`], but a packet for which this node is the final hop comes back as
    /// [`Finished::Final`] with its destination and identifier (the node's own loop packets
    /// end here) instead of being dropped.
    pub fn finish_any(
        &mut self,
        expanded: ExpandedPacket,
        delay_max: Duration,
    ) -> Result<Finished, DropReason> {
        let rotation_id = expanded.rotation_id;
        let slot = if self.parity_checked {
            slot_of(rotation_id)
        } else {
            self.primary
        };
        let key = self.keys[slot]
            .as_mut()
            .filter(|key| key.rotation_id == rotation_id)
            .ok_or(DropReason::ExpiredKey)?;
        let filter = &mut key.replay_filter;
        match expanded.inner {
            ExpandedInner::Fast {
                mut packet,
                expanded,
            } => match finish_fast(filter, &expanded, &mut packet, delay_max)? {
                Unwrapped::Forward(meta) => Ok(Finished::Forward(ForwardHop {
                    packet,
                    next_hop: meta.next_hop,
                    delay: meta.delay,
                    delay_clamped: meta.delay_clamped,
                })),
                Unwrapped::Final(info) => Ok(Finished::Final(info)),
            },
            ExpandedInner::Crate { packet, secret } => {
                let len = packet.len();
                match finish_crate(filter, packet, secret, delay_max)? {
                    Unwrapped::Forward((next_packet, meta)) => {
                        let mut packet = vec![0u8; len];
                        write_packet(&next_packet, &mut packet)?;
                        Ok(Finished::Forward(ForwardHop {
                            packet,
                            next_hop: meta.next_hop,
                            delay: meta.delay,
                            delay_clamped: meta.delay_clamped,
                        }))
                    }
                    Unwrapped::Final(info) => Ok(Finished::Final(info)),
                }
            }
        }
    }
}

/// A final hop's routing: where the payload is for, and the sender's identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalHopInfo {
    /// The destination's 32 address bytes.
    pub destination: [u8; 32],
    /// The SURB identifier the sender put there.
    pub identifier: [u8; 16],
}

/// What [`HopProcessor::finish_any`] gives.
#[derive(Debug)]
pub enum Finished {
    /// A packet to forward.
    Forward(ForwardHop),
    /// This node is the packet's final hop.
    Final(FinalHopInfo),
}

/// One unwrapped packet: to forward (with what the implementation keeps), or final.
enum Unwrapped<T> {
    Forward(T),
    Final(FinalHopInfo),
}

/// Replay check, MAC, record, unwrap `packet` in place, address and delay checks.
fn finish_fast(
    filter: &mut ReplayFilter,
    expanded: &fast::Expanded,
    packet: &mut [u8],
    delay_max: Duration,
) -> Result<Unwrapped<ForwardMeta>, DropReason> {
    let replay_tag = expanded.replay_tag();
    if filter.contains(replay_tag) {
        return Err(DropReason::Replay);
    }
    if !expanded.verify_header_mac(&packet[..HEADER_SIZE]) {
        return Err(DropReason::BadPacket);
    }
    filter.insert(replay_tag);
    match expanded.unwrap_in_place(packet) {
        Err(_) => Err(DropReason::BadPacket),
        Ok(fast::Hop::Final {
            destination,
            identifier,
        }) => Ok(Unwrapped::Final(FinalHopInfo {
            destination,
            identifier,
        })),
        Ok(fast::Hop::Forward {
            next_hop_address,
            delay_nanos,
        }) => check_forward(&next_hop_address, delay_nanos, delay_max).map(Unwrapped::Forward),
    }
}

fn finish_crate(
    filter: &mut ReplayFilter,
    packet: SphinxPacket,
    secret: ExpandedSharedSecret,
    delay_max: Duration,
) -> Result<Unwrapped<(SphinxPacket, ForwardMeta)>, DropReason> {
    let replay_tag = *secret.replay_tag();
    if filter.contains(&replay_tag) {
        return Err(DropReason::Replay);
    }
    packet
        .header
        .ensure_header_integrity(&secret)
        .map_err(|_| DropReason::BadPacket)?;
    filter.insert(&replay_tag);

    // The crate verifies the MAC once more inside; an HMAC over 300 bytes is noise next to
    // the scalar multiplication, and the crate offers no unchecked path.
    let processed = packet
        .process_with_expanded_secret(&secret)
        .map_err(|_| DropReason::BadPacket)?;
    let (next_packet, next_hop_address, delay) = match processed.data {
        ProcessedPacketData::ForwardHop {
            next_hop_packet,
            next_hop_address,
            delay,
        } => (next_hop_packet, next_hop_address, delay),
        ProcessedPacketData::FinalHop {
            destination,
            identifier,
            ..
        } => {
            return Ok(Unwrapped::Final(FinalHopInfo {
                destination: *destination.as_bytes_ref(),
                identifier,
            }))
        }
    };
    let meta = check_forward(next_hop_address.as_bytes(), delay.to_nanos(), delay_max)?;
    Ok(Unwrapped::Forward((next_packet, meta)))
}

/// The address and delay checks both implementations share.
fn check_forward(
    next_hop_address: &[u8; NODE_ADDRESS_LEN],
    delay_nanos: u64,
    delay_max: Duration,
) -> Result<ForwardMeta, DropReason> {
    let next_hop = parse_node_address(next_hop_address).ok_or(DropReason::BadNextHopAddress)?;
    let asked = Duration::from_nanos(delay_nanos);
    Ok(ForwardMeta {
        next_hop,
        delay: asked.min(delay_max),
        delay_clamped: asked > delay_max,
    })
}

/// A parsed packet with its expanded shared secret: the state between
/// [`HopProcessor::expand`] and [`HopProcessor::finish`], small enough to cross shards
/// (boxed in the handoff).
pub struct ExpandedPacket {
    /// The rotation of the key it was expanded with (0 for a static key).
    rotation_id: u32,
    inner: ExpandedInner,
}

enum ExpandedInner {
    /// The packet bytes (to become the next hop's packet) and the fast path's state.
    Fast {
        packet: Vec<u8>,
        expanded: fast::Expanded,
    },
    /// The crate's parsed packet and expanded secret.
    Crate {
        packet: SphinxPacket,
        secret: ExpandedSharedSecret,
    },
}

impl ExpandedPacket {
    /// The memory it occupies while it crosses shards: the record and the packet's bytes.
    pub fn footprint(&self) -> u64 {
        let heap = match &self.inner {
            ExpandedInner::Fast { packet, .. } => packet.capacity(),
            ExpandedInner::Crate { packet, .. } => packet.len(),
        };
        (std::mem::size_of::<ExpandedPacket>() + crate::accounting::allocation_size(heap)) as u64
    }

    /// The packet's replay tag.
    pub fn replay_tag(&self) -> &[u8; 32] {
        match &self.inner {
            ExpandedInner::Fast { expanded, .. } => expanded.replay_tag(),
            ExpandedInner::Crate { secret, .. } => secret.replay_tag(),
        }
    }
}

fn write_packet(next_packet: &SphinxPacket, out: &mut [u8]) -> Result<(), DropReason> {
    let header_bytes = next_packet.header.to_bytes();
    let payload_bytes = next_packet.payload.as_bytes();
    if header_bytes.len() != HEADER_SIZE || HEADER_SIZE + payload_bytes.len() != out.len() {
        // The crate keeps lengths; this only guards against a change in it.
        return Err(DropReason::BadPacket);
    }
    out[..HEADER_SIZE].copy_from_slice(&header_bytes);
    out[HEADER_SIZE..].copy_from_slice(payload_bytes);
    Ok(())
}

/// One hop of a route that [`build_packet`] builds for.
#[derive(Clone, Copy, Debug)]
pub struct RouteHop {
    /// The hop's mix port; the previous hop forwards here.
    pub address: SocketAddr,
    /// The hop's Sphinx public key.
    pub public_key: PublicKey,
    /// How long the hop holds the packet.
    pub delay: Duration,
}

/// Why [`build_packet`] could not build a packet.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The size tag names an Outfox size.
    #[error("size tag {0:?} is not a Sphinx packet size")]
    NotSphinxSize(SizeTag),
    /// The crate refused the route, delays or message.
    #[error("sphinx packet could not be built: {0}")]
    Sphinx(#[from] sphinx_packet::Error),
}

/// Builds a Sphinx packet of `size_tag`'s length through `route`, ending at `destination`
/// (32 address bytes). For tests, benchmarks and the load generator: building costs about
/// one scalar multiplication per hop, so build ahead of time.
pub fn build_packet(
    route: &[RouteHop],
    destination: [u8; 32],
    size_tag: SizeTag,
    message: &[u8],
    initial_secret: &StaticSecret,
) -> Result<Vec<u8>, BuildError> {
    build_packet_for(
        route,
        FinalHopInfo {
            destination,
            identifier: [0; 16],
        },
        size_tag,
        message,
        initial_secret,
    )
}

/// [`build_packet`] with the final hop's identifier too.
pub fn build_packet_for(
    route: &[RouteHop],
    final_hop: FinalHopInfo,
    size_tag: SizeTag,
    message: &[u8],
    initial_secret: &StaticSecret,
) -> Result<Vec<u8>, BuildError> {
    let FinalHopInfo {
        destination,
        identifier,
    } = final_hop;
    if size_tag.is_outfox() {
        return Err(BuildError::NotSphinxSize(size_tag));
    }
    let nodes: Vec<Node> = route
        .iter()
        .map(|hop| {
            Node::new(
                NodeAddressBytes::from_bytes(encode_node_address(hop.address)),
                hop.public_key,
            )
        })
        .collect();
    let delays: Vec<Delay> = route
        .iter()
        .map(|hop| Delay::new_from_nanos(u64::try_from(hop.delay.as_nanos()).unwrap_or(u64::MAX)))
        .collect();
    let destination = Destination::new(
        sphinx_packet::route::DestinationAddressBytes::from_bytes(destination),
        identifier,
    );
    let packet = SphinxPacketBuilder::new()
        .with_payload_size(size_tag.sphinx_payload_len())
        .with_initial_secret(initial_secret)
        .build_packet(message, &nodes, &destination, &delays)?;
    Ok(packet.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;

    struct Fixture {
        rng: SplitMix64,
        secrets: Vec<StaticSecret>,
        route: Vec<RouteHop>,
        kind: HopProcessorKind,
    }

    impl Fixture {
        fn new(kind: HopProcessorKind) -> Self {
            let mut rng = SplitMix64::new(crate::testing::seed());
            let secrets: Vec<StaticSecret> =
                (0..3).map(|_| StaticSecret::from(rng.tag())).collect();
            let route = secrets
                .iter()
                .enumerate()
                .map(|(i, secret)| RouteHop {
                    address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 1789 + i as u16)),
                    public_key: PublicKey::from(secret),
                    delay: Duration::from_millis(20 + i as u64),
                })
                .collect();
            Fixture {
                rng,
                secrets,
                route,
                kind,
            }
        }

        fn packet(&mut self, size_tag: SizeTag) -> Vec<u8> {
            let initial = StaticSecret::from(self.rng.tag());
            build_packet(&self.route, [7u8; 32], size_tag, b"hello mixnet", &initial)
                .expect("valid route")
        }

        fn processor(&self, hop: usize) -> HopProcessor {
            let filter = ReplayFilter::with_default_rate(1000).expect("valid size");
            HopProcessor::with_kind(self.secrets[hop].clone(), filter, self.kind)
        }
    }

    #[test]
    fn forward_hops_yield_next_address_delay_and_a_packet_the_next_hop_accepts() {
        for kind in HopProcessorKind::ALL {
            let mut fixture = Fixture::new(kind);
            let packet = fixture.packet(SizeTag::Regular);
            assert_eq!(packet.len(), SizeTag::Regular.packet_len());
            let mut first = fixture.processor(0);
            let hop = first
                .process(&packet, DELAY_MAX_DEFAULT)
                .expect("first hop forwards");
            assert_eq!(hop.next_hop, fixture.route[1].address);
            assert_eq!(hop.delay, fixture.route[0].delay);
            assert_eq!(hop.packet.len(), packet.len());
            assert_ne!(hop.packet, packet);

            let mut second = fixture.processor(1);
            let hop2 = second
                .process(&hop.packet, DELAY_MAX_DEFAULT)
                .expect("second hop forwards");
            assert_eq!(hop2.next_hop, fixture.route[2].address);
            assert_eq!(hop2.delay, fixture.route[1].delay);

            let mut third = fixture.processor(2);
            assert_eq!(
                third.process(&hop2.packet, DELAY_MAX_DEFAULT),
                Err(DropReason::FinalHop)
            );
            // A hop that is not on the route cannot verify the MAC.
            assert_eq!(
                third.process(&packet, DELAY_MAX_DEFAULT),
                Err(DropReason::BadPacket)
            );
        }
    }

    #[test]
    fn both_kinds_give_the_same_bytes_and_either_finishes_what_the_other_expanded() {
        let mut fixture = Fixture::new(HopProcessorKind::Fast);
        for size_tag in SizeTag::ALL.into_iter().filter(|tag| !tag.is_outfox()) {
            let packet = fixture.packet(size_tag);
            let mut outputs = Vec::new();
            for expander in HopProcessorKind::ALL {
                for finisher in HopProcessorKind::ALL {
                    fixture.kind = expander;
                    let expanding = fixture.processor(0);
                    fixture.kind = finisher;
                    let mut finishing = fixture.processor(0);
                    let expanded = expanding.expand(&packet).expect("parses");
                    outputs.push(
                        finishing
                            .finish(expanded, DELAY_MAX_DEFAULT)
                            .expect("forwards"),
                    );
                }
                fixture.kind = expander;
                let mut out = vec![0u8; packet.len()];
                let meta = fixture
                    .processor(0)
                    .process_into(&packet, DELAY_MAX_DEFAULT, &mut out)
                    .expect("forwards");
                outputs.push(ForwardHop {
                    packet: out,
                    next_hop: meta.next_hop,
                    delay: meta.delay,
                    delay_clamped: meta.delay_clamped,
                });
            }
            for output in &outputs[1..] {
                assert_eq!(output, &outputs[0], "{size_tag:?}");
            }
        }
    }

    #[test]
    fn hop_processor_kinds_parse_from_config_text() {
        assert_eq!("fast".parse(), Ok(HopProcessorKind::Fast));
        assert_eq!("crate".parse(), Ok(HopProcessorKind::Crate));
        let error = "Fast"
            .parse::<HopProcessorKind>()
            .expect_err("case matters");
        assert!(error.contains("\"fast\""), "{error}");
        assert_eq!(HopProcessorKind::default(), HopProcessorKind::Fast);
    }

    #[test]
    fn replays_are_dropped() {
        for kind in HopProcessorKind::ALL {
            let mut fixture = Fixture::new(kind);
            let packet = fixture.packet(SizeTag::Regular);
            let mut hop = fixture.processor(0);
            assert!(hop.process(&packet, DELAY_MAX_DEFAULT).is_ok());
            assert_eq!(
                hop.process(&packet, DELAY_MAX_DEFAULT),
                Err(DropReason::Replay)
            );
            assert_eq!(hop.replay_filter().items_inserted(), 1);
        }
    }

    /// A forgery reusing the genuine packet's group element but with garbage behind it has
    /// the same replay tag; it must be rejected without recording the tag.
    #[test]
    fn a_forgery_with_the_same_group_element_does_not_poison_the_filter() {
        for kind in HopProcessorKind::ALL {
            let mut fixture = Fixture::new(kind);
            let packet = fixture.packet(SizeTag::Regular);
            let mut hop = fixture.processor(0);
            for corrupt_at in [32, 40, 100, HEADER_SIZE - 1] {
                let mut forged = packet.clone();
                forged[corrupt_at] ^= 0x55;
                assert_eq!(
                    hop.process(&forged, DELAY_MAX_DEFAULT),
                    Err(DropReason::BadPacket),
                    "header byte {corrupt_at}"
                );
            }
            let mut forged = packet.clone();
            fixture.rng.fill(&mut forged[32..]);
            assert_eq!(
                hop.process(&forged, DELAY_MAX_DEFAULT),
                Err(DropReason::BadPacket)
            );
            assert_eq!(hop.replay_filter().items_inserted(), 0);
            assert!(hop.process(&packet, DELAY_MAX_DEFAULT).is_ok());
        }
    }

    /// The body has no per-hop MAC: a copy with the whole genuine header and another body is
    /// processed (the garbage only surfaces at the receiver), and the genuine packet arriving
    /// second is then a replay. This pins down the limit stated in the module docs.
    #[test]
    fn a_copy_with_the_genuine_header_and_another_body_counts_as_the_first_copy() {
        for kind in HopProcessorKind::ALL {
            let mut fixture = Fixture::new(kind);
            let packet = fixture.packet(SizeTag::Regular);
            let mut hop = fixture.processor(0);
            let mut copy = packet.clone();
            copy[HEADER_SIZE + 5] ^= 1;
            let forwarded = hop
                .process(&copy, DELAY_MAX_DEFAULT)
                .expect("body is not authenticated per hop");
            assert_eq!(forwarded.next_hop, fixture.route[1].address);
            assert_eq!(
                hop.process(&packet, DELAY_MAX_DEFAULT),
                Err(DropReason::Replay)
            );
        }
    }

    #[test]
    fn every_flipped_header_bit_past_the_group_element_is_rejected() {
        for kind in HopProcessorKind::ALL {
            let mut fixture = Fixture::new(kind);
            let packet = fixture.packet(SizeTag::Ack);
            let mut hop = fixture.processor(0);
            for bit in (32 * 8..HEADER_SIZE * 8).step_by(7) {
                let mut flipped = packet.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    hop.process(&flipped, DELAY_MAX_DEFAULT),
                    Err(DropReason::BadPacket),
                    "bit {bit}"
                );
            }
            // A flipped group element gives another tag and a MAC that cannot verify.
            let mut flipped = packet.clone();
            flipped[3] ^= 0x10;
            assert_eq!(
                hop.process(&flipped, DELAY_MAX_DEFAULT),
                Err(DropReason::BadPacket)
            );
            assert_eq!(hop.replay_filter().items_inserted(), 0);
            assert!(hop.process(&packet, DELAY_MAX_DEFAULT).is_ok());
        }
    }

    #[test]
    fn short_and_empty_input_is_a_bad_packet() {
        for kind in HopProcessorKind::ALL {
            let fixture = Fixture::new(kind);
            let mut hop = fixture.processor(0);
            for len in [0, 1, 32, HEADER_SIZE, HEADER_SIZE + 16, HEADER_SIZE + 17] {
                assert_eq!(
                    hop.process(&vec![0u8; len], DELAY_MAX_DEFAULT),
                    Err(DropReason::BadPacket),
                    "length {len}"
                );
            }
        }
    }

    #[test]
    fn delays_over_the_cap_are_clamped_to_it() {
        for kind in HopProcessorKind::ALL {
            let mut fixture = Fixture::new(kind);
            fixture.route[0].delay = Duration::from_millis(1500);
            let packet = fixture.packet(SizeTag::Ack);
            let mut hop = fixture.processor(0);
            let clamped = hop
                .process(&packet, Duration::from_millis(1499))
                .expect("a delay over the cap is clamped, not dropped");
            assert_eq!(clamped.delay, Duration::from_millis(1499));
            assert!(clamped.delay_clamped);
            // The same packet is now a replay.
            assert_eq!(
                hop.process(&packet, Duration::from_millis(1500)),
                Err(DropReason::Replay)
            );
            let packet = fixture.packet(SizeTag::Ack);
            let forwarded = hop
                .process(&packet, Duration::from_millis(1500))
                .expect("delay at the cap is honoured");
            assert_eq!(forwarded.delay, Duration::from_millis(1500));
            assert!(
                !forwarded.delay_clamped,
                "a delay at the cap is not clamped"
            );
        }
    }

    #[test]
    fn a_next_hop_address_that_does_not_parse_is_dropped() {
        for kind in HopProcessorKind::ALL {
            let mut rng = SplitMix64::new(crate::testing::seed());
            let secret = StaticSecret::from(rng.tag());
            let nodes = [
                Node::new(
                    NodeAddressBytes::from_bytes([0u8; 32]),
                    PublicKey::from(&secret),
                ),
                Node::new(
                    NodeAddressBytes::from_bytes([9u8; 32]),
                    PublicKey::from(&StaticSecret::from(rng.tag())),
                ),
            ];
            let destination = Destination::new(
                sphinx_packet::route::DestinationAddressBytes::from_bytes([1u8; 32]),
                [0u8; 16],
            );
            let delays = [Delay::new_from_millis(1), Delay::new_from_millis(1)];
            let initial = StaticSecret::from(rng.tag());
            let packet = SphinxPacketBuilder::new()
                .with_initial_secret(&initial)
                .build_packet(b"x", &nodes, &destination, &delays)
                .expect("valid route")
                .to_bytes();
            let mut hop = HopProcessor::with_kind(
                secret,
                ReplayFilter::with_default_rate(10).expect("valid size"),
                kind,
            );
            assert_eq!(
                hop.process(&packet, DELAY_MAX_DEFAULT),
                Err(DropReason::BadNextHopAddress)
            );
        }
    }

    #[test]
    fn every_sphinx_size_tag_works() {
        for kind in HopProcessorKind::ALL {
            let mut fixture = Fixture::new(kind);
            let mut hop = fixture.processor(0);
            for size_tag in SizeTag::ALL {
                if size_tag.is_outfox() {
                    let initial = StaticSecret::from([1u8; 32]);
                    assert!(matches!(
                        build_packet(&fixture.route, [0u8; 32], size_tag, b"", &initial),
                        Err(BuildError::NotSphinxSize(_))
                    ));
                    continue;
                }
                let packet = fixture.packet(size_tag);
                assert_eq!(packet.len(), size_tag.packet_len(), "{size_tag:?}");
                let forwarded = hop
                    .process(&packet, DELAY_MAX_DEFAULT)
                    .expect("forward hop");
                assert_eq!(forwarded.packet.len(), size_tag.packet_len());
                assert_eq!(forwarded.next_hop, fixture.route[1].address);
            }
        }
    }

    /// Packets for the fixture's first hop built for `public_key`.
    fn packet_for(fixture: &mut Fixture, public_key: PublicKey) -> Vec<u8> {
        let mut route = fixture.route.clone();
        route[0].public_key = public_key;
        let initial = StaticSecret::from(fixture.rng.tag());
        build_packet(&route, [7u8; 32], SizeTag::Ack, b"rotation", &initial).expect("valid route")
    }

    fn live(rotation_id: u32, secret: &StaticSecret) -> LiveKey {
        LiveKey::new(
            rotation_id,
            secret.clone(),
            ReplayFilter::with_default_rate(1000).expect("valid size"),
        )
    }

    #[test]
    fn the_rotation_byte_picks_the_key_of_its_parity_and_no_byte_tries_both() {
        for kind in HopProcessorKind::ALL {
            let mut fixture = Fixture::new(kind);
            let old = fixture.secrets[0].clone();
            let new = StaticSecret::from(fixture.rng.tag());
            // Rotation 6 primary (even), 7 pre-announced (odd).
            let mut processor = HopProcessor::rotating(live(6, &old), Some(live(7, &new)), kind);
            let for_old = packet_for(&mut fixture, PublicKey::from(&old));
            let for_new = packet_for(&mut fixture, PublicKey::from(&new));
            let mut out = vec![0u8; for_old.len()];
            let mut process = |p: &mut HopProcessor, packet: &[u8], rotation| {
                p.process_into_for(packet, rotation, DELAY_MAX_DEFAULT, &mut out)
                    .map(|meta| meta.next_hop)
            };
            let next = Ok(fixture.route[1].address);
            // The wrong parity's key cannot verify the MAC.
            assert_eq!(
                process(&mut processor, &for_old, KeyRotation::Odd),
                Err(DropReason::BadPacket),
                "{kind}"
            );
            assert_eq!(
                process(&mut processor, &for_old, KeyRotation::Even),
                next,
                "{kind}"
            );
            assert_eq!(
                process(&mut processor, &for_new, KeyRotation::Unknown),
                next,
                "{kind}: secondary tried"
            );
            // Each key's own filter remembers its tags, whichever byte the copy comes with.
            assert_eq!(
                process(&mut processor, &for_new, KeyRotation::Odd),
                Err(DropReason::Replay),
                "{kind}"
            );
            assert_eq!(
                process(&mut processor, &for_old, KeyRotation::Unknown),
                Err(DropReason::Replay),
                "{kind}"
            );
            let filters: Vec<u64> = processor
                .keys()
                .map(|k| k.replay_filter().items_inserted())
                .collect();
            assert_eq!(filters, vec![1, 1], "{kind}: one tag in each key's filter");

            // Promote 7, then purge 6: a packet naming the even key is now expired, one
            // without a byte is tried with 7 alone and fails its MAC.
            processor
                .apply(KeyUpdate {
                    purge: vec![],
                    install: vec![],
                    primary: 7,
                })
                .expect("promotes");
            assert_eq!(processor.primary_rotation_id(), 7);
            let late_old = packet_for(&mut fixture, PublicKey::from(&old));
            let expanded = processor
                .expand_for(&late_old, KeyRotation::Even)
                .expect("6 still live");
            let purged = processor
                .apply(KeyUpdate {
                    purge: vec![6],
                    install: vec![],
                    primary: 7,
                })
                .expect("purges");
            assert_eq!(purged.len(), 1);
            assert_eq!(
                processor
                    .finish(expanded, DELAY_MAX_DEFAULT)
                    .map(|h| h.next_hop),
                Err(DropReason::ExpiredKey),
                "{kind}: expanded before the purge, finished after it"
            );
            assert_eq!(
                process(&mut processor, &late_old, KeyRotation::Even),
                Err(DropReason::ExpiredKey),
                "{kind}"
            );
            assert_eq!(
                process(&mut processor, &late_old, KeyRotation::Unknown),
                Err(DropReason::BadPacket),
                "{kind}"
            );
            assert_eq!(processor.keys().count(), 1);
        }
    }

    #[test]
    fn key_updates_that_would_break_the_slots_are_refused_and_change_nothing() {
        let mut fixture = Fixture::new(HopProcessorKind::Fast);
        let a = StaticSecret::from(fixture.rng.tag());
        let mut processor = HopProcessor::rotating(live(2, &a), None, HopProcessorKind::Fast);
        assert_eq!(
            processor
                .apply(KeyUpdate {
                    purge: vec![],
                    install: vec![live(4, &a)],
                    primary: 4
                })
                .err(),
            Some(KeyUpdateError::SlotTaken(4))
        );
        assert_eq!(
            processor
                .apply(KeyUpdate {
                    purge: vec![2],
                    install: vec![],
                    primary: 2
                })
                .err(),
            Some(KeyUpdateError::NoPrimary(2))
        );
        assert_eq!(
            processor
                .keys()
                .map(|k| k.rotation_id())
                .collect::<Vec<_>>(),
            vec![2]
        );
        // Purging 2 and installing 4 in one update is fine: the slot is free by then.
        processor
            .apply(KeyUpdate {
                purge: vec![2],
                install: vec![live(4, &a)],
                primary: 4,
            })
            .expect("replaces");
        assert_eq!(processor.primary_rotation_id(), 4);
        let mut fixed = fixture.processor(0);
        assert_eq!(
            fixed
                .apply(KeyUpdate {
                    purge: vec![],
                    install: vec![],
                    primary: 0
                })
                .err(),
            Some(KeyUpdateError::Static)
        );
        // A static key answers every rotation byte.
        let packet = fixture.packet(SizeTag::Ack);
        let mut out = vec![0u8; packet.len()];
        assert!(fixed
            .process_into_for(&packet, KeyRotation::Odd, DELAY_MAX_DEFAULT, &mut out)
            .is_ok());
    }
}
