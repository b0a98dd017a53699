//! Noise links end to end, on loopback: peers the topology lists with a Noise key must speak
//! Noise (responder and initiator), the others plain TCP; every way a peer can break a
//! handshake or a link closes only that connection and is counted by reason. The peers are
//! the node's own `noise::link` (nym-noise's own peers are in `compat/`).

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::mixnet::{frame, header, packet, Receiver, TestNode};
use common::noise_peer::{
    closed_by_node, connect_from, entry, handshake, noise_keys, send_sealed, write_topology,
    Answer, NoiseKeys, NoiseReceiver,
};
use nym_mixnode::framing::{SizeTag, Version};
use nym_mixnode::noise::framing::{Header, MessageKind, HEADER_LEN};
use nym_mixnode::noise::link::Handshake;
use nym_mixnode::noise::{Failure, NoiseCounts, Role};
use nym_mixnode::sphinx::RouteHop;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// `count` frames for `node` that end at `last`.
fn wire(node: &TestNode, last: RouteHop, count: usize, tag: &str) -> Vec<u8> {
    let h = header(Version::V8, SizeTag::Ack);
    (0..count)
        .flat_map(|i| {
            frame(
                h,
                &packet(
                    &[node.hop(Duration::ZERO), last],
                    SizeTag::Ack,
                    format!("{tag}{i}").as_bytes(),
                ),
            )
        })
        .collect()
}

fn noise_counts(node: &TestNode) -> NoiseCounts {
    node.node()
        .snapshots()
        .iter()
        .fold(NoiseCounts::default(), |sum, s| sum.plus(&s.noise))
}

fn wait_for_count(node: &TestNode, what: &str, f: impl Fn(&NoiseCounts) -> bool) -> NoiseCounts {
    let start = Instant::now();
    loop {
        let counts = noise_counts(node);
        if f(&counts) {
            return counts;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node whose topology is `entries`.
fn node_with(entries: Vec<nym_mixnode::topology::TopologyEntry>) -> (TestNode, tempfile::TempDir) {
    node_tuned(entries, |_| {})
}

/// A node whose topology is `entries`, its config edited by `tune`.
fn node_tuned(
    entries: Vec<nym_mixnode::topology::TopologyEntry>,
    tune: impl FnOnce(&mut nym_mixnode::config::Config),
) -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topology.json");
    write_topology(&path, entries);
    let node = TestNode::start(1, |c| {
        c.topology.source = path.display().to_string();
        tune(c);
    });
    (node, dir)
}

/// A Noise connection from `source` to the node, handshake done.
fn noise_sender(
    source: &str,
    me: NoiseKeys,
    node: &TestNode,
) -> (std::net::TcpStream, nym_mixnode::noise::link::Transport) {
    let mut stream = connect_from(ip(source), node.mix);
    let initiator = Handshake::initiator(&me.private, &node.noise_public);
    let transport = handshake(&mut stream, initiator).expect("the node answers the handshake");
    (stream, transport)
}

#[test]
fn noise_peers_get_noise_both_ways_and_plain_peers_plain_tcp() {
    let sender = noise_keys(20);
    let noise_hop = NoiseReceiver::start("127.0.0.3", noise_keys(30), Answer::Noise);
    let plain_hop = Receiver::start_on("127.0.0.5:0");
    let (node, _dir) = node_with(vec![
        entry(1, "127.0.0.2", 1789, Some(sender.public)),
        entry(
            2,
            "127.0.0.3",
            noise_hop.addr.port(),
            Some(noise_hop.noise.public),
        ),
        entry(3, "127.0.0.4", 1789, None),
        entry(4, "127.0.0.5", plain_hop.addr.port(), None),
    ]);

    // In over Noise from a keyed peer, out over Noise to a keyed next hop.
    let (mut stream, mut transport) = noise_sender("127.0.0.2", sender, &node);
    send_sealed(
        &mut stream,
        &mut transport,
        &wire(&node, noise_hop.hop(), 30, "n"),
    )
    .unwrap();
    assert_eq!(
        noise_hop.wait_for(30, Duration::from_secs(10)),
        30,
        "{:?} {:?}",
        node.totals(),
        noise_counts(&node)
    );
    assert_eq!(
        noise_hop
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // In plain from a peer listed without a key, out plain to a next hop without one; and a
    // keyed peer's packets to the plain next hop go plain.
    let mut plain = connect_from(ip("127.0.0.4"), node.mix);
    plain
        .write_all(&wire(&node, plain_hop.hop(), 20, "p"))
        .unwrap();
    send_sealed(
        &mut stream,
        &mut transport,
        &wire(&node, plain_hop.hop(), 5, "m"),
    )
    .unwrap();
    assert_eq!(plain_hop.wait_for(25, Duration::from_secs(10)).len(), 25);
    let counts = wait_for_count(&node, "both handshakes", |c| c.handshakes == [1, 1]);
    assert_eq!(counts.failures, [[0; Failure::COUNT]; 2], "{counts:?}");
    let (totals, _) = node.totals();
    assert_eq!(totals.forwarded, 55);
    assert_eq!(totals.dropped_total(), 0);
    node.assert_shards_balance();
}

#[test]
fn every_broken_handshake_or_message_closes_only_its_connection_and_is_counted() {
    let peer = noise_keys(21);
    let hop = NoiseReceiver::start("127.0.0.3", noise_keys(31), Answer::Noise);
    // Failures one after the other from one address: no penalty in between (its own test).
    let (node, _dir) = node_tuned(
        vec![
            entry(1, "127.0.0.2", 1789, Some(peer.public)),
            entry(2, "127.0.0.3", hop.addr.port(), Some(hop.noise.public)),
        ],
        |c| c.engine.noise_failure_penalty = Duration::ZERO,
    );
    let failures = |role: Role, failure: Failure| noise_counts(&node).failures_of(role, failure);
    let handshake_header = |len: u16| {
        Header {
            kind: MessageKind::Handshake,
            len,
        }
        .encode()
    };

    // A good link stays open through everything below.
    let (mut good, mut good_transport) = noise_sender("127.0.0.2", peer, &node);

    // Stalls mid-handshake: half a first message, then nothing.
    let started = Instant::now();
    let mut stalled = connect_from(ip("127.0.0.2"), node.mix);
    stalled.write_all(&handshake_header(48)).unwrap();
    stalled.write_all(&[7; 20]).unwrap();
    assert!(closed_by_node(&mut stalled, Duration::from_secs(5)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "closed after {waited:?}, the handshake timeout is 1.5 s"
    );
    wait_for_count(&node, "the timeout", |c| {
        c.failures_of(Role::Responder, Failure::Timeout) == 1
    });

    // Junk of the right length with a handshake header.
    let mut junk = connect_from(ip("127.0.0.2"), node.mix);
    junk.write_all(&handshake_header(48)).unwrap();
    junk.write_all(&[0x5a; 48]).unwrap();
    assert!(closed_by_node(&mut junk, Duration::from_secs(3)));

    // The wrong responder key (the PSK follows it): the first message fails.
    let mut wrong_key = connect_from(ip("127.0.0.2"), node.mix);
    let other = noise_keys(99);
    assert!(handshake(
        &mut wrong_key,
        Handshake::initiator(&peer.private, &other.public)
    )
    .is_err());
    // The right key with the wrong PSK: the third message fails (the initiator only learns
    // when the node closes).
    let mut wrong_psk = connect_from(ip("127.0.0.2"), node.mix);
    let _ = handshake(
        &mut wrong_psk,
        Handshake::initiator_with_psk(&peer.private, &node.noise_public, &[9; 32]),
    );
    assert!(closed_by_node(&mut wrong_psk, Duration::from_secs(3)));
    wait_for_count(&node, "three bad handshakes", |c| {
        c.failures_of(Role::Responder, Failure::BadHandshake) == 3
    });

    // Another pattern (IKpsk2 is 2), and plain frames from a peer that must speak Noise.
    let mut ik = connect_from(ip("127.0.0.2"), node.mix);
    let mut ik_header = handshake_header(48);
    ik_header[1] = 2;
    ik.write_all(&ik_header).unwrap();
    assert!(closed_by_node(&mut ik, Duration::from_secs(3)));
    let mut plain = connect_from(ip("127.0.0.2"), node.mix);
    plain.write_all(&wire(&node, hop.hop(), 3, "x")).unwrap();
    assert!(closed_by_node(&mut plain, Duration::from_secs(3)));
    wait_for_count(&node, "the wrong patterns", |c| {
        c.failures_of(Role::Responder, Failure::WrongPattern)
            + c.failures_of(Role::Responder, Failure::BadHandshake)
            == 5
    });

    // A good handshake, then a data message that does not decrypt.
    let (mut tampered, mut transport) = noise_sender("127.0.0.2", peer, &node);
    let mut sealed = Vec::new();
    transport
        .seal(&wire(&node, hop.hop(), 1, "t"), &mut sealed)
        .unwrap();
    sealed[HEADER_LEN + 10] ^= 1;
    tampered.write_all(&sealed).unwrap();
    assert!(closed_by_node(&mut tampered, Duration::from_secs(3)));
    wait_for_count(&node, "the decrypt failure", |c| {
        c.failures_of(Role::Responder, Failure::Decrypt) == 1
    });
    // A handshake message after the handshake.
    let (mut late, _) = noise_sender("127.0.0.2", peer, &node);
    late.write_all(&handshake_header(48)).unwrap();
    late.write_all(&[1; 48]).unwrap();
    assert!(closed_by_node(&mut late, Duration::from_secs(3)));
    wait_for_count(&node, "the bad message", |c| {
        c.failures_of(Role::Responder, Failure::BadMessage) == 1
    });

    // The good link was never touched, and nothing reached the next hop from the bad ones.
    send_sealed(
        &mut good,
        &mut good_transport,
        &wire(&node, hop.hop(), 10, "g"),
    )
    .unwrap();
    assert_eq!(
        hop.wait_for(10, Duration::from_secs(10)),
        10,
        "{:?} {:?}",
        node.totals(),
        noise_counts(&node)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(hop.count(), 10);
    let counts = noise_counts(&node);
    assert_eq!(counts.handshakes[Role::Responder as usize], 3, "{counts:?}");
    assert_eq!(failures(Role::Responder, Failure::Closed), 0);
    node.assert_shards_balance();
}

#[test]
fn an_address_that_failed_a_handshake_waits_out_its_penalty_before_the_next() {
    let peer = noise_keys(23);
    let (node, _dir) = node_with(vec![entry(1, "127.0.0.8", 1789, Some(peer.public))]);
    let junk = |node: &TestNode| {
        let mut s = connect_from(ip("127.0.0.8"), node.mix);
        let mut bytes = Header {
            kind: MessageKind::Handshake,
            len: 48,
        }
        .encode()
        .to_vec();
        bytes.extend_from_slice(&[0x5a; 48]);
        s.write_all(&bytes).unwrap();
        assert!(closed_by_node(&mut s, Duration::from_secs(3)));
    };
    let failed = Instant::now();
    junk(&node);
    wait_for_count(&node, "the junk", |c| {
        c.failures_of(Role::Responder, Failure::BadHandshake) == 1
    });
    // Within the penalty (1 s): closed before any handshake work, even a good one.
    let mut early = connect_from(ip("127.0.0.8"), node.mix);
    let refused = handshake(
        &mut early,
        Handshake::initiator(&peer.private, &node.noise_public),
    );
    assert!(refused.is_err());
    assert!(failed.elapsed() < Duration::from_secs(1), "test too slow");
    wait_for_count(&node, "the penalised attempt", |c| {
        c.failures_of(Role::Responder, Failure::Penalised) == 1
    });
    // After it, a good handshake goes through and forgives the address.
    std::thread::sleep(
        Duration::from_secs(1).saturating_sub(failed.elapsed()) + Duration::from_millis(100),
    );
    let (_stream, _transport) = noise_sender("127.0.0.8", peer, &node);
    wait_for_count(&node, "the handshake after the penalty", |c| {
        c.handshakes[Role::Responder as usize] == 1
    });
    let counts = noise_counts(&node);
    assert_eq!(
        counts.failures_of(Role::Responder, Failure::BadHandshake),
        1
    );
    assert_eq!(counts.failures_of(Role::Responder, Failure::Penalised), 1);
}

#[test]
fn as_initiator_a_stalled_or_wrongly_keyed_responder_fails_only_that_link() {
    // The topology says 127.0.0.3 has one key; it holds another. 127.0.0.6 never answers.
    let wrong = NoiseReceiver::start("127.0.0.3", noise_keys(32), Answer::Noise);
    let stalled = NoiseReceiver::start("127.0.0.6", noise_keys(33), Answer::Stall);
    let good = NoiseReceiver::start("127.0.0.7", noise_keys(34), Answer::Noise);
    let (node, _dir) = node_with(vec![
        entry(1, "127.0.0.4", 1789, None),
        entry(
            2,
            "127.0.0.3",
            wrong.addr.port(),
            Some(noise_keys(40).public),
        ),
        entry(
            3,
            "127.0.0.6",
            stalled.addr.port(),
            Some(stalled.noise.public),
        ),
        entry(4, "127.0.0.7", good.addr.port(), Some(good.noise.public)),
    ]);
    let mut sender = connect_from(ip("127.0.0.4"), node.mix);
    sender.write_all(&wire(&node, wrong.hop(), 3, "w")).unwrap();
    sender
        .write_all(&wire(&node, stalled.hop(), 3, "s"))
        .unwrap();
    sender.write_all(&wire(&node, good.hop(), 3, "g")).unwrap();
    assert_eq!(
        good.wait_for(3, Duration::from_secs(10)),
        3,
        "{:?} {:?}",
        node.totals(),
        noise_counts(&node)
    );
    let counts = wait_for_count(&node, "both initiator failures", |c| {
        c.failures_of(Role::Initiator, Failure::Timeout) >= 1
            && c.failures_of(Role::Initiator, Failure::Closed)
                + c.failures_of(Role::Initiator, Failure::BadHandshake)
                >= 1
    });
    assert_eq!(counts.handshakes[Role::Initiator as usize], 1, "{counts:?}");
    assert_eq!(wrong.count() + stalled.count(), 0);
    assert!(
        stalled
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    node.assert_shards_balance();
}

#[test]
fn with_noise_off_a_keyed_peer_speaks_plain_tcp_and_no_key_is_announced() {
    let plain_hop = Receiver::start_on("127.0.0.5:0");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topology.json");
    write_topology(
        &path,
        vec![
            entry(1, "127.0.0.2", 1789, Some(noise_keys(22).public)),
            entry(2, "127.0.0.5", plain_hop.addr.port(), Some([5; 32])),
        ],
    );
    let node = TestNode::start(1, |c| {
        c.topology.source = path.display().to_string();
        c.engine.noise = nym_mixnode::config::NoiseMode::Off;
    });
    let mut plain = connect_from(ip("127.0.0.2"), node.mix);
    plain
        .write_all(&wire(&node, plain_hop.hop(), 5, "o"))
        .unwrap();
    assert_eq!(plain_hop.wait_for(5, Duration::from_secs(10)).len(), 5);
    assert_eq!(noise_counts(&node), NoiseCounts::default());
    let api = node.node().addresses.http_api;
    let body = common::http_get(api, "/api/v1/host-information")
        .expect("answers")
        .1;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["data"]["keys"]["x25519_versioned_noise"].is_null(),
        "{json}"
    );
    let _: SocketAddr = api;
}

#[test]
fn the_nodes_own_loops_speak_noise_once_its_topology_lists_it_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topology.json");
    write_topology(&path, vec![entry(9, "127.0.0.9", 1789, None)]);
    let node = TestNode::start(1, |c| {
        c.topology.source = path.display().to_string();
        c.topology.refresh_interval = Duration::from_secs(1);
        c.monitor.enabled = true;
        c.monitor.interval = Duration::from_secs(1);
        c.monitor.loops_per_interval = 2;
        c.monitor.mean_delay = Duration::from_millis(10);
    });
    // Now the topology lists the node itself with its Noise key: connections from its own
    // address, its monitor's included, must speak Noise.
    write_topology(
        &path,
        vec![entry(
            1,
            "127.0.0.1",
            node.mix.port(),
            Some(node.noise_public),
        )],
    );
    let looped = || node.totals().0.looped;
    wait_for_count(&node, "the monitor's Noise handshake", |c| {
        c.handshakes[Role::Responder as usize] >= 1
    });
    let before = looped();
    let start = Instant::now();
    while looped() < before + 2 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "loops come back over Noise: {:?}",
            noise_counts(&node)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = noise_counts(&node);
    assert_eq!(counts.failures, [[0; Failure::COUNT]; 2], "{counts:?}");
}
