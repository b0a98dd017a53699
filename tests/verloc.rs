//! VerLoc over real sockets on 127.0.0.1: three in-process nodes measuring each other, replies
//! that must not count (forged signature, wrong echo, silence), the listener's limits, and a
//! node that abandons 2000 connections without leaking a descriptor.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::{SigningKey, VerifyingKey};
use nym_mixnode::config::description::Description;
use nym_mixnode::config::{Config, InitSettings, NodePaths};
use nym_mixnode::keys::NodeKeys;
use nym_mixnode::node::{self, NodeOptions, RunningNode};
use nym_mixnode::topology::{TopologyEntry, TopologyFile};
use nym_mixnode::verloc::measurer::{measure_node, Target};
use nym_mixnode::verloc::packet::{
    build_echo, check_reply, sign_reply, EchoBytes, ECHO_LENGTH, REPLY_LENGTH,
};
use nym_mixnode::verloc::{EchoReject, StopSignal, TargetFailure};
use serde_json::Value;

/// The descriptor test needs the process to itself: it takes this for writing, others for
/// reading.
static FD_LOCK: RwLock<()> = RwLock::new(());

struct VerlocNode {
    node: Option<RunningNode>,
    identity: VerifyingKey,
    sphinx: x25519_dalek::PublicKey,
    _home: tempfile::TempDir,
}

impl VerlocNode {
    fn start(tune: impl FnOnce(&mut Config)) -> VerlocNode {
        let home = tempfile::tempdir().unwrap();
        let settings = InitSettings {
            id: "verloc".into(),
            host: "127.0.0.1".parse().unwrap(),
            announce_host: None,
            mix_port: 0,
            verloc_port: 0,
            http_api_port: 0,
        };
        let mut config = Config::new(&settings, &NodePaths::new(home.path(), "verloc"));
        config.engine.cores = 1;
        config.engine.drain_timeout = Duration::from_millis(100);
        config.engine.replay_filter_packets_max = Some(10_000);
        config.engine.held_packets_max = 1_000;
        // These tests count the process's descriptors and connections: no loops of the
        // node's own (the topology's made-up mix ports would draw them too).
        config.monitor.enabled = false;
        let v = &mut config.verloc;
        v.packets_per_node = 10;
        v.packet_spacing = Duration::from_millis(5);
        v.packet_timeout = Duration::from_millis(500);
        v.connect_timeout = Duration::from_millis(500);
        v.run_interval = Duration::from_secs(3600);
        v.retry_interval = Duration::from_millis(100);
        tune(&mut config);
        let keys = NodeKeys::generate().unwrap();
        let (identity, sphinx) = (keys.identity_public(), keys.sphinx_public());
        let node = node::start(
            &config,
            keys,
            Description::default(),
            NodeOptions { pin_shards: false },
        )
        .expect("node starts");
        VerlocNode {
            node: Some(node),
            identity,
            sphinx,
            _home: home,
        }
    }

    fn node(&self) -> &RunningNode {
        self.node.as_ref().unwrap()
    }

    fn verloc_addr(&self) -> SocketAddr {
        self.node().addresses.verloc
    }

    fn entry(&self) -> TopologyEntry {
        TopologyEntry {
            identity_key: base58(&self.identity),
            sphinx_key: bs58::encode(self.sphinx.as_bytes()).into_string(),
            host: "127.0.0.1".into(),
            mix_port: self.node().addresses.mix.port(),
            verloc_port: self.verloc_addr().port(),
            ..Default::default()
        }
    }
}

impl Drop for VerlocNode {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown();
        }
    }
}

fn base58(key: &VerifyingKey) -> String {
    bs58::encode(key.as_bytes()).into_string()
}

fn entry_for(identity: &VerifyingKey, addr: SocketAddr) -> TopologyEntry {
    TopologyEntry {
        identity_key: base58(identity),
        sphinx_key: bs58::encode([9u8; 32]).into_string(),
        host: addr.ip().to_string(),
        mix_port: 1789,
        verloc_port: addr.port(),
        ..Default::default()
    }
}

/// Write the topology atomically, so that a run never reads half a file.
fn write_topology(path: &Path, entries: Vec<TopologyEntry>, extra_bad_entry: bool) {
    let mut json: Value =
        serde_json::from_str(&TopologyFile { nodes: entries }.to_json_pretty()).unwrap();
    if extra_bad_entry {
        json["nodes"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"identity_key": "not-a-key", "host": "127.0.0.1"}));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn duration(value: &Value) -> Duration {
    humantime::parse_duration(value.as_str().expect("a duration string")).unwrap()
}

fn time(value: &Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().expect("a time string")).unwrap()
}

/// `GET /verloc` from the node's HTTP API.
fn http_verloc(node: &VerlocNode) -> Option<Value> {
    let mut s = TcpStream::connect(node.node().addresses.http_api).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /verloc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("application/json"),
        "{head}"
    );
    serde_json::from_str(body).ok()
}

/// The `/verloc` document of `node`, served over HTTP, once a run has finished.
fn finished_report(node: &VerlocNode, timeout: Duration) -> Value {
    eventually(timeout, "a finished VerLoc run", || {
        let json = http_verloc(node)?;
        (!json["run_finished"].is_null()).then_some(json)
    })
}

#[test]
fn three_nodes_measure_each_other_and_report_sane_figures() {
    let _shared = FD_LOCK.read().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.json");
    let nodes: Vec<VerlocNode> = (0..3)
        .map(|_| {
            VerlocNode::start(|c| {
                c.verloc.topology = topology.display().to_string();
                c.verloc.run_interval = Duration::from_millis(400);
            })
        })
        .collect();
    // Every node started before the file existed, so each has already failed to read it and
    // retries after `retry_interval`.
    eventually(Duration::from_secs(5), "a failed first read", || {
        nodes
            .iter()
            .all(|n| n.node().verloc_stats().runs_no_node_list >= 1)
            .then_some(())
    });
    write_topology(&topology, nodes.iter().map(|n| n.entry()).collect(), true);

    for (i, me) in nodes.iter().enumerate() {
        let json = finished_report(me, Duration::from_secs(15));
        assert_eq!(json["total_tested"], 2, "node {i}: {json}");
        let started = time(&json["run_started"]);
        let finished = time(&json["run_finished"]);
        assert!(started <= finished, "{json}");
        let results = json["results"].as_array().unwrap();
        let mut measured: Vec<&str> = results
            .iter()
            .map(|r| r["identity"].as_str().unwrap())
            .collect();
        measured.sort_unstable();
        let mut others: Vec<String> = nodes
            .iter()
            .filter(|n| n.identity != me.identity)
            .map(|n| base58(&n.identity))
            .collect();
        others.sort_unstable();
        assert_eq!(measured, others, "node {i} measures the others, not itself");
        let mut previous_minimum = Duration::ZERO;
        for r in results {
            let m = &r["latest_measurement"];
            assert!(m.is_object(), "node {i}: {json}");
            let (min, mean, max, sd) = (
                duration(&m["minimum"]),
                duration(&m["mean"]),
                duration(&m["maximum"]),
                duration(&m["standard_deviation"]),
            );
            assert!(min > Duration::ZERO, "{json}");
            assert!(min <= mean && mean <= max, "{json}");
            assert!(
                max < Duration::from_millis(500),
                "within the packet timeout: {json}"
            );
            assert!(sd <= max - min, "{json}");
            assert!(previous_minimum <= min, "sorted by minimum: {json}");
            previous_minimum = min;
        }
        let stats = me.node().verloc_stats();
        assert!(stats.topology_entries_skipped >= 1, "{stats:?}");
        assert!(stats.targets_measured >= 2, "{stats:?}");
        assert_eq!(stats.echoes_rejected(EchoReject::BadSignature), 0);
    }
    // Each listener answered two peers, ten echoes each (their runs may end after ours).
    eventually(Duration::from_secs(10), "every echo answered", || {
        nodes
            .iter()
            .all(|n| n.node().verloc_stats().echoes_answered >= 20)
            .then_some(())
    });
    // The short interval brings a second run, which reads the file again.
    eventually(Duration::from_secs(10), "a second run", || {
        (nodes[0].node().verloc_stats().runs_finished >= 2).then_some(())
    });
    // The same counters on /metrics.
    let mut s = TcpStream::connect(nodes[0].node().addresses.http_api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    let value = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in /metrics"))
    };
    assert!(value("nym_mixnode_verloc_runs_total{outcome=\"finished\"}") >= 2);
    assert!(value("nym_mixnode_verloc_echoes_answered_total") >= 20);
    assert!(value("nym_mixnode_verloc_targets_measured_total") >= 2);
}

/// How a fake VerLoc node answers.
#[derive(Clone, Copy)]
enum Fake {
    /// Replies signed with a key other than the one the topology gives.
    ForgedSignature,
    /// Replies, correctly signed, to an echo other than the one sent.
    WrongEcho,
    /// Reads echoes and never answers.
    Silent,
}

/// A fake node on 127.0.0.1 serving one connection; its identity and address.
fn fake_node(behaviour: Fake) -> (VerifyingKey, SocketAddr) {
    let key = SigningKey::from_bytes(&rand_seed());
    let identity = key.verifying_key();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Detached: it ends when the measurer closes the connection.
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let forger = SigningKey::from_bytes(&[0xee; 32]);
        let mut echo: EchoBytes = [0u8; ECHO_LENGTH];
        while stream.read_exact(&mut echo).is_ok() {
            let reply = match behaviour {
                Fake::ForgedSignature => sign_reply(&echo, &forger),
                Fake::WrongEcho => {
                    let mut other = echo;
                    other[7] ^= 1;
                    sign_reply(&other, &key)
                }
                Fake::Silent => continue,
            };
            if stream.write_all(&reply).is_err() {
                return;
            }
        }
    });
    (identity, addr)
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    seed
}

#[test]
fn forged_signature_wrong_echo_and_silent_peer_are_not_measurements() {
    let _shared = FD_LOCK.read().unwrap();
    let honest = VerlocNode::start(|_| {});
    let fakes = [Fake::ForgedSignature, Fake::WrongEcho, Fake::Silent].map(fake_node);
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.json");
    let mut entries = vec![honest.entry()];
    entries.extend(fakes.iter().map(|(id, addr)| entry_for(id, *addr)));
    write_topology(&topology, entries, false);
    let measurer = VerlocNode::start(|c| {
        c.verloc.topology = topology.display().to_string();
        c.verloc.packet_timeout = Duration::from_millis(300);
    });
    let json = finished_report(&measurer, Duration::from_secs(10));
    assert_eq!(json["total_tested"], 4, "{json}");
    let results = json["results"].as_array().unwrap();
    assert_eq!(results[0]["identity"], base58(&honest.identity), "{json}");
    assert!(results[0]["latest_measurement"].is_object(), "{json}");
    for r in &results[1..] {
        assert!(r["latest_measurement"].is_null(), "{json}");
    }
    let stats = measurer.node().verloc_stats();
    assert_eq!(
        stats.targets_failed(TargetFailure::BadSignature),
        1,
        "{stats:?}"
    );
    assert_eq!(
        stats.targets_failed(TargetFailure::EchoMismatch),
        1,
        "{stats:?}"
    );
    assert_eq!(stats.targets_failed(TargetFailure::Timeout), 1, "{stats:?}");
    assert_eq!(stats.targets_measured, 1, "{stats:?}");
}

#[test]
fn measuring_one_node_reports_why_it_failed() {
    let _shared = FD_LOCK.read().unwrap();
    let settings = nym_mixnode::config::VerlocSection {
        packets_per_node: 3,
        packet_spacing: Duration::ZERO,
        packet_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let me = SigningKey::from_bytes(&rand_seed());
    let stop = StopSignal::new();
    let target = |(identity, addr): (VerifyingKey, SocketAddr)| Target {
        identity,
        host: addr.ip().to_string(),
        verloc_port: addr.port(),
    };
    for (fake, expected) in [
        (Fake::ForgedSignature, TargetFailure::BadSignature),
        (Fake::WrongEcho, TargetFailure::EchoMismatch),
        (Fake::Silent, TargetFailure::Timeout),
    ] {
        let result = measure_node(&settings, &me, &target(fake_node(fake)), &stop);
        assert_eq!(result, Err(expected));
    }
    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let result = measure_node(
        &settings,
        &me,
        &target((SigningKey::from_bytes(&[1; 32]).verifying_key(), closed)),
        &stop,
    );
    assert_eq!(result, Err(TargetFailure::Unreachable));
}

#[test]
fn listener_answers_many_echoes_per_connection_and_drops_bad_peers() {
    let _shared = FD_LOCK.read().unwrap();
    let node = VerlocNode::start(|c| {
        c.verloc.read_timeout = Duration::from_millis(300);
        c.verloc.connections_max = 4;
    });
    let me = SigningKey::from_bytes(&rand_seed());

    // Many echoes on one connection, each written in two pieces.
    let mut conn = TcpStream::connect(node.verloc_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for sequence in 0..5u64 {
        let echo = build_echo(sequence, &me);
        conn.write_all(&echo[..50]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        conn.write_all(&echo[50..]).unwrap();
        let mut reply = [0u8; REPLY_LENGTH];
        conn.read_exact(&mut reply).unwrap();
        assert_eq!(check_reply(&reply, &echo, &node.identity), Ok(()));
    }
    drop(conn);

    // Garbage: closed at once, counted.
    let mut garbage = TcpStream::connect(node.verloc_addr()).unwrap();
    garbage.write_all(&[0x5a; ECHO_LENGTH]).unwrap();
    common::assert_closed_by_peer(&mut garbage, Duration::from_secs(10), "a garbage echo");

    // A stall mid-echo: closed after the read timeout.
    let mut stall = TcpStream::connect(node.verloc_addr()).unwrap();
    stall.write_all(&[1u8; 20]).unwrap();
    let started = Instant::now();
    common::assert_closed_by_peer(&mut stall, Duration::from_secs(10), "a stalled echo");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed by the read timeout, not at once"
    );

    // Over the connection limit: the extra ones are closed at once.
    let held: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(node.verloc_addr()).unwrap())
        .collect();
    let stats = eventually(Duration::from_secs(5), "refused connections", || {
        let stats = node.node().verloc_stats();
        (stats.connections_refused_limit >= 2).then_some(stats)
    });
    assert!(stats.connections_active <= 4, "{stats:?}");
    drop(held);

    let stats = eventually(Duration::from_secs(5), "all closed", || {
        let stats = node.node().verloc_stats();
        (stats.connections_active == 0).then_some(stats)
    });
    assert_eq!(stats.echoes_answered, 5, "{stats:?}");
    assert_eq!(
        stats.echoes_rejected(EchoReject::BadSignature)
            + stats.echoes_rejected(EchoReject::BadSenderKey),
        1,
        "{stats:?}"
    );
    assert_eq!(stats.connections_closed_bad_echo, 1, "{stats:?}");
    assert!(stats.connections_closed_idle >= 1, "{stats:?}");
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn abandoned_connections_leave_no_descriptors_behind() {
    let _alone = FD_LOCK.write().unwrap();
    let node = VerlocNode::start(|c| {
        c.verloc.read_timeout = Duration::from_millis(200);
        c.verloc.connections_max = 64;
    });
    let addr = node.verloc_addr();
    let me = SigningKey::from_bytes(&rand_seed());
    let echo = build_echo(1, &me);
    // Warm up (thread-local buffers, lazily opened files), then take the baseline.
    drop(TcpStream::connect(addr).unwrap());
    eventually(Duration::from_secs(5), "warm-up closed", || {
        (node.node().verloc_stats().connections_active == 0).then_some(())
    });
    let baseline = open_descriptors();

    let total = 2000u64;
    let mut held = Vec::new();
    for i in 0..total {
        let mut stream = TcpStream::connect(addr).unwrap();
        match i % 4 {
            0 => {}
            1 => {
                let _ = stream.write_all(&echo[..ECHO_LENGTH / 2]);
            }
            2 => {
                let _ = stream.write_all(&[0xa5; ECHO_LENGTH]);
            }
            _ => held.push(stream),
        }
        if held.len() >= 50 {
            held.clear();
        }
    }
    drop(held);

    let stats = eventually(Duration::from_secs(15), "every connection closed", || {
        let stats = node.node().verloc_stats();
        (stats.connections_accepted > total && stats.connections_active == 0).then_some(stats)
    });
    // Descriptors of closed sockets go back at once; allow a little harness noise.
    let after = eventually(Duration::from_secs(5), "descriptors back", || {
        let now = open_descriptors();
        (now <= baseline + 3).then_some(now)
    });
    assert!(after <= baseline + 3, "{baseline} -> {after}: {stats:?}");
}
