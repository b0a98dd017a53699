//! Differential test: the fast hop step (`nym_mixnode::sphinx::fast`) against the
//! `sphinx-packet` crate's `process()`, packet by packet, through `sphinx::crosscheck`.
//!
//! Genuine packets of every Sphinx size, every version the crate builds and routes of one to
//! five hops are walked hop by hop (forward hops, then the final hop); each hop's packet is
//! also corrupted several ways (header bit flips, bit 255 of alpha, payload flips, alpha
//! replaced by a random or twist element, alpha with a small-order point added, truncated and
//! extended lengths). Headers are also crafted for arbitrary group elements (twist points,
//! small-order points, non-canonical encodings) with a valid MAC, so that the crate accepts
//! them and the outputs can be compared. Every packet must give the same bytes, address,
//! delay and replay tag, or be rejected by both.
//!
//! The default test compares a few thousand packets so that a debug build on two cores stays
//! quick; `cargo test --release --test hop_differential -- --ignored` runs the 10,000-packet
//! version. `MIXNODE_TEST_SEED` picks the seed.

use std::collections::BTreeMap;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, IsIdentity};
use nym_mixnode::framing::SizeTag;
use nym_mixnode::sphinx::crosscheck::{compare, craft_packet, Agreement};
use nym_mixnode::sphinx::fast;
use sphinx_packet::constants::MAX_PATH_LENGTH;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::header::routing::ENCRYPTED_ROUTING_INFO_SIZE;
use sphinx_packet::header::HEADER_SIZE;
use sphinx_packet::payload::PAYLOAD_OVERHEAD_SIZE;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::version::{Version, KNOWN_VERSIONS};
use sphinx_packet::SphinxPacketBuilder;
use x25519_dalek::{PublicKey, StaticSecret};

const SPHINX_SIZES: [SizeTag; 5] = [
    SizeTag::Regular,
    SizeTag::Ack,
    SizeTag::Extended8,
    SizeTag::Extended16,
    SizeTag::Extended32,
];

/// The field prime 2^255 - 19, little-endian.
const P: [u8; 32] = {
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("MIXNODE_TEST_SEED")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0x6469_6666_6572_656e);
        eprintln!("seed {seed} (set MIXNODE_TEST_SEED to replay)");
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.fill(&mut out);
        out
    }
}

/// The eight points of order dividing 8, found from a random point's torsion component.
fn torsion_points(rng: &mut Rng) -> Vec<EdwardsPoint> {
    let eighth = Scalar::from(8u8).invert();
    loop {
        let Some(point) = CompressedEdwardsY(rng.bytes32()).decompress() else {
            continue;
        };
        let torsion = point - point.mul_by_cofactor() * eighth;
        if (torsion * Scalar::from(4u8)).is_identity() {
            continue;
        }
        return (0..8u8).map(|i| torsion * Scalar::from(i)).collect();
    }
}

/// A random u-coordinate on the quadratic twist.
fn twist_u(rng: &mut Rng) -> [u8; 32] {
    loop {
        let u = rng.bytes32();
        if MontgomeryPoint(u).to_edwards(0).is_none() {
            return u;
        }
    }
}

/// Group elements of every kind the fast path must treat like the ladder.
fn awkward_alphas(rng: &mut Rng, torsion: &[EdwardsPoint], count: usize) -> Vec<[u8; 32]> {
    let mut alphas = Vec::new();
    for point in torsion {
        alphas.push(point.to_montgomery().to_bytes());
    }
    let mut minus_one = P;
    minus_one[0] -= 1;
    alphas.push(minus_one);
    for i in 0..19u8 {
        // Non-canonical encodings p + i, and the same with bit 255 set.
        let mut u = P;
        u[0] = u[0].wrapping_add(i);
        if i >= 0x13 {
            continue;
        }
        alphas.push(u);
        u[31] |= 0x80;
        alphas.push(u);
    }
    for _ in 0..count {
        let mut u = match rng.below(4) {
            0 => twist_u(rng),
            1 => rng.bytes32(),
            2 => {
                let point = EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(rng.bytes32()));
                (point + torsion[rng.below(8)]).to_montgomery().to_bytes()
            }
            _ => {
                let point = EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(rng.bytes32()));
                point.to_montgomery().to_bytes()
            }
        };
        if rng.below(2) == 0 {
            u[31] ^= 0x80;
        }
        alphas.push(u);
    }
    alphas
}

#[derive(Default)]
struct Tally(BTreeMap<&'static str, BTreeMap<&'static str, u64>>);

impl Tally {
    fn check(&mut self, label: &'static str, secret: &StaticSecret, packet: &[u8]) -> Vec<u8> {
        match compare(secret, packet) {
            Ok((agreement, out)) => {
                let kind = match agreement {
                    Agreement::Forward => "forward",
                    Agreement::Final => "final",
                    Agreement::Rejected => "rejected",
                };
                *self.0.entry(label).or_default().entry(kind).or_default() += 1;
                out
            }
            Err(difference) => panic!(
                "{label}: {difference}; packet ({} bytes) {:02x?}",
                packet.len(),
                &packet[..packet.len().min(64)]
            ),
        }
    }

    fn count(&self, label: &str, kind: &str) -> u64 {
        self.0
            .get(label)
            .and_then(|kinds| kinds.get(kind))
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.values().flat_map(|kinds| kinds.values()).sum()
    }

    fn print(&self) {
        for (label, kinds) in &self.0 {
            eprintln!("{label:>28}: {kinds:?}");
        }
        eprintln!("{:>28}: {}", "packets compared", self.total());
    }
}

/// Corrupts one hop's packet in every way and checks each copy.
fn corrupt_and_check(
    rng: &mut Rng,
    tally: &mut Tally,
    torsion: &[EdwardsPoint],
    secret: &StaticSecret,
    packet: &[u8],
) {
    let mut copy = packet.to_vec();
    for _ in 0..1 + rng.below(3) {
        let bit = rng.below(HEADER_SIZE * 8);
        copy[bit / 8] ^= 1 << (bit % 8);
    }
    tally.check("header bits flipped", secret, &copy);

    let mut copy = packet.to_vec();
    copy[31] ^= 0x80;
    tally.check("alpha bit 255 flipped", secret, &copy);

    let mut copy = packet.to_vec();
    let at = HEADER_SIZE + rng.below(packet.len() - HEADER_SIZE);
    copy[at] ^= 1 << rng.below(8);
    tally.check("payload bit flipped", secret, &copy);

    let mut copy = packet.to_vec();
    let replacement = match rng.below(2) {
        0 => twist_u(rng),
        _ => rng.bytes32(),
    };
    copy[..32].copy_from_slice(&replacement);
    tally.check("alpha replaced", secret, &copy);

    // A small-order component leaves both clamped products unchanged: accepted, same bytes.
    if let Some(point) = MontgomeryPoint(fast::alpha_of(packet)).to_edwards(rng.below(2) as u8) {
        let mut copy = packet.to_vec();
        let torsioned = (point + torsion[1 + rng.below(7)]).to_montgomery();
        copy[..32].copy_from_slice(torsioned.as_bytes());
        tally.check("alpha plus torsion", secret, &copy);
    }

    let len = match rng.below(3) {
        0 => rng.below(HEADER_SIZE + 40),
        1 => rng.below(packet.len()),
        _ => HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE + rng.below(20),
    };
    tally.check("truncated", secret, &packet[..len.min(packet.len())]);

    let mut longer = packet.to_vec();
    let mut extra = vec![0u8; 1 + rng.below(64)];
    rng.fill(&mut extra);
    longer.extend_from_slice(&extra);
    tally.check("extended", secret, &longer);
}

/// Builds and walks random genuine packets until `hops_min` hop packets were compared,
/// corrupting each hop's packet as well.
fn genuine_packets(hops_min: u64) -> Tally {
    let mut rng = Rng::new();
    let torsion = torsion_points(&mut rng);
    let secrets: Vec<StaticSecret> = (0..6).map(|_| StaticSecret::from(rng.bytes32())).collect();
    let mut tally = Tally::default();
    let mut case = 0usize;
    while tally.count("genuine", "forward") + tally.count("genuine", "final") < hops_min {
        let size_tag = SPHINX_SIZES[case % SPHINX_SIZES.len()];
        let version = KNOWN_VERSIONS[(case / SPHINX_SIZES.len()) % KNOWN_VERSIONS.len()];
        case += 1;
        let hops = 1 + rng.below(MAX_PATH_LENGTH);
        let route_secrets: Vec<&StaticSecret> = (0..hops)
            .map(|_| &secrets[rng.below(secrets.len())])
            .collect();
        let nodes: Vec<Node> = route_secrets
            .iter()
            .map(|secret| {
                Node::new(
                    NodeAddressBytes::from_bytes(rng.bytes32()),
                    PublicKey::from(*secret),
                )
            })
            .collect();
        let delays: Vec<Delay> = (0..hops)
            .map(|_| Delay::new_from_nanos(rng.next_u64() >> rng.below(64)))
            .collect();
        let mut identifier = [0u8; 16];
        rng.fill(&mut identifier);
        let destination = Destination::new(
            DestinationAddressBytes::from_bytes(rng.bytes32()),
            identifier,
        );
        let payload_len = size_tag.sphinx_payload_len();
        let mut message = vec![0u8; rng.below(payload_len - PAYLOAD_OVERHEAD_SIZE + 1)];
        rng.fill(&mut message);
        let initial = StaticSecret::from(rng.bytes32());
        let mut packet = SphinxPacketBuilder::new()
            .with_version(version)
            .with_payload_size(payload_len)
            .with_initial_secret(&initial)
            .build_packet(&message, &nodes, &destination, &delays)
            .expect("valid route")
            .to_bytes();
        assert_eq!(packet.len(), size_tag.packet_len());
        for (hop, secret) in route_secrets.iter().enumerate() {
            let forward_before = tally.count("genuine", "forward");
            let final_before = tally.count("genuine", "final");
            let out = tally.check("genuine", secret, &packet);
            // Each hop but the last comes out as a forward hop; the last, and only the last,
            // as the final hop.
            let (forward_step, final_step) = if hop + 1 == hops { (0, 1) } else { (1, 0) };
            assert_eq!(
                (
                    tally.count("genuine", "forward") - forward_before,
                    tally.count("genuine", "final") - final_before
                ),
                (forward_step, final_step),
                "hop {hop} of {hops}"
            );
            corrupt_and_check(&mut rng, &mut tally, &torsion, secret, &packet);
            packet = out;
        }
    }
    tally
}

/// A header for an arbitrary group element with a valid MAC under `secret`, with random
/// routing information (mostly forward and final flags, sometimes any flag; any version).
fn crafted_packet(
    rng: &mut Rng,
    secret: &StaticSecret,
    alpha: [u8; 32],
    payload_len: usize,
) -> Vec<u8> {
    let mut routing = [0u8; ENCRYPTED_ROUTING_INFO_SIZE];
    rng.fill(&mut routing);
    routing[0] = match rng.below(8) {
        0 => rng.below(256) as u8,
        1..=2 => 2,
        _ => 1,
    };
    // The crate debug-asserts that the first version byte is zero; the rest is free.
    routing[1] = 0;
    if rng.below(2) == 0 {
        let version = KNOWN_VERSIONS[rng.below(KNOWN_VERSIONS.len())];
        routing[2..4].copy_from_slice(&version.value().to_be_bytes());
    }
    let mut payload = vec![0u8; payload_len];
    rng.fill(&mut payload);
    craft_packet(secret, alpha, &routing, &payload)
}

fn crafted_packets(count: usize) -> Tally {
    let mut rng = Rng::new();
    let torsion = torsion_points(&mut rng);
    let secret = StaticSecret::from(rng.bytes32());
    let mut tally = Tally::default();
    for alpha in awkward_alphas(&mut rng, &torsion, count) {
        let size_tag = SPHINX_SIZES[rng.below(SPHINX_SIZES.len())];
        let payload_len = match rng.below(6) {
            0 => PAYLOAD_OVERHEAD_SIZE + rng.below(40),
            _ => size_tag.sphinx_payload_len(),
        };
        let packet = crafted_packet(&mut rng, &secret, alpha, payload_len);
        let label = if MontgomeryPoint(alpha).to_edwards(0).is_none() {
            "crafted, twist alpha"
        } else {
            "crafted, curve alpha"
        };
        tally.check(label, &secret, &packet);
    }
    tally
}

fn x25519_cases(count: usize) -> u64 {
    let mut rng = Rng::new();
    let torsion = torsion_points(&mut rng);
    let mut compared = 0;
    for alpha in awkward_alphas(&mut rng, &torsion, count) {
        let scalar = rng.bytes32();
        assert_eq!(
            fast::x25519(scalar, alpha),
            x25519_dalek::x25519(scalar, alpha),
            "alpha {alpha:02x?}"
        );
        compared += 1;
    }
    compared
}

#[test]
fn x25519_through_edwards_matches_the_ladder_for_every_kind_of_group_element() {
    let compared = x25519_cases(2000);
    eprintln!("{compared} group elements compared");
    assert!(compared >= 2000);
}

#[test]
fn the_identity_and_small_order_elements_give_the_all_zero_secret_on_both_paths() {
    let mut rng = Rng::new();
    for point in torsion_points(&mut rng) {
        let u = point.to_montgomery().to_bytes();
        assert_eq!(fast::x25519(rng.bytes32(), u), [0u8; 32]);
    }
    assert_eq!(
        EdwardsPoint::identity().to_montgomery().to_bytes(),
        [0u8; 32]
    );
}

#[test]
fn packets_of_every_size_version_and_hop_match_the_crate() {
    let tally = genuine_packets(300);
    tally.print();
    let sizes_times_versions = SPHINX_SIZES.len() * KNOWN_VERSIONS.len();
    assert!(tally.count("genuine", "forward") as usize > sizes_times_versions);
    assert!(tally.count("genuine", "final") > 25);
    assert!(tally.count("alpha plus torsion", "forward") > 0);
    assert!(tally.count("alpha bit 255 flipped", "forward") > 0);
    assert!(tally.count("header bits flipped", "rejected") > 0);
}

#[test]
fn crafted_headers_with_twist_small_order_and_non_canonical_elements_match_the_crate() {
    let tally = crafted_packets(400);
    tally.print();
    assert!(tally.count("crafted, twist alpha", "forward") > 0);
    assert!(tally.count("crafted, twist alpha", "final") > 0);
    assert!(tally.count("crafted, curve alpha", "forward") > 0);
    assert!(tally.count("crafted, twist alpha", "rejected") > 0);
}

/// The full run: at least 10,000 genuine hop packets (with their corrupted copies) and 10,000
/// crafted ones. Run it in release: `cargo test --release --test hop_differential --
/// --ignored --nocapture`.
#[test]
#[ignore = "slow in debug builds; run with --release -- --ignored"]
fn ten_thousand_packets_of_every_kind_match_the_crate() {
    let genuine = genuine_packets(10_000);
    genuine.print();
    let crafted = crafted_packets(10_000);
    crafted.print();
    assert!(x25519_cases(10_000) >= 10_000);
    assert!(genuine.count("genuine", "forward") + genuine.count("genuine", "final") >= 10_000);
    assert!(crafted.total() >= 10_000);
}

#[test]
fn legacy_versions_are_the_ones_the_crate_treats_as_legacy() {
    // The fast path leans on `Version::expects_legacy_full_payload_keys` for every u16.
    let legacy: Vec<u16> = (0..=u16::MAX)
        .filter(|value| Version::new(*value).expects_legacy_full_payload_keys())
        .collect();
    assert_eq!(legacy, [1, 257, 258]);
}

/// What the node's hop step must do with a packet, decided from the crate's `process()` and an
/// address parser written here from the wire format (`[4|6][port big-endian][4 or 16 octets]`,
/// zero-padded to 32 bytes), not from the node's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    Forward {
        next_hop: std::net::SocketAddr,
        delay: std::time::Duration,
        clamped: bool,
    },
    Drop(nym_mixnode::accounting::DropReason),
}

fn oracle_address(bytes: &[u8; 32]) -> Option<std::net::SocketAddr> {
    let port = u16::from_be_bytes([bytes[1], bytes[2]]);
    let (ip, used): (std::net::IpAddr, usize) = match bytes[0] {
        4 => (
            std::net::Ipv4Addr::new(bytes[3], bytes[4], bytes[5], bytes[6]).into(),
            7,
        ),
        6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[3..19]);
            (std::net::Ipv6Addr::from(octets).into(), 19)
        }
        _ => return None,
    };
    bytes[used..]
        .iter()
        .all(|b| *b == 0)
        .then_some(std::net::SocketAddr::new(ip, port))
}

fn oracle(secret: &StaticSecret, packet: &[u8], delay_max: std::time::Duration) -> Expected {
    use nym_mixnode::accounting::DropReason;
    let processed = sphinx_packet::SphinxPacket::from_bytes(packet).and_then(|p| p.process(secret));
    match processed.map(|p| p.data) {
        Err(_) => Expected::Drop(DropReason::BadPacket),
        Ok(sphinx_packet::ProcessedPacketData::FinalHop { .. }) => {
            Expected::Drop(DropReason::FinalHop)
        }
        Ok(sphinx_packet::ProcessedPacketData::ForwardHop {
            next_hop_address,
            delay,
            ..
        }) => match oracle_address(next_hop_address.as_bytes()) {
            None => Expected::Drop(DropReason::BadNextHopAddress),
            Some(next_hop) => {
                let asked = std::time::Duration::from_nanos(delay.to_nanos());
                Expected::Forward {
                    next_hop,
                    delay: asked.min(delay_max),
                    clamped: asked > delay_max,
                }
            }
        },
    }
}

#[test]
fn the_node_hop_step_drops_replays_bad_addresses_and_final_hops_and_clamps_delays_as_the_oracle_says(
) {
    use nym_mixnode::accounting::DropReason;
    use nym_mixnode::replay::ReplayFilter;
    use nym_mixnode::sphinx::{encode_node_address, HopProcessor, HopProcessorKind};
    use std::time::Duration;

    let mut rng = Rng::new();
    let secret = StaticSecret::from(rng.bytes32());
    let other = PublicKey::from(&StaticSecret::from(rng.bytes32()));
    let delay_max = Duration::from_millis(500);
    let mut processors: Vec<HopProcessor> = HopProcessorKind::ALL
        .iter()
        .map(|kind| {
            let filter = ReplayFilter::with_default_rate(10_000).expect("valid size");
            HopProcessor::with_kind(secret.clone(), filter, *kind)
        })
        .collect();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent: Vec<Vec<u8>> = Vec::new();
    for case in 0..400usize {
        let replay = case % 7 == 6 && !sent.is_empty();
        let packet = if replay {
            sent[rng.below(sent.len())].clone()
        } else {
            // The next hop: a valid IPv4 or IPv6 address, or bytes that encode none.
            let mut address = [0u8; 32];
            match rng.below(4) {
                0 => {
                    address =
                        encode_node_address(([10, 0, 0, 1 + rng.below(200) as u8], 1789).into())
                }
                1 => address = encode_node_address("[2001:db8::7]:1790".parse().unwrap()),
                2 => rng.fill(&mut address),
                _ => {
                    address = encode_node_address(([10, 0, 0, 9], 1789).into());
                    address[31] = 1; // padding that is not zero
                }
            }
            let delay_nanos = match rng.below(3) {
                0 => rng.below(500_000_001) as u64,
                1 => 500_000_000 + 1 + rng.below(1_000_000_000) as u64,
                _ => 0,
            };
            let final_here = rng.below(8) == 0;
            let mut nodes = vec![Node::new(
                NodeAddressBytes::from_bytes(encode_node_address(([10, 9, 9, 9], 1789).into())),
                PublicKey::from(&secret),
            )];
            let mut delays = vec![Delay::new_from_nanos(delay_nanos)];
            if !final_here {
                nodes.push(Node::new(NodeAddressBytes::from_bytes(address), other));
                delays.push(Delay::new_from_nanos(0));
            }
            let destination = Destination::new(
                DestinationAddressBytes::from_bytes(rng.bytes32()),
                [0u8; 16],
            );
            let size = SPHINX_SIZES[case % SPHINX_SIZES.len()];
            let initial = StaticSecret::from(rng.bytes32());
            let mut packet = SphinxPacketBuilder::new()
                .with_payload_size(size.sphinx_payload_len())
                .with_initial_secret(&initial)
                .build_packet(b"oracle", &nodes, &destination, &delays)
                .expect("valid route")
                .to_bytes();
            if rng.below(10) == 0 {
                let bit = rng.below(HEADER_SIZE * 8);
                packet[bit / 8] ^= 1 << (bit % 8);
            }
            packet
        };
        let expected = if replay {
            // The first copy's header verified (or it would not be in `sent`): a replay.
            Expected::Drop(DropReason::Replay)
        } else {
            oracle(&secret, &packet, delay_max)
        };
        for processor in &mut processors {
            let got = match processor.process(&packet, delay_max) {
                Ok(hop) => Expected::Forward {
                    next_hop: hop.next_hop,
                    delay: hop.delay,
                    clamped: hop.delay_clamped,
                },
                Err(reason) => Expected::Drop(reason),
            };
            assert_eq!(
                got,
                expected,
                "case {case}, {:?} processor",
                processor.kind()
            );
        }
        // A packet whose header verified is recorded, whatever its fate after the MAC.
        if !replay && expected != Expected::Drop(DropReason::BadPacket) {
            sent.push(packet);
        }
        let label = match expected {
            Expected::Forward { clamped: true, .. } => "forward, clamped".to_string(),
            Expected::Forward { .. } => "forward".to_string(),
            Expected::Drop(reason) => reason.label().to_string(),
        };
        *outcomes.entry(label).or_default() += 1;
    }
    eprintln!("{outcomes:?}");
    for label in [
        "forward",
        "forward, clamped",
        "replay",
        "bad_next_hop_address",
        "final_hop",
        "bad_packet",
    ] {
        assert!(
            outcomes.get(label).copied().unwrap_or(0) > 0,
            "no {label} case"
        );
    }
}
