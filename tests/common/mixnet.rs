//! In-process nodes, a receiver that plays the final hop, and packet building for the engine
//! tests. Everything listens on 127.0.0.1 with OS-chosen ports.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nym_mixnode::config::description::Description;
use nym_mixnode::config::{Config, InitSettings, NodePaths};
use nym_mixnode::framing::{FrameDecoder, FrameHeader, KeyRotation, PacketType, SizeTag, Version};
use nym_mixnode::keys::NodeKeys;
use nym_mixnode::node::{self, NodeOptions, RunningNode};
use nym_mixnode::sphinx::{build_packet, RouteHop};
use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use x25519_dalek::{PublicKey, StaticSecret};

/// A node running in this process.
pub struct TestNode {
    pub node: Option<RunningNode>,
    pub public_key: PublicKey,
    /// The node's Noise public key.
    pub noise_public: [u8; 32],
    pub mix: SocketAddr,
    /// The node's `data/` folder (keys, saved filters, the key manifest).
    pub data_dir: std::path::PathBuf,
    _home: tempfile::TempDir,
}

impl TestNode {
    /// Start a node with `shards` shards; `tune` edits its config first.
    pub fn start(shards: usize, tune: impl FnOnce(&mut Config)) -> TestNode {
        TestNode::start_on("127.0.0.1".parse().unwrap(), shards, tune)
    }

    /// Start a node bound to `host` (e.g. `::1`).
    pub fn start_on(
        host: std::net::IpAddr,
        shards: usize,
        tune: impl FnOnce(&mut Config),
    ) -> TestNode {
        let home = tempfile::tempdir().unwrap();
        let settings = InitSettings {
            id: "test".into(),
            host,
            announce_host: None,
            mix_port: 0,
            verloc_port: 0,
            http_api_port: 0,
        };
        let mut config = Config::new(&settings, &NodePaths::new(home.path(), "test"));
        config.engine.cores = shards;
        config.engine.drain_timeout = Duration::from_millis(300);
        config.engine.connect_timeout = Duration::from_millis(500);
        config.engine.replay_filter_packets_max = Some(100_000);
        config.engine.held_packets_max = 50_000;
        // Tests count packets exactly: the node's own loops only where a test asks for them.
        config.monitor.enabled = false;
        tune(&mut config);
        let keys = NodeKeys::generate().unwrap();
        let public_key = keys.sphinx_public();
        let noise_public = keys.noise.as_ref().expect("generated with one").public();
        let node = node::start(
            &config,
            keys,
            Description::default(),
            NodeOptions { pin_shards: false },
        )
        .expect("node starts");
        let mix = node.addresses.mix;
        let data_dir = nym_mixnode::node::replay_store::data_dir(&config);
        TestNode {
            node: Some(node),
            public_key,
            noise_public,
            mix,
            data_dir,
            _home: home,
        }
    }

    pub fn hop(&self, delay: Duration) -> RouteHop {
        RouteHop {
            address: self.mix,
            public_key: self.public_key,
            delay,
        }
    }

    pub fn node(&self) -> &RunningNode {
        self.node.as_ref().unwrap()
    }

    /// Total counts across shards and the measured in-flight gauges (held + queued + writing).
    pub fn totals(&self) -> (nym_mixnode::accounting::PacketCounts, u64) {
        let snaps = self.node().snapshots();
        let gauges = snaps.iter().map(|s| s.in_flight_measured()).sum();
        (nym_mixnode::shard::stats::total(&snaps), gauges)
    }

    /// Every shard balances exactly, now, mid-run or not: received + taken over = forwarded +
    /// handed off + dropped + in flight, where in flight is measured by the shard (wheel,
    /// queues, writes under way), not derived from the counters. Each shard's figures are
    /// read as one publication. (Across shards, handed off and taken over agree only at
    /// quiescence: a shard may publish its handoffs after the other took them.)
    pub fn assert_shards_balance(&self) {
        let snaps = self.node().snapshots();
        for (i, s) in snaps.iter().enumerate() {
            assert_eq!(
                s.counts.in_flight(),
                s.in_flight_measured() as i64,
                "shard {i}: the counters imply a different in-flight count than the wheel, \
                 queues and writes hold: a packet was lost or counted twice: {s:?}"
            );
        }
    }

    /// Handoffs still in cross-shard channels, as the published counters say (handed off less
    /// taken over; negative while a shard has not yet published its handoffs).
    pub fn handoffs_in_channels(&self) -> i64 {
        let snaps = self.node().snapshots();
        let handed: u64 = snaps.iter().map(|s| s.counts.handed_off).sum();
        let taken: u64 = snaps.iter().map(|s| s.counts.taken_over).sum();
        handed as i64 - taken as i64
    }

    pub fn shutdown(&mut self) -> Vec<nym_mixnode::shard::stats::ShardCounts> {
        self.node.take().map(|n| n.shutdown()).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One packet that reached the receiver.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub message: Vec<u8>,
    pub at: Instant,
    pub header: FrameHeader,
}

/// The final hop: accepts connections, unwraps each packet with its key, records the message.
pub struct Receiver {
    pub addr: SocketAddr,
    pub public_key: PublicKey,
    pub arrivals: Arc<Mutex<Vec<Arrival>>>,
    pub bad: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0")
    }

    /// A receiver listening on `bind` (e.g. `[::1]:0`).
    pub fn start_on(bind: &str) -> Receiver {
        let listener = TcpListener::bind(bind).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let secret = StaticSecret::random();
        let public_key = PublicKey::from(&secret);
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (arrivals, bad, stop) = (arrivals.clone(), bad.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut readers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (arrivals, bad, stop, secret) =
                                (arrivals.clone(), bad.clone(), stop.clone(), secret.clone());
                            readers.push(std::thread::spawn(move || {
                                read_final_hops(stream, &secret, &arrivals, &bad, &stop)
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for r in readers {
                    let _ = r.join();
                }
            })
        };
        Receiver {
            addr,
            public_key,
            arrivals,
            bad,
            stop,
            thread: Some(thread),
        }
    }

    pub fn hop(&self) -> RouteHop {
        RouteHop {
            address: self.addr,
            public_key: self.public_key,
            delay: Duration::ZERO,
        }
    }

    pub fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// Wait until `n` packets arrived or `timeout` passed; the arrivals.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Arrival> {
        let start = Instant::now();
        while self.count() < n && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.arrivals.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_final_hops(
    stream: TcpStream,
    secret: &StaticSecret,
    arrivals: &Mutex<Vec<Arrival>>,
    bad: &Mutex<u64>,
    stop: &AtomicBool,
) {
    for_each_frame(stream, stop, |frame, at| {
        let message = SphinxPacket::from_bytes(frame.packet)
            .ok()
            .and_then(|p| p.process(secret).ok())
            .and_then(|p| match p.data {
                ProcessedPacketData::FinalHop { payload, .. } => payload.recover_plaintext().ok(),
                ProcessedPacketData::ForwardHop { .. } => None,
            });
        match message {
            Some(message) => arrivals.lock().unwrap().push(Arrival {
                message,
                at,
                header: frame.header,
            }),
            None => *bad.lock().unwrap() += 1,
        }
    });
}

/// Read frames from `stream` until it closes or `stop` is raised, calling `f` with each and
/// when its bytes were read.
pub fn for_each_frame(
    mut stream: TcpStream,
    stop: &AtomicBool,
    mut f: impl FnMut(nym_mixnode::framing::Frame<'_>, Instant),
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut decoder = FrameDecoder::new();
    while !stop.load(Ordering::Relaxed) {
        match stream.read(decoder.spare_mut()) {
            Ok(0) => return,
            Ok(n) => decoder.advance(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        let at = Instant::now();
        while let Ok(Some(frame)) = decoder.next_frame() {
            f(frame, at);
        }
    }
}

/// A v8 regular-size Sphinx frame header.
pub fn header(version: Version, size_tag: SizeTag) -> FrameHeader {
    FrameHeader {
        version,
        size_tag,
        packet_type: PacketType::Sphinx,
        key_rotation: if version == Version::V8 {
            KeyRotation::Even
        } else {
            KeyRotation::Unknown
        },
    }
}

/// Frame `packet` with `header`.
pub fn frame(header: FrameHeader, packet: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; header.encoded_len()];
    header.encode(&mut out);
    out.extend_from_slice(packet);
    out
}

/// Build one packet through `route` carrying `message`.
pub fn packet(route: &[RouteHop], size_tag: SizeTag, message: &[u8]) -> Vec<u8> {
    build_packet(route, [7u8; 32], size_tag, message, &StaticSecret::random())
        .expect("packet builds")
}

/// Connect to `addr` and write `bytes`.
pub fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    s.flush().unwrap();
    s
}

/// Poll until `f` holds or panic after `timeout`.
pub fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
