//! Packets processed per second: the crate's own `process()` against `HopProcessor::process`
//! (parse, replay check, MAC, unwrap and output copy), on packets built ahead of time, plus
//! the cost of a replay (one scalar multiplication).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nym_mixnode::framing::SizeTag;
use nym_mixnode::replay::ReplayFilter;
use nym_mixnode::sphinx::{build_packet, HopProcessor, RouteHop, DELAY_MAX_DEFAULT};
use sphinx_packet::SphinxPacket;
use x25519_dalek::{PublicKey, StaticSecret};

const PACKETS: usize = 128;

fn setup() -> (StaticSecret, Vec<Vec<u8>>) {
    let mut rng = common::SplitMix64(7);
    let secrets: Vec<StaticSecret> = (0..3).map(|_| StaticSecret::from(rng.tag())).collect();
    let route: Vec<RouteHop> = secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| RouteHop {
            address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 1789)),
            public_key: PublicKey::from(secret),
            delay: Duration::from_millis(50),
        })
        .collect();
    let packets = (0..PACKETS)
        .map(|_| {
            let initial = StaticSecret::from(rng.tag());
            build_packet(&route, [1u8; 32], SizeTag::Regular, b"bench", &initial)
                .expect("valid route")
        })
        .collect();
    (secrets[0].clone(), packets)
}

fn process(c: &mut Criterion) {
    let (secret, packets) = setup();
    let mut group = c.benchmark_group("sphinx");
    group.throughput(Throughput::Elements(1));

    let mut index = 0;
    group.bench_function("crate_process", |b| {
        b.iter(|| {
            let packet = SphinxPacket::from_bytes(&packets[index % PACKETS]).expect("valid");
            index += 1;
            black_box(packet.process(&secret).expect("processes"))
        })
    });

    let filter = ReplayFilter::with_default_rate(PACKETS as u64).expect("valid size");
    let mut processor = HopProcessor::new(secret.clone(), filter);
    let mut index = 0;
    group.bench_function("hop_processor_process", |b| {
        b.iter(|| {
            if index % PACKETS == 0 {
                // Each packet may be mixed once per filter; the clear is a few hundred bytes.
                processor.replay_filter_mut().clear();
            }
            let result = processor.process(&packets[index % PACKETS], DELAY_MAX_DEFAULT);
            index += 1;
            black_box(result.expect("forwards"))
        })
    });

    processor.replay_filter_mut().clear();
    for packet in &packets {
        processor
            .process(packet, DELAY_MAX_DEFAULT)
            .expect("forwards");
    }
    let mut index = 0;
    group.bench_function("hop_processor_replay", |b| {
        b.iter(|| {
            let result = processor.process(&packets[index % PACKETS], DELAY_MAX_DEFAULT);
            index += 1;
            black_box(result.expect_err("a replay"))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::quick_criterion();
    targets = process
}
criterion_main!(benches);
