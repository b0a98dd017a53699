//! Arbitrary bytes through `HopProcessor::process` with a fixed key, and a valid packet built
//! for that key with fuzzer-chosen byte flips. Nothing may panic, and what is forwarded must
//! keep the input's length and respect the delay cap.
//!
//! Input layout: `[mode][rest]`. Mode 0: `rest` is the packet. Modes 1 and 2: `rest` is a list
//! of `(offset u16 LE, xor mask)` triples applied to a valid ack (1) or regular (2) packet.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nym_mixnode::framing::SizeTag;
use nym_mixnode::replay::ReplayFilter;
use nym_mixnode::sphinx::{build_packet, HopProcessor, RouteHop};
use x25519_dalek::{PublicKey, StaticSecret};

const NODE_KEY: [u8; 32] = [7u8; 32];
const DELAY_MAX: Duration = Duration::from_secs(10);

fn valid_packets() -> &'static [Vec<u8>; 2] {
    static PACKETS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    PACKETS.get_or_init(|| {
        let keys = [NODE_KEY, [8u8; 32], [9u8; 32]];
        let route: Vec<RouteHop> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| RouteHop {
                address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 1789)),
                public_key: PublicKey::from(&StaticSecret::from(*key)),
                delay: Duration::from_millis(30),
            })
            .collect();
        let initial = StaticSecret::from([1u8; 32]);
        let build = |size_tag| {
            build_packet(&route, [2u8; 32], size_tag, b"fuzz", &initial).expect("valid route")
        };
        [build(SizeTag::Ack), build(SizeTag::Regular)]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let filter = ReplayFilter::with_default_rate(16).expect("valid size");
    let mut processor = HopProcessor::new(StaticSecret::from(NODE_KEY), filter);
    let packet = match mode % 3 {
        0 => rest.to_vec(),
        kind => {
            let mut packet = valid_packets()[kind as usize - 1].clone();
            for flip in rest.chunks_exact(3) {
                let offset = u16::from_le_bytes([flip[0], flip[1]]) as usize % packet.len();
                packet[offset] ^= flip[2];
            }
            packet
        }
    };
    if let Ok(forward) = processor.process(&packet, DELAY_MAX) {
        assert_eq!(forward.packet.len(), packet.len());
        assert!(forward.delay <= DELAY_MAX);
        // A second copy is always a replay.
        assert!(processor.process(&packet, DELAY_MAX).is_err());
    }
});
