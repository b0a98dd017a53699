//! Does HTTP API load slow the data plane? Pushes prebuilt packets through an in-process node
//! (to a sink on 127.0.0.1) in rounds without and with API load, and prints the packet rates
//! and their ratio.
//!
//! Run: `cargo run --release --example http_api_load -- [packets_per_round] [api_clients]
//! [nice|same]` (defaults 6000, 4, nice). API load: `api_clients` threads looping over
//! `/metrics`, `/stats?debug=true`, `/`, `/live` and `/health` as fast as they are answered,
//! plus 8 slow clients dribbling bytes.
//!
//! The load generator shares the machine with the node, whereas a node's real clients are
//! elsewhere. With `nice` (the default) the generator's threads run at the lowest priority,
//! so the ratio measures what serving the API costs the data plane; with `same` they compete
//! at normal priority and the ratio also includes the generator's own CPU use.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nym_mixnode::config::description::Description;
use nym_mixnode::config::{Config, InitSettings, NodePaths};
use nym_mixnode::framing::{FrameHeader, KeyRotation, PacketType, SizeTag, Version};
use nym_mixnode::keys::NodeKeys;
use nym_mixnode::node::{self, NodeOptions, RunningNode};
use nym_mixnode::shard::stats;
use nym_mixnode::sphinx::{build_packet, RouteHop};
use x25519_dalek::{PublicKey, StaticSecret};

/// A final hop that reads and discards.
fn sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut buf = vec![0u8; 1 << 16];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn build(count: usize, node: SocketAddr, node_key: PublicKey, sink: SocketAddr) -> Vec<u8> {
    let sink_key = PublicKey::from(&StaticSecret::random());
    let route = [
        RouteHop {
            address: node,
            public_key: node_key,
            delay: Duration::ZERO,
        },
        RouteHop {
            address: sink,
            public_key: sink_key,
            delay: Duration::ZERO,
        },
    ];
    let header = FrameHeader {
        version: Version::V8,
        size_tag: SizeTag::Regular,
        packet_type: PacketType::Sphinx,
        key_rotation: KeyRotation::Even,
    };
    let mut wire = Vec::new();
    for i in 0..count {
        let packet = build_packet(
            &route,
            [7u8; 32],
            SizeTag::Regular,
            format!("{i}").as_bytes(),
            &StaticSecret::random(),
        )
        .unwrap();
        let start = wire.len();
        wire.resize(start + header.encoded_len(), 0);
        header.encode(&mut wire[start..]);
        wire.extend_from_slice(&packet);
    }
    wire
}

/// Send `wire` (`count` packets) and wait until the node has forwarded or dropped them all;
/// packets per second, and the drops.
fn round(node: &RunningNode, wire: &[u8], count: u64) -> (f64, u64) {
    let before = stats::total(&node.snapshots());
    let start = Instant::now();
    let mut s = TcpStream::connect(node.addresses.mix).unwrap();
    s.write_all(wire).unwrap();
    loop {
        let now = stats::total(&node.snapshots());
        let done =
            (now.forwarded - before.forwarded) + (now.dropped_total() - before.dropped_total());
        if done >= count {
            let elapsed = start.elapsed().as_secs_f64();
            return (
                count as f64 / elapsed,
                now.dropped_total() - before.dropped_total(),
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "round stalled at {done}/{count}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn api_load(
    addr: SocketAddr,
    clients: usize,
    nice: bool,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let paths = ["/metrics", "/stats?debug=true", "/", "/live", "/health"];
    for c in 0..clients {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            if nice {
                nym_mixnode::http::lower_thread_priority();
            }
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = write!(
                        s,
                        "GET {} HTTP/1.1\r\nHost: b\r\n\r\n",
                        paths[i % paths.len()]
                    );
                    let mut out = Vec::new();
                    let _ = s.read_to_end(&mut out);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
    }
    for _ in 0..8 {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if nice {
                nym_mixnode::http::lower_thread_priority();
            }
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    for b in b"GET /stats HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                        if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        });
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(6000);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let nice = args.next().as_deref() != Some("same");
    let home = tempfile::tempdir().unwrap();
    let settings = InitSettings {
        id: "bench".into(),
        host: "127.0.0.1".parse().unwrap(),
        announce_host: None,
        mix_port: 0,
        verloc_port: 0,
        http_api_port: 0,
    };
    let mut config = Config::new(&settings, &NodePaths::new(home.path(), "bench"));
    config.engine.replay_filter_packets_max = 1_000_000;
    config.engine.held_packets_max = 100_000;
    config.engine.peer_queue_packets_max = 100_000;
    config.engine.cross_shard_packets_max = 100_000;
    let keys = NodeKeys::generate().unwrap();
    let node_key = keys.sphinx_public();
    let node = node::start(
        &config,
        keys,
        Description::default(),
        NodeOptions { pin_shards: false },
    )
    .unwrap();
    let sink = sink();
    let rounds = 5;
    eprintln!("building {} packets ...", count * rounds * 2);
    let sets: Vec<Vec<u8>> = (0..rounds * 2)
        .map(|_| build(count, node.addresses.mix, node_key, sink))
        .collect();
    // Warm up: connections to the sink, page cache, allocator.
    let _ = round(&node, &build(500, node.addresses.mix, node_key, sink), 500);

    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut requests = 0;
    let mut drops = 0;
    for r in 0..rounds {
        let (rate, dropped) = round(&node, &sets[2 * r], count as u64);
        without.push(rate);
        drops += dropped;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        api_load(
            node.addresses.http_api,
            clients,
            nice,
            stop.clone(),
            done.clone(),
        );
        std::thread::sleep(Duration::from_millis(200));
        let (rate, dropped) = round(&node, &sets[2 * r + 1], count as u64);
        stop.store(true, Ordering::Relaxed);
        requests += done.load(Ordering::Relaxed);
        with.push(rate);
        drops += dropped;
        std::thread::sleep(Duration::from_millis(300));
        eprintln!(
            "round {r}: without API load {:.0} packets/s, with {:.0} packets/s",
            without[r], with[r]
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut without), median(&mut with));
    println!(
        "packets per round: {count}, shards: {}, api clients: {clients} + 8 slow, at {} priority",
        node.snapshots().len(),
        if nice { "lowest" } else { "normal" }
    );
    println!("median without API load: {a:.0} packets/s");
    println!("median with API load:    {b:.0} packets/s ({requests} requests answered)");
    println!("ratio with/without:      {:.3}", b / a);
    println!("packets dropped in all rounds: {drops}");
    node.shutdown();
}
