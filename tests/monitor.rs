//! The node's own loops: a node alone reports that it mixes; three nodes where one silently
//! drops packets for one next hop show the loss on that path; and loops are accounted for.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::mixnet::TestNode;
use nym_mixnode::topology::{TopologyEntry, TopologyFile};
use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use x25519_dalek::{PublicKey, StaticSecret};

fn json(api: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = common::http_get(api, path).expect("the API answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

fn fast_monitor(c: &mut nym_mixnode::config::Config) {
    c.monitor.enabled = true;
    c.monitor.interval = Duration::from_secs(1);
    c.monitor.loops_per_interval = 4;
    c.monitor.mean_delay = Duration::from_millis(20);
}

#[test]
fn a_node_alone_reports_that_it_mixes_and_its_loops_are_accounted_for() {
    let mut node = TestNode::start(2, fast_monitor);
    let api = node.node().addresses.http_api;
    let report = common::wait_for(Duration::from_secs(20), "a loop back", || {
        let report = json(api, "/report");
        (report["mostRecentIPV4"] == true).then_some(report)
    });
    assert_eq!(report["last5MinutesIPV4"], 100, "{report}");
    assert_eq!(report["mostRecentIPV6"], serde_json::Value::Null);
    assert!(report["loops"]["ipv4"]["returned"].as_u64() >= Some(1));
    let paths = report["paths"].as_array().unwrap();
    let own = node.mix.to_string();
    assert!(
        paths.iter().all(|p| p["from"] == own && p["to"] == own),
        "{report}"
    );
    let history = json(api, "/history");
    let points = history["history"].as_array().unwrap();
    assert_eq!(points.last().unwrap()["ipv4Uptime"], 100, "{history}");
    assert!(common::metric_sum(api, "nym_mixnode_loops_returned_total", "").unwrap_or(0) >= 1);
    let own_path = format!("from=\"{own}\",to=\"{own}\",outcome=\"returned\"");
    let path_returned = common::metric_sum(api, "nym_mixnode_monitor_path_loops_total", &own_path);
    assert!(path_returned >= Some(1), "{path_returned:?}");
    let sent = common::metric_sum(
        api,
        "nym_mixnode_monitor_loops_total",
        "family=\"ipv4\",outcome=\"sent\"",
    );
    assert!(sent >= Some(1), "{sent:?}");
    // Loops are no drops: the final-hop counter stays at zero.
    let (counts, _) = node.totals();
    assert_eq!(
        counts.dropped[nym_mixnode::accounting::DropReason::FinalHop as usize],
        0
    );
    assert!(counts.looped >= 1);
    // Every packet is accounted for, loops in their own series.
    let finals = node.node.take().unwrap().shutdown();
    for (shard, c) in finals.iter().enumerate() {
        assert_eq!(
            c.packets.received + c.taken_over,
            c.packets.forwarded + c.handed_off + c.packets.dropped_total() + c.packets.looped,
            "shard {shard}: {c:?}"
        );
    }
    let looped: u64 = finals.iter().map(|c| c.packets.looped).sum();
    let received: u64 = finals.iter().map(|c| c.packets.received).sum();
    // Each loop through the node alone is received twice (sent in, then forwarded to itself).
    assert!(
        received >= 2 * looped,
        "{received} received, {looped} looped"
    );
}

#[test]
fn the_monitor_can_be_turned_off() {
    let node = TestNode::start(1, |c| c.monitor.enabled = false);
    let api = node.node().addresses.http_api;
    let (status, body) = common::http_get(api, "/report").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("monitor.enabled"), "{body}");
}

/// A mix on loopback that forwards every packet at once, except those for `drop_to`, which
/// it drops without a word.
struct DroppingMix {
    addr: SocketAddr,
    public_key: PublicKey,
    dropped: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DroppingMix {
    fn start(drop_to: Arc<std::sync::Mutex<Option<SocketAddr>>>) -> DroppingMix {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let secret = StaticSecret::random();
        let public_key = PublicKey::from(&secret);
        let dropped = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (dropped, forwarded, stop) = (dropped.clone(), forwarded.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let (secret, drop_to) = (secret.clone(), drop_to.clone());
                    let (dropped, forwarded, stop) =
                        (dropped.clone(), forwarded.clone(), stop.clone());
                    std::thread::spawn(move || {
                        relay(stream, &secret, &drop_to, &dropped, &forwarded, &stop)
                    });
                }
            });
        }
        DroppingMix {
            addr,
            public_key,
            dropped,
            forwarded,
            stop,
        }
    }
}

impl Drop for DroppingMix {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(
    stream: TcpStream,
    secret: &StaticSecret,
    drop_to: &std::sync::Mutex<Option<SocketAddr>>,
    dropped: &AtomicU64,
    forwarded: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut out: HashMap<SocketAddr, TcpStream> = HashMap::new();
    common::mixnet::for_each_frame(stream, stop, |frame, _| {
        let Some(ProcessedPacketData::ForwardHop {
            next_hop_packet,
            next_hop_address,
            ..
        }) = SphinxPacket::from_bytes(frame.packet)
            .ok()
            .and_then(|p| p.process(secret).ok())
            .map(|p| p.data)
        else {
            return;
        };
        let Some(next) = nym_mixnode::sphinx::parse_node_address(next_hop_address.as_bytes())
        else {
            return;
        };
        if *drop_to.lock().unwrap() == Some(next) {
            dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut bytes = vec![0u8; frame.header.encoded_len()];
        frame.header.encode(&mut bytes);
        bytes.extend_from_slice(&next_hop_packet.to_bytes());
        let link = out
            .entry(next)
            .or_insert_with(|| TcpStream::connect(next).expect("the next hop listens"));
        if link.write_all(&bytes).is_ok() {
            forwarded.fetch_add(1, Ordering::Relaxed);
        }
    });
}

fn entry(addr: SocketAddr, key: &PublicKey, seed: u8) -> TopologyEntry {
    TopologyEntry {
        identity_key: bs58::encode(
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .as_bytes(),
        )
        .into_string(),
        sphinx_key: bs58::encode(key.as_bytes()).into_string(),
        host: addr.ip().to_string(),
        mix_port: addr.port(),
        verloc_port: 1790,
        ..Default::default()
    }
}

fn path(
    report: &serde_json::Value,
    from: SocketAddr,
    to: SocketAddr,
) -> Option<&serde_json::Value> {
    report["paths"]
        .as_array()?
        .iter()
        .find(|p| p["from"] == from.to_string() && p["to"] == to.to_string())
}

#[test]
fn a_node_that_drops_packets_for_one_next_hop_shows_as_loss_on_that_path() {
    let drop_to = Arc::new(std::sync::Mutex::new(None));
    let b = DroppingMix::start(drop_to.clone());
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.json");
    let write = |entries: Vec<TopologyEntry>| {
        std::fs::write(&topology, TopologyFile { nodes: entries }.to_json_pretty()).unwrap();
    };
    write(vec![entry(b.addr, &b.public_key, 2)]);
    let tune = |c: &mut nym_mixnode::config::Config| {
        fast_monitor(c);
        c.monitor.loops_per_interval = 8;
        c.monitor.lost_after = Duration::from_secs(8);
        c.topology.source = topology.display().to_string();
        c.topology.refresh_interval = Duration::from_secs(1);
    };
    let a = TestNode::start(1, tune);
    let c = TestNode::start(1, tune);
    *drop_to.lock().unwrap() = Some(c.mix);
    write(vec![
        entry(a.mix, &a.public_key, 1),
        entry(b.addr, &b.public_key, 2),
        entry(c.mix, &c.public_key, 3),
    ]);
    let (api_a, api_c) = (a.node().addresses.http_api, c.node().addresses.http_api);
    // Wait until both have sent loops over B -> C and C -> B, and resolved them.
    let settled = |api: SocketAddr| {
        let report = json(api, "/report");
        let resolved = |p: Option<&serde_json::Value>| {
            p.map(|p| p["returned"].as_u64().unwrap() + p["lost"].as_u64().unwrap())
                .unwrap_or(0)
        };
        (resolved(path(&report, b.addr, c.mix)) >= 3 && resolved(path(&report, c.mix, b.addr)) >= 3)
            .then_some(report)
    };
    for (name, api) in [("A", api_a), ("C", api_c)] {
        let report = common::wait_for(Duration::from_secs(90), "loops over B and C", || {
            settled(api)
        });
        let b_to_c = path(&report, b.addr, c.mix).unwrap();
        assert_eq!(
            b_to_c["percent"], 0,
            "{name}: B drops everything for C: {report}"
        );
        assert_eq!(b_to_c["returned"], 0, "{name}: {report}");
        // A lost loop counts as lost on each of its paths, so C -> B (also on C -> B -> C,
        // which B drops) may show losses; but loops over it come back.
        let c_to_b = path(&report, c.mix, b.addr).unwrap();
        assert!(c_to_b["returned"].as_u64() > Some(0), "{name}: {report}");
        if name == "C" {
            // C's own loops cannot tell A -> B from B -> C: its loops over A -> B all go on
            // to B -> C (they end at C). A's loops can.
            continue;
        }
        // For A, B -> C is the one path with nothing back: every other path well sampled
        // has loops that came back (each is on a loop that comes back at least half the
        // time: all of 12 lost by chance is 1 in 4096).
        for p in report["paths"].as_array().unwrap() {
            if p["from"] == b.addr.to_string() && p["to"] == c.mix.to_string() {
                continue;
            }
            if p["returned"].as_u64().unwrap() + p["lost"].as_u64().unwrap() >= 12 {
                assert!(p["percent"].as_u64().unwrap() > 0, "{p} in {report}");
            }
        }
    }
    assert!(b.dropped.load(Ordering::Relaxed) >= 3);
    assert!(b.forwarded.load(Ordering::Relaxed) >= 3);
}
