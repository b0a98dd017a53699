//! Inbound connections cannot lock the node: over real sockets on loopback, thousands of idle
//! connections and slowly trickling ones, then a new sender whose packets are still forwarded;
//! and each deadline closes what it should and counts it.
//!
//! Attacking connections come from many loopback source addresses (127.1.x.y), so that the
//! per-address cap does not stop them first; the honest sender uses 127.0.0.1.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::mixnet::{frame, header, packet, send, Receiver, TestNode};
use nym_mixnode::framing::{SizeTag, Version};

/// Raise this process's open-files limit to its hard limit (the node runs in-process).
fn raise_files_limit() -> u64 {
    let (_, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
    let _ = rlimit::Resource::NOFILE.set(hard, hard);
    rlimit::Resource::NOFILE.get().expect("getrlimit").0
}

/// A connection to `to` from the loopback address 127.1.(n / 200).(n % 200 + 1).
fn connect_from(n: usize, to: SocketAddr) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let source = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 1, (n / 200) as u8, (n % 200) as u8 + 1)),
        0,
    );
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    socket.bind(&source.into()).ok()?;
    socket
        .connect_timeout(&to.into(), Duration::from_secs(2))
        .ok()?;
    Some(socket.into())
}

/// `count` frames for `node` that end at `receiver`.
fn wire(node: &TestNode, receiver: &Receiver, count: usize) -> Vec<u8> {
    let h = header(Version::V8, SizeTag::Ack);
    (0..count)
        .flat_map(|i| {
            frame(
                h,
                &packet(
                    &[node.hop(Duration::ZERO), receiver.hop()],
                    SizeTag::Ack,
                    format!("{i}").as_bytes(),
                ),
            )
        })
        .collect()
}

fn sum(node: &TestNode, f: impl Fn(&nym_mixnode::shard::stats::ShardSnapshot) -> u64) -> u64 {
    node.node().snapshots().iter().map(f).sum()
}

#[test]
fn thousands_of_idle_connections_do_not_lock_out_a_new_sender() {
    let limit = raise_files_limit();
    let idle = 3000usize.min((limit as usize).saturating_sub(400) / 2);
    assert!(
        idle >= 1000,
        "open-files limit {limit} is too low for this test"
    );
    let receiver = Receiver::start();
    let node = TestNode::start(2, |c| {
        c.engine.connections_inbound_max = 1024;
    });
    let mut held = Vec::with_capacity(idle);
    for n in 0..idle {
        if let Some(stream) = connect_from(n, node.mix) {
            held.push(stream);
        }
    }
    assert!(
        held.len() >= idle * 9 / 10,
        "opened {} of {idle}",
        held.len()
    );
    // Give the shards time to accept them all.
    common::mixnet::eventually(
        Duration::from_secs(20),
        "the idle connections accepted",
        || sum(&node, |s| s.connections_inbound + s.connections_evicted) >= held.len() as u64,
    );
    let open = sum(&node, |s| s.connections_inbound);
    assert!(open <= 1024, "the cap holds: {open} open");
    assert!(
        sum(&node, |s| s.connections_evicted) > 0,
        "the cap was reached"
    );

    let started = Instant::now();
    let _sender = send(node.mix, &wire(&node, &receiver, 50));
    let arrived = receiver.wait_for(50, Duration::from_secs(10));
    assert_eq!(arrived.len(), 50, "a new sender's packets are forwarded");
    eprintln!(
        "{} idle connections held, {open} open in the node, {} evicted; a new sender's 50 packets arrived in {:?}",
        held.len(),
        sum(&node, |s| s.connections_evicted),
        started.elapsed()
    );
    assert_eq!(sum(&node, |s| s.connections_refused), 0);
}

#[test]
fn trickling_and_silent_connections_are_closed_by_their_deadlines_and_counted() {
    let receiver = Receiver::start();
    let node = TestNode::start(1, |c| {
        c.engine.read_timeout = Duration::from_secs(1);
        c.engine.first_frame_timeout = Duration::from_secs(1);
        c.engine.connection_idle_timeout = Duration::from_secs(2);
    });
    const EACH: usize = 20;
    // Silent from the start.
    let silent: Vec<TcpStream> = (0..EACH)
        .filter_map(|n| connect_from(n, node.mix))
        .collect();
    // A whole frame, then silence.
    let quiet: Vec<TcpStream> = (0..EACH)
        .filter_map(|n| {
            let mut s = connect_from(100 + n, node.mix)?;
            s.write_all(&wire(&node, &receiver, 1)).ok()?;
            Some(s)
        })
        .collect();
    // A whole frame, then a v8 header and one byte every 200 ms: each read is quick, the
    // second frame never whole. (Without the first frame, the first-frame deadline closes
    // it: counted below as silent.)
    let mut trickling: Vec<TcpStream> = (0..EACH)
        .filter_map(|n| {
            let mut s = connect_from(200 + n, node.mix)?;
            s.write_all(&wire(&node, &receiver, 1)).ok()?;
            s.write_all(&[8, 2, 0, 0]).ok()?;
            Some(s)
        })
        .collect();
    // The same from a fresh connection.
    let mut trickling_first: Vec<TcpStream> = (0..EACH)
        .filter_map(|n| {
            let mut s = connect_from(300 + n, node.mix)?;
            s.write_all(&[8, 2, 0, 0]).ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(
        silent.len() + quiet.len() + trickling.len() + trickling_first.len(),
        4 * EACH
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        for s in trickling.iter_mut().chain(trickling_first.iter_mut()) {
            let _ = s.write_all(&[0]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Still trickling: the frame deadline (1 s from the header) has long passed, whatever the
    // bytes since.
    assert_eq!(
        sum(&node, |s| s.read_timeouts),
        EACH as u64,
        "trickling connections closed while they still trickle"
    );
    common::mixnet::eventually(Duration::from_secs(10), "every deadline fired", || {
        sum(&node, |s| s.connections_inbound) == 0
    });
    assert_eq!(
        sum(&node, |s| s.connections_closed_first_frame),
        2 * EACH as u64,
        "silent connections and fresh trickling ones: first-frame deadline"
    );
    assert_eq!(
        sum(&node, |s| s.read_timeouts),
        EACH as u64,
        "trickling connections: the frame deadline counts from its first byte"
    );
    assert_eq!(
        sum(&node, |s| s.connections_closed_idle),
        EACH as u64,
        "connections quiet after a frame: idle deadline"
    );
    assert_eq!(
        receiver.wait_for(2 * EACH, Duration::from_secs(5)).len(),
        2 * EACH
    );
    // A connection that keeps sending whole frames stays open past every deadline.
    let mut steady = TcpStream::connect(node.mix).unwrap();
    let frames = wire(&node, &receiver, 6);
    let per_frame = frames.len() / 6;
    for chunk in frames.chunks(per_frame) {
        steady.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(
        receiver
            .wait_for(2 * EACH + 6, Duration::from_secs(5))
            .len(),
        2 * EACH + 6
    );
    assert_eq!(
        sum(&node, |s| s.connections_inbound),
        1,
        "the steady sender is still connected"
    );
    drop((silent, quiet));
}

#[test]
fn one_address_is_capped_and_others_still_get_in() {
    let receiver = Receiver::start();
    let node = TestNode::start(1, |c| {
        c.engine.connections_per_ip_max = 10;
    });
    let same: Vec<TcpStream> = (0..30).filter_map(|_| connect_from(7, node.mix)).collect();
    common::mixnet::eventually(Duration::from_secs(10), "refusals counted", || {
        sum(&node, |s| s.connections_refused) >= 20
    });
    assert_eq!(sum(&node, |s| s.connections_inbound), 10);
    let _sender = send(node.mix, &wire(&node, &receiver, 5));
    assert_eq!(receiver.wait_for(5, Duration::from_secs(10)).len(), 5);
    drop(same);
}

/// Start a node on `mix_port` in a fresh home; the error's text if it does not start.
fn start_on_port(mix_port: u16) -> Result<nym_mixnode::node::RunningNode, String> {
    use nym_mixnode::config::{Config, InitSettings, NodePaths};
    let home = tempfile::tempdir().unwrap();
    let settings = InitSettings {
        id: "second".into(),
        host: "127.0.0.1".parse().unwrap(),
        announce_host: None,
        mix_port,
        verloc_port: 0,
        http_api_port: 0,
    };
    let mut config = Config::new(&settings, &NodePaths::new(home.path(), "second"));
    config.engine.cores = 1;
    config.engine.replay_filter_packets_max = Some(10_000);
    nym_mixnode::node::start(
        &config,
        nym_mixnode::keys::NodeKeys::generate().unwrap(),
        Default::default(),
        nym_mixnode::node::NodeOptions { pin_shards: false },
    )
    .map_err(|e| e.to_string())
}

#[test]
fn a_second_listener_on_the_mix_port_is_refused_naming_the_port() {
    let node = TestNode::start(2, |_| {});
    let port = node.mix.port();
    let message = match start_on_port(port) {
        Ok(_) => panic!("a second node started on mix port {port}"),
        Err(e) => e,
    };
    assert!(
        message.contains(&format!("already listens on port {port}"))
            && message.contains("mix_port"),
        "{message}"
    );
    // Any other process's listener too.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    let message = match start_on_port(port) {
        Ok(_) => panic!("started on a port another process listens on"),
        Err(e) => e,
    };
    assert!(message.contains(&format!("port {port}")), "{message}");
    // Once the other listener is gone, the port is free again.
    drop(other);
    start_on_port(port).expect("the port is free").shutdown();
}

#[test]
fn more_cores_than_the_machine_has_are_capped_and_the_node_serves_and_stops() {
    let node = common::BinaryNode::init();
    let running = node.start(64);
    let (status, body) = common::http_get(node.api, "/health").expect("/health answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"shards_stalled\":[]"), "{body}");
    let started = Instant::now();
    let out = running.stop_with(libc::SIGTERM, Duration::from_secs(20));
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        started.elapsed()
    );
    let text = common::stderr(&out);
    assert!(
        text.contains("asks for more shards than the CPUs"),
        "{text}"
    );
}

/// Start, traffic, SIGINT or SIGTERM, again and again: every round must stop, exit 0 and
/// account for every packet, within a bound. `MIXNODE_STRESS_ROUNDS` sets the rounds (a few
/// here; hundreds in a soak).
#[test]
fn start_traffic_and_stop_again_and_again_never_hangs() {
    let rounds: usize = std::env::var("MIXNODE_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let node = common::BinaryNode::init();
    let receiver = Receiver::start();
    // With a topology refreshed every second, so that its thread is stopped every round too.
    let topology = node.home.path().join("topology.json");
    write_topology(&topology, &["127.0.0.1"]);
    common::set_config_value(
        &node.home,
        common::BinaryNode::ID,
        "source",
        &format!("{:?}", topology.display().to_string()),
    );
    common::set_config_value(
        &node.home,
        common::BinaryNode::ID,
        "refresh_interval",
        "\"1s\"",
    );
    for round in 0..rounds {
        let running = node.start(2);
        let h = header(Version::V8, SizeTag::Ack);
        let wire: Vec<u8> = (0..200)
            .flat_map(|i| {
                frame(
                    h,
                    &packet(
                        &[node.hop, receiver.hop()],
                        SizeTag::Ack,
                        format!("{round}-{i}").as_bytes(),
                    ),
                )
            })
            .collect();
        let _s = send(node.mix, &wire);
        node.wait_received(200, Duration::from_secs(30));
        let signal = if round % 2 == 0 {
            libc::SIGINT
        } else {
            libc::SIGTERM
        };
        let started = Instant::now();
        let out = running.stop_with(signal, Duration::from_secs(30));
        let text = common::stderr(&out);
        assert!(out.status.success(), "round {round}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {round}: stopping took {:?}",
            started.elapsed()
        );
        assert!(
            text.contains("packet engine stopped"),
            "round {round}: {text}"
        );
        assert!(
            text.contains("topology: known nodes read"),
            "round {round}: {text}"
        );
    }
    eprintln!("{rounds} rounds of start, 200 packets, SIGINT/SIGTERM: every one exited 0");
}

/// A topology file in `dir` listing one node at each of `hosts`.
fn write_topology(path: &std::path::Path, hosts: &[&str]) {
    use nym_mixnode::topology::{TopologyEntry, TopologyFile};
    let nodes = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let identity =
                ed25519_dalek::SigningKey::from_bytes(&[i as u8 + 1; 32]).verifying_key();
            TopologyEntry {
                identity_key: bs58::encode(identity.as_bytes()).into_string(),
                sphinx_key: bs58::encode([i as u8 + 9; 32]).into_string(),
                host: host.to_string(),
                mix_port: 1789,
                verloc_port: 1790,
                ..Default::default()
            }
        })
        .collect();
    let text = TopologyFile { nodes }.to_json_pretty();
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("topology written");
    std::fs::rename(&temporary, path).expect("topology in place");
}

#[test]
fn with_a_topology_packets_go_only_to_known_nodes_and_a_refresh_lets_new_ones_in() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let topology = dir.path().join("topology.json");
    write_topology(&topology, &["127.0.0.1"]);
    let known = Receiver::start_on("127.0.0.1:0");
    let unknown = Receiver::start_on("127.0.0.2:0");
    let node = TestNode::start(2, |c| {
        c.topology.source = topology.display().to_string();
        c.topology.refresh_interval = Duration::from_secs(1);
    });
    let mut sender = send(node.mix, &wire(&node, &known, 20));
    sender.write_all(&wire(&node, &unknown, 20)).expect("sent");
    known.wait_for(20, Duration::from_secs(10));
    common::mixnet::eventually(
        Duration::from_secs(10),
        "20 dropped as next_hop_unknown",
        || {
            let (counts, _) = node.totals();
            counts.dropped[nym_mixnode::accounting::DropReason::NextHopUnknown as usize] == 20
        },
    );
    assert_eq!(unknown.count(), 0, "nothing reached the unlisted address");
    assert_eq!(
        sum(&node, |s| s.known_addresses),
        2,
        "one address on each shard"
    );

    // The topology now lists 127.0.0.2 too: after a refresh its packets go through.
    write_topology(&topology, &["127.0.0.1", "127.0.0.2"]);
    common::mixnet::eventually(
        Duration::from_secs(10),
        "the refresh reached every shard",
        || sum(&node, |s| s.known_addresses) == 4,
    );
    sender.write_all(&wire(&node, &unknown, 20)).expect("sent");
    unknown.wait_for(20, Duration::from_secs(10));
    let (counts, _) = node.totals();
    assert_eq!(
        counts.dropped[nym_mixnode::accounting::DropReason::NextHopUnknown as usize],
        20
    );
    // A topology that stops reading keeps the last one read.
    std::fs::write(&topology, "not json").expect("written");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(sum(&node, |s| s.known_addresses), 4);
}

#[test]
fn a_topology_that_cannot_be_read_at_start_is_refused_naming_it() {
    use nym_mixnode::config::{Config, InitSettings, NodePaths};
    let home = tempfile::tempdir().expect("temporary directory");
    let missing = home.path().join("missing.json");
    let settings = InitSettings {
        id: "test".into(),
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        announce_host: None,
        mix_port: 0,
        verloc_port: 0,
        http_api_port: 0,
    };
    let mut config = Config::new(&settings, &NodePaths::new(home.path(), "test"));
    config.engine.cores = 1;
    config.topology.source = missing.display().to_string();
    let started = nym_mixnode::node::start(
        &config,
        nym_mixnode::keys::NodeKeys::generate().expect("keys"),
        Default::default(),
        nym_mixnode::node::NodeOptions { pin_shards: false },
    );
    let Err(error) = started else {
        panic!("the node started without its topology");
    };
    let message = error.to_string();
    assert!(message.contains("missing.json"), "{message}");
    assert!(message.contains("topology.source"), "{message}");
}
