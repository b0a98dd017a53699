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
//! (see [`crate::delay`]), key rotation (a processor holds one key and one filter), or
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
use crate::framing::SizeTag;
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

/// Processes Sphinx packets with one node key, dropping replays.
pub struct HopProcessor {
    secret: StaticSecret,
    /// The key's bytes for the fast path (it clamps them on use, as the crate does).
    secret_bytes: Zeroizing<[u8; 32]>,
    public_key: PublicKey,
    replay_filter: ReplayFilter,
    kind: HopProcessorKind,
}

impl HopProcessor {
    /// A processor for the node key `secret`, remembering tags in `replay_filter`, using the
    /// default (fast) implementation.
    pub fn new(secret: StaticSecret, replay_filter: ReplayFilter) -> Self {
        Self::with_kind(secret, replay_filter, HopProcessorKind::default())
    }

    /// A processor using the implementation `kind`.
    pub fn with_kind(
        secret: StaticSecret,
        replay_filter: ReplayFilter,
        kind: HopProcessorKind,
    ) -> Self {
        let public_key = PublicKey::from(&secret);
        HopProcessor {
            secret_bytes: Zeroizing::new(secret.to_bytes()),
            secret,
            public_key,
            replay_filter,
            kind,
        }
    }

    /// Which implementation this processor uses.
    pub fn kind(&self) -> HopProcessorKind {
        self.kind
    }

    /// The public key senders build packets for.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The replay filter, for its fill and capacity figures.
    pub fn replay_filter(&self) -> &ReplayFilter {
        &self.replay_filter
    }

    /// The replay filter, to clear it.
    pub fn replay_filter_mut(&mut self) -> &mut ReplayFilter {
        &mut self.replay_filter
    }

    /// Processes one packet into a freshly allocated buffer. See [`Self::process_into`].
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

    /// Processes one packet, writing the next hop's packet into `out` (a pooled buffer). The
    /// fast implementation allocates nothing.
    ///
    /// Drops with [`DropReason::BadPacket`] (unparsable, MAC or unwrap failure),
    /// [`DropReason::Replay`], [`DropReason::FinalHop`], or [`DropReason::BadNextHopAddress`];
    /// a delay above `delay_max` is clamped to it (as nym-node does). The replay tag is recorded
    /// once the header MAC verified, even if a later check drops the packet: the header is
    /// genuine, so a second copy is a replay whatever its fate.
    ///
    /// # Panics
    /// If `out` is not exactly as long as `packet_bytes`: a caller bug.
    pub fn process_into(
        &mut self,
        packet_bytes: &[u8],
        delay_max: Duration,
        out: &mut [u8],
    ) -> Result<ForwardMeta, DropReason> {
        assert_eq!(out.len(), packet_bytes.len(), "output buffer length");
        match self.kind {
            HopProcessorKind::Fast => {
                fast::check_len(packet_bytes).map_err(|_| DropReason::BadPacket)?;
                let expanded =
                    fast::Expanded::new(&self.secret_bytes, fast::alpha_of(packet_bytes));
                out.copy_from_slice(packet_bytes);
                self.finish_fast(&expanded, out, delay_max)
            }
            HopProcessorKind::Crate => {
                let (packet, secret) = self.expand_crate(packet_bytes)?;
                let (next_packet, meta) = self.finish_crate(packet, secret, delay_max)?;
                write_packet(&next_packet, out)?;
                Ok(meta)
            }
        }
    }

    /// The first half of [`Self::process_into`]: parse and derive the shared secret (the first
    /// scalar multiplication). The result's [`ExpandedPacket::replay_tag`] says which replay
    /// filter must judge it; [`Self::finish`] on the processor holding that filter does the
    /// rest. With the fast implementation the packet is copied into the buffer that becomes
    /// the next hop's packet, its one allocation.
    pub fn expand(&self, packet_bytes: &[u8]) -> Result<ExpandedPacket, DropReason> {
        let inner = match self.kind {
            HopProcessorKind::Fast => {
                fast::check_len(packet_bytes).map_err(|_| DropReason::BadPacket)?;
                let expanded =
                    fast::Expanded::new(&self.secret_bytes, fast::alpha_of(packet_bytes));
                ExpandedInner::Fast {
                    packet: packet_bytes.to_vec(),
                    expanded,
                }
            }
            HopProcessorKind::Crate => {
                let (packet, secret) = self.expand_crate(packet_bytes)?;
                ExpandedInner::Crate { packet, secret }
            }
        };
        Ok(ExpandedPacket { inner })
    }

    fn expand_crate(
        &self,
        packet_bytes: &[u8],
    ) -> Result<(SphinxPacket, ExpandedSharedSecret), DropReason> {
        let packet = SphinxPacket::from_bytes(packet_bytes).map_err(|_| DropReason::BadPacket)?;
        let secret = packet.header.compute_expanded_shared_secret(&self.secret);
        Ok((packet, secret))
    }

    /// The second half of [`Self::process_into`]: replay check, MAC, record the tag, unwrap
    /// (the second multiplication), address and delay checks. The next hop's packet comes back
    /// in a buffer as long as the packet that came in. Either processor kind can finish what
    /// either expanded.
    pub fn finish(
        &mut self,
        expanded: ExpandedPacket,
        delay_max: Duration,
    ) -> Result<ForwardHop, DropReason> {
        match expanded.inner {
            ExpandedInner::Fast {
                mut packet,
                expanded,
            } => {
                let meta = self.finish_fast(&expanded, &mut packet, delay_max)?;
                Ok(ForwardHop {
                    packet,
                    next_hop: meta.next_hop,
                    delay: meta.delay,
                    delay_clamped: meta.delay_clamped,
                })
            }
            ExpandedInner::Crate { packet, secret } => {
                let len = packet.len();
                let (next_packet, meta) = self.finish_crate(packet, secret, delay_max)?;
                let mut packet = vec![0u8; len];
                write_packet(&next_packet, &mut packet)?;
                Ok(ForwardHop {
                    packet,
                    next_hop: meta.next_hop,
                    delay: meta.delay,
                    delay_clamped: meta.delay_clamped,
                })
            }
        }
    }

    /// Replay check, MAC, record, unwrap `packet` in place, address and delay checks.
    fn finish_fast(
        &mut self,
        expanded: &fast::Expanded,
        packet: &mut [u8],
        delay_max: Duration,
    ) -> Result<ForwardMeta, DropReason> {
        let replay_tag = expanded.replay_tag();
        if self.replay_filter.contains(replay_tag) {
            return Err(DropReason::Replay);
        }
        if !expanded.verify_header_mac(&packet[..HEADER_SIZE]) {
            return Err(DropReason::BadPacket);
        }
        self.replay_filter.insert(replay_tag);
        match expanded.unwrap_in_place(packet) {
            Err(_) => Err(DropReason::BadPacket),
            Ok(fast::Hop::Final { .. }) => Err(DropReason::FinalHop),
            Ok(fast::Hop::Forward {
                next_hop_address,
                delay_nanos,
            }) => check_forward(&next_hop_address, delay_nanos, delay_max),
        }
    }

    fn finish_crate(
        &mut self,
        packet: SphinxPacket,
        secret: ExpandedSharedSecret,
        delay_max: Duration,
    ) -> Result<(SphinxPacket, ForwardMeta), DropReason> {
        let replay_tag = *secret.replay_tag();
        if self.replay_filter.contains(&replay_tag) {
            return Err(DropReason::Replay);
        }
        packet
            .header
            .ensure_header_integrity(&secret)
            .map_err(|_| DropReason::BadPacket)?;
        self.replay_filter.insert(&replay_tag);

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
            ProcessedPacketData::FinalHop { .. } => return Err(DropReason::FinalHop),
        };
        let meta = check_forward(next_hop_address.as_bytes(), delay.to_nanos(), delay_max)?;
        Ok((next_packet, meta))
    }
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
        [0u8; sphinx_packet::constants::IDENTIFIER_LENGTH],
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
}
