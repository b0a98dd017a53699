//! Packets processed per second, all in one run: the crate's own `process()` against the fast
//! hop step (`sphinx::fast::process_in_place`, the same work without a replay filter), and
//! `HopProcessor::process_into` (parse, replay check, MAC, unwrap) with either implementation,
//! plus the cost of a replay (one scalar multiplication) and the two X25519 routes alone.
//! Prints the fast-over-crate ratios from criterion's estimates at the end.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nym_mixnode::framing::SizeTag;
use nym_mixnode::replay::ReplayFilter;
use nym_mixnode::sphinx::{
    build_packet, fast, HopProcessor, HopProcessorKind, RouteHop, DELAY_MAX_DEFAULT,
};
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

    let secret_bytes = secret.to_bytes();
    let mut out = vec![0u8; packets[0].len()];
    let mut index = 0;
    group.bench_function("fast_process", |b| {
        b.iter(|| {
            out.copy_from_slice(&packets[index % PACKETS]);
            index += 1;
            black_box(fast::process_in_place(&secret_bytes, &mut out).expect("processes"))
        })
    });

    for kind in [HopProcessorKind::Crate, HopProcessorKind::Fast] {
        let filter = ReplayFilter::with_default_rate(PACKETS as u64).expect("valid size");
        let mut processor = HopProcessor::with_kind(secret.clone(), filter, kind);
        let mut index = 0;
        group.bench_function(format!("hop_processor_{kind}"), |b| {
            b.iter(|| {
                if index % PACKETS == 0 {
                    // Each packet may be mixed once per filter; the clear is a few hundred bytes.
                    processor.replay_filter_mut().clear();
                }
                let result =
                    processor.process_into(&packets[index % PACKETS], DELAY_MAX_DEFAULT, &mut out);
                index += 1;
                black_box(result.expect("forwards"))
            })
        });

        processor.replay_filter_mut().clear();
        for packet in &packets {
            processor
                .process_into(packet, DELAY_MAX_DEFAULT, &mut out)
                .expect("forwards");
        }
        let mut index = 0;
        group.bench_function(format!("hop_processor_{kind}_replay"), |b| {
            b.iter(|| {
                let result =
                    processor.process_into(&packets[index % PACKETS], DELAY_MAX_DEFAULT, &mut out);
                index += 1;
                black_box(result.expect_err("a replay"))
            })
        });
    }

    let alphas: Vec<[u8; 32]> = packets
        .iter()
        .map(|packet| fast::alpha_of(packet))
        .collect();
    let mut index = 0;
    group.bench_function("x25519_ladder", |b| {
        b.iter(|| {
            index += 1;
            black_box(x25519_dalek::x25519(secret_bytes, alphas[index % PACKETS]))
        })
    });
    let mut index = 0;
    group.bench_function("x25519_edwards", |b| {
        b.iter(|| {
            index += 1;
            black_box(fast::x25519(secret_bytes, alphas[index % PACKETS]))
        })
    });
    group.finish();

    for (fast_name, crate_name) in [
        ("fast_process", "crate_process"),
        ("hop_processor_fast", "hop_processor_crate"),
        ("hop_processor_fast_replay", "hop_processor_crate_replay"),
        ("x25519_edwards", "x25519_ladder"),
    ] {
        if let (Some(fast), Some(reference)) = (mean_ns(fast_name), mean_ns(crate_name)) {
            println!(
                "ratio {crate_name} / {fast_name} time: {:.2}x ({reference:.0} ns / {fast:.0} ns)",
                reference / fast
            );
        }
    }
}

/// Criterion's mean estimate for `sphinx/<name>` from this run, in ns.
fn mean_ns(name: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_string());
    let path = format!("{target}/criterion/sphinx/{name}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["mean"]["point_estimate"].as_f64()
}

criterion_group! {
    name = benches;
    config = common::quick_criterion();
    targets = process
}
criterion_main!(benches);
