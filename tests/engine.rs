//! The packet engine over real sockets on 127.0.0.1: three nodes in a row, replays, and bad
//! input of every kind. Packets are built with sphinx-packet's builder, as a client would.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::mixnet::*;
use nym_mixnode::accounting::DropReason;
use nym_mixnode::framing::{PacketType, SizeTag, Version};
use nym_mixnode::sphinx::RouteHop;

fn dropped(node: &TestNode, reason: DropReason) -> u64 {
    node.totals().0.dropped[reason as usize]
}

/// received = forwarded + dropped + in flight, and in flight is what the gauges hold.
fn assert_balanced_and_idle(node: &TestNode, what: &str) {
    eventually(Duration::from_secs(10), what, || {
        let (c, gauges) = node.totals();
        c.in_flight() == 0 && gauges == 0 && node.handoffs_in_channels() == 0
    });
    node.assert_shards_balance();
}

#[test]
fn three_nodes_deliver_every_packet_intact_after_its_delays_and_drop_replays() {
    let receiver = Receiver::start();
    let nodes: Vec<TestNode> = (0..3).map(|_| TestNode::start(2, |_| {})).collect();
    let count = 120usize;
    let mut sent = HashMap::new();
    let mut wire = Vec::new();
    let mut replays = Vec::new();
    let versions = [
        (Version::V8, SizeTag::Regular),
        (Version::V7, SizeTag::Ack),
        (Version::V8, SizeTag::Extended8),
    ];
    for i in 0..count {
        let delays =
            [(i % 7) as u64 * 3, (i % 5) as u64 * 4, (i % 3) as u64 * 5].map(Duration::from_millis);
        let route: Vec<RouteHop> = nodes
            .iter()
            .zip(delays)
            .map(|(n, d)| n.hop(d))
            .chain([receiver.hop()])
            .collect();
        let (version, size) = versions[i % versions.len()];
        let message = format!("message {i}").into_bytes();
        let bytes = packet(&route, size, &message);
        let framed = frame(header(version, size), &bytes);
        if i % 10 == 0 {
            replays.push(framed.clone());
        }
        wire.extend_from_slice(&framed);
        sent.insert(message, (delays.iter().sum::<Duration>(), version, size));
    }
    let start = Instant::now();
    let mut conn = send(nodes[0].mix, &wire);
    // Replays on the same connection and on a second one (which may land on another shard).
    let replay_bytes: Vec<u8> = replays.concat();
    conn.write_all(&replay_bytes).unwrap();
    let _second = send(nodes[0].mix, &replay_bytes);

    // Mid-run, while packets are held, queued and crossing shards: every shard balances.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut checks = 0;
    while receiver.count() < count && Instant::now() < deadline {
        for node in &nodes {
            node.assert_shards_balance();
        }
        checks += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("balance checked {checks} times mid-run");
    let arrivals = receiver.wait_for(count, Duration::from_secs(30));
    assert_eq!(arrivals.len(), count, "every packet arrives");
    assert_eq!(*receiver.bad.lock().unwrap(), 0);
    for a in &arrivals {
        let (delay_sum, version, size) = sent
            .get(&a.message)
            .expect("message intact and one we sent");
        assert!(
            a.at.duration_since(start) >= *delay_sum,
            "arrived before its delays"
        );
        assert_eq!(
            (a.header.version, a.header.size_tag, a.header.packet_type),
            (*version, *size, PacketType::Sphinx),
            "re-framed as it came"
        );
    }
    let mut unique: Vec<_> = arrivals.iter().map(|a| a.message.clone()).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), count, "no packet arrives twice");

    let replay_count = 2 * replays.len() as u64;
    eventually(Duration::from_secs(5), "replays counted", || {
        dropped(&nodes[0], DropReason::Replay) == replay_count
    });
    for (i, node) in nodes.iter().enumerate() {
        // Settled (nothing held, queued, written or crossing shards): every replay is counted
        // as dropped and nothing more can reach the receiver.
        assert_balanced_and_idle(node, "nodes settle");
        let (c, _) = node.totals();
        let expect_received = count as u64 + if i == 0 { replay_count } else { 0 };
        assert_eq!(c.received, expect_received, "node {i} received");
        assert_eq!(c.forwarded, count as u64, "node {i} forwarded");
        assert_eq!(
            c.dropped_total(),
            expect_received - count as u64,
            "node {i} dropped only replays"
        );
    }
    assert_eq!(receiver.count(), count, "no replay gets through");
}

/// Counts the whole frames of `frame_len` bytes that arrive on every connection `listener`
/// accepts, in threads that end with the test process.
fn frames_arriving_at(
    listener: TcpListener,
    frame_len: usize,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = arrived.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut frame = vec![0u8; frame_len];
                while std::io::Read::read_exact(&mut conn, &mut frame).is_ok() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    arrived
}

/// `count` Ack frames, each a packet through `node` (no delay) to `receiver`, with the
/// messages "`label` 0", "`label` 1", ...
fn frames_through(node: &TestNode, receiver: &Receiver, count: usize, label: &str) -> Vec<u8> {
    let h = header(Version::V8, SizeTag::Ack);
    (0..count)
        .flat_map(|i| {
            frame(
                h,
                &packet(
                    &[node.hop(Duration::ZERO), receiver.hop()],
                    SizeTag::Ack,
                    format!("{label} {i}").as_bytes(),
                ),
            )
        })
        .collect()
}

/// A node whose next hop is the receiver, with a test-sized config.
fn single(tune: impl FnOnce(&mut nym_mixnode::config::Config)) -> (TestNode, Receiver) {
    (TestNode::start(2, tune), Receiver::start())
}

#[test]
fn garbage_wrong_version_and_bad_types_close_the_stream_and_are_counted() {
    let (node, receiver) = single(|_| {});
    // Garbage: an unknown version byte.
    let mut junk = send(node.mix, &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    eventually(Duration::from_secs(5), "garbage counted", || {
        dropped(&node, DropReason::BadFrame) == 1
    });
    common::assert_closed_by_peer(&mut junk, Duration::from_secs(10), "a garbage stream");
    // Version 9, an unknown size tag, an unknown packet type.
    for bad in [[9u8, 1, 0, 0], [8, 42, 0, 0], [8, 1, 7, 0], [8, 1, 0, 9]] {
        let _s = send(node.mix, &bad);
    }
    eventually(Duration::from_secs(5), "bad headers counted", || {
        dropped(&node, DropReason::BadFrame) == 5
    });
    // An Outfox frame of the right length is skipped and counted; the stream goes on.
    let outfox_len = SizeTag::OutfoxRegular.packet_len();
    let mut bytes = vec![
        8u8,
        SizeTag::OutfoxRegular as u8,
        PacketType::Outfox as u8,
        0,
    ];
    bytes.extend(std::iter::repeat_n(0u8, outfox_len));
    let good = frame(
        header(Version::V8, SizeTag::Regular),
        &packet(
            &[node.hop(Duration::ZERO), receiver.hop()],
            SizeTag::Regular,
            b"after outfox",
        ),
    );
    bytes.extend_from_slice(&good);
    let _s = send(node.mix, &bytes);
    receiver.wait_for(1, Duration::from_secs(10));
    assert_eq!(receiver.count(), 1, "the node keeps serving after junk");
    assert_eq!(dropped(&node, DropReason::UnsupportedPacketType), 1);
    assert_balanced_and_idle(&node, "settles");
    assert_eq!(node.totals().0.received, 7);
}

#[test]
fn truncated_frame_times_out_and_counts_nothing_received() {
    let (node, _receiver) = single(|c| c.engine.read_timeout = Duration::from_millis(300));
    let bytes = frame(header(Version::V8, SizeTag::Regular), &[0u8; 100]);
    let mut s = send(node.mix, &bytes);
    common::assert_closed_by_peer(&mut s, Duration::from_secs(10), "a stalled half frame");
    eventually(Duration::from_secs(2), "read timeout counted", || {
        node.node()
            .snapshots()
            .iter()
            .map(|s| s.read_timeouts)
            .sum::<u64>()
            == 1
    });
    assert_eq!(node.totals().0.received, 0, "half a frame is not a packet");
}

#[test]
fn bad_packets_are_dropped_with_their_reason_and_long_delays_are_clamped() {
    let (node, receiver) = single(|c| c.engine.delay_max = Duration::from_millis(400));
    let h = header(Version::V8, SizeTag::Regular);
    let to_receiver = [node.hop(Duration::ZERO), receiver.hop()];
    let mut stream = Vec::new();

    // A flipped bit in the header's routing information: the MAC fails.
    let mut flipped = packet(&to_receiver, SizeTag::Regular, b"flipped");
    flipped[100] ^= 0x01;
    stream.extend(frame(h, &flipped));
    // A group element that is not ours: the MAC fails too.
    let mut alpha = packet(&to_receiver, SizeTag::Regular, b"alpha");
    alpha[0] ^= 0x40;
    stream.extend(frame(h, &alpha));
    // A final hop at a mixnode.
    stream.extend(frame(
        h,
        &packet(&[node.hop(Duration::ZERO)], SizeTag::Regular, b"final"),
    ));
    // A delay over the cap: held for the cap (as nym-node does), not dropped.
    stream.extend(frame(
        h,
        &packet(
            &[node.hop(Duration::from_secs(11)), receiver.hop()],
            SizeTag::Regular,
            b"slow",
        ),
    ));
    // A next-hop address that encodes nothing valid.
    stream.extend(frame(h, &bad_address_packet(&node)));
    // And one good packet.
    stream.extend(frame(h, &packet(&to_receiver, SizeTag::Regular, b"good")));
    let _s = send(node.mix, &stream);

    let sent_at = Instant::now();
    let arrivals = receiver.wait_for(2, Duration::from_secs(10));
    eventually(Duration::from_secs(5), "all six counted", || {
        node.totals().0.received == 6
    });
    assert_balanced_and_idle(&node, "settles");
    assert_eq!(dropped(&node, DropReason::BadPacket), 2);
    assert_eq!(dropped(&node, DropReason::FinalHop), 1);
    assert_eq!(dropped(&node, DropReason::BadNextHopAddress), 1);
    assert_eq!(node.totals().0.dropped_total(), 4);
    assert_eq!(node.totals().0.forwarded, 2);
    let clamped: u64 = node
        .node()
        .snapshots()
        .iter()
        .map(|s| s.delays_clamped)
        .sum();
    assert_eq!(clamped, 1);
    let mut messages: Vec<&[u8]> = arrivals.iter().map(|a| a.message.as_slice()).collect();
    messages.sort();
    assert_eq!(messages, [b"good".as_slice(), b"slow".as_slice()]);
    // The slow packet waited for the cap (400 ms), far less than the 11 s it asked for.
    assert!(sent_at.elapsed() < Duration::from_secs(10));
}

/// A packet whose next hop address bytes are not `[4|6][port][ip]`.
fn bad_address_packet(node: &TestNode) -> Vec<u8> {
    use sphinx_packet::header::delays::Delay;
    use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
    let bogus_key = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random());
    let route = [
        Node::new(
            NodeAddressBytes::from_bytes(nym_mixnode::sphinx::encode_node_address(node.mix)),
            node.public_key,
        ),
        Node::new(NodeAddressBytes::from_bytes([9u8; 32]), bogus_key),
    ];
    let destination = Destination::new(DestinationAddressBytes::from_bytes([1u8; 32]), [0u8; 16]);
    sphinx_packet::SphinxPacketBuilder::new()
        .with_payload_size(SizeTag::Regular.sphinx_payload_len())
        .build_packet(
            b"bad address",
            &route,
            &destination,
            &[Delay::new_from_nanos(0), Delay::new_from_nanos(0)],
        )
        .unwrap()
        .to_bytes()
}

#[test]
fn a_dead_next_hop_costs_no_queue_its_drops_are_counted_others_are_served_and_it_heals() {
    let (mut node, receiver) = single(|c| {
        c.engine.backoff_initial = Duration::from_secs(4);
        c.engine.backoff_max = Duration::from_secs(8);
    });
    let dead: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead_hop = RouteHop {
        address: dead,
        public_key: receiver.public_key,
        delay: Duration::ZERO,
    };
    let h = header(Version::V8, SizeTag::Ack);
    let to_dead = |message: &str| {
        frame(
            h,
            &packet(
                &[node.hop(Duration::ZERO), dead_hop],
                SizeTag::Ack,
                message.as_bytes(),
            ),
        )
    };
    // The first packet finds the next hop refusing: dropped as unreachable, backoff starts.
    let _s = send(node.mix, &to_dead("0"));
    eventually(Duration::from_secs(5), "first unreachable", || {
        dropped(&node, DropReason::NextHopUnreachable) == 1
    });
    let failed_at = Instant::now();
    // While it backs off, packets for it are dropped at once: nothing is queued for it.
    let burst: Vec<u8> = (0..30).flat_map(|i| to_dead(&format!("b{i}"))).collect();
    let _s2 = send(node.mix, &burst);
    eventually(Duration::from_secs(10), "burst dropped", || {
        dropped(&node, DropReason::NextHopUnreachable) == 31
    });
    assert!(
        failed_at.elapsed() < Duration::from_secs(4),
        "the burst must arrive within the backoff for this test to mean anything"
    );
    assert_eq!(node.totals().0.received, 31);
    assert_eq!(
        node.totals().1,
        0,
        "nothing held or queued for a dead next hop"
    );
    // Other next hops are served meanwhile.
    let _s3 = send(
        node.mix,
        &frame(
            h,
            &packet(
                &[node.hop(Duration::ZERO), receiver.hop()],
                SizeTag::Ack,
                b"alive",
            ),
        ),
    );
    assert_eq!(receiver.wait_for(1, Duration::from_secs(10)).len(), 1);
    // The next hop comes back after the backoff: packets for it flow again.
    let revived = TcpListener::bind(dead).expect("the dead address is free again");
    let wait = Duration::from_secs(4).saturating_sub(failed_at.elapsed());
    std::thread::sleep(wait + Duration::from_millis(200));
    let later: Vec<u8> = (0..5).flat_map(|i| to_dead(&format!("l{i}"))).collect();
    let _s4 = send(node.mix, &later);
    // Each shard that owns some of the five packets' tags connects on its own.
    let frame_len = h.encoded_len() + SizeTag::Ack.packet_len();
    let arrived = frames_arriving_at(revived, frame_len);
    eventually(Duration::from_secs(10), "five frames arrive", || {
        arrived.load(std::sync::atomic::Ordering::Relaxed) == 5
    });
    assert_balanced_and_idle(&node, "settles");
    let c = node.totals().0;
    assert_eq!((c.received, c.forwarded), (37, 6));
    let finals = node.shutdown();
    let mut total = nym_mixnode::accounting::PacketCounts::default();
    for f in &finals {
        assert_eq!(f.in_flight(), 0, "each shard ends empty: {f:?}");
        total.add(&f.packets);
    }
    assert_eq!(total.received, total.forwarded + total.dropped_total());
}

#[test]
fn connections_over_the_limit_evict_the_longest_silent_and_the_cap_holds() {
    let (node, _receiver) = single(|c| c.engine.connections_inbound_max = 2);
    let conns: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(node.mix).unwrap())
        .collect();
    eventually(Duration::from_secs(5), "evictions counted", || {
        let s = node.node().snapshots();
        s.iter().map(|s| s.connections_evicted).sum::<u64>() >= 6
            && s.iter().map(|s| s.connections_inbound).sum::<u64>() <= 2
    });
    let refused: u64 = node
        .node()
        .snapshots()
        .iter()
        .map(|s| s.connections_refused)
        .sum();
    assert_eq!(
        refused, 0,
        "a new connection is taken, an old silent one closed"
    );
    drop(conns);
}

#[test]
fn shutdown_forwards_what_falls_due_within_the_drain_and_drops_the_rest() {
    let (mut node, receiver) = single(|c| c.engine.drain_timeout = Duration::from_millis(800));
    let h = header(Version::V8, SizeTag::Ack);
    let mut wire = Vec::new();
    for i in 0..10 {
        let soon = [node.hop(Duration::from_millis(200)), receiver.hop()];
        wire.extend(frame(
            h,
            &packet(&soon, SizeTag::Ack, format!("soon {i}").as_bytes()),
        ));
        let late = [node.hop(Duration::from_secs(8)), receiver.hop()];
        wire.extend(frame(
            h,
            &packet(&late, SizeTag::Ack, format!("late {i}").as_bytes()),
        ));
    }
    let _s = send(node.mix, &wire);
    eventually(Duration::from_secs(10), "all held", || {
        let snaps = node.node().snapshots();
        snaps.iter().map(|s| s.held).sum::<u64>() == 20
    });
    let mix = node.mix;
    let finals = node.shutdown();
    let mut total = nym_mixnode::accounting::PacketCounts::default();
    for f in &finals {
        assert_eq!(f.in_flight(), 0, "each shard ends empty: {f:?}");
        total.add(&f.packets);
    }
    assert_eq!(total.received, 20);
    assert_eq!(
        total.forwarded, 10,
        "the packets due within the drain go out"
    );
    assert_eq!(total.dropped[DropReason::Shutdown as usize], 10);
    let arrivals = receiver.wait_for(10, Duration::from_secs(5));
    assert_eq!(arrivals.len(), 10);
    assert!(arrivals.iter().all(|a| a.message.starts_with(b"soon")));
    assert!(
        std::net::TcpStream::connect(mix).is_err(),
        "no longer accepting"
    );
}

#[test]
fn ipv6_nodes_bind_and_forward_to_ipv6_next_hops() {
    let receiver = Receiver::start_on("[::1]:0");
    let host: std::net::IpAddr = "::1".parse().unwrap();
    let nodes: Vec<TestNode> = (0..2)
        .map(|_| TestNode::start_on(host, 2, |_| {}))
        .collect();
    for n in &nodes {
        assert!(n.mix.is_ipv6(), "bound {}", n.mix);
    }
    let count = 20usize;
    let mut wire = Vec::new();
    for i in 0..count {
        let route: Vec<RouteHop> = nodes
            .iter()
            .map(|n| n.hop(Duration::from_millis(2)))
            .chain([receiver.hop()])
            .collect();
        let message = format!("v6 {i}").into_bytes();
        let size = SizeTag::Regular;
        wire.extend_from_slice(&frame(
            header(Version::V8, size),
            &packet(&route, size, &message),
        ));
    }
    let _conn = send(nodes[0].mix, &wire);
    let arrivals = receiver.wait_for(count, Duration::from_secs(20));
    assert_eq!(arrivals.len(), count, "every packet arrives over IPv6");
    assert_eq!(*receiver.bad.lock().unwrap(), 0);
    for n in &nodes {
        assert_eq!(n.totals().0.forwarded, count as u64);
    }
}

/// Far more distinct packets than the replay filter is sized for: the filter turns its
/// generations over instead of wearing out, so fresh packets keep passing and recent ones are
/// still caught as replays.
#[test]
fn a_small_replay_filter_keeps_passing_fresh_packets_and_catching_recent_replays() {
    // The soak run sets more: `MIXNODE_SOAK_PACKETS=100000 cargo test --release --test engine
    // small_replay -- --nocapture`.
    let packets_wanted: usize = std::env::var("MIXNODE_SOAK_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6_000);
    let filter_packets: u64 = std::env::var("MIXNODE_SOAK_FILTER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let (packets, replayed) = (packets_wanted, (filter_packets / 2) as usize);
    let (node, receiver) = single(|c| c.engine.replay_filter_packets_max = Some(filter_packets));
    let h = header(Version::V8, SizeTag::Ack);
    let frames: Vec<Vec<u8>> = (0..packets)
        .map(|i| {
            frame(
                h,
                &packet(
                    &[node.hop(Duration::ZERO), receiver.hop()],
                    SizeTag::Ack,
                    format!("{i}").as_bytes(),
                ),
            )
        })
        .collect();
    let _s = send(node.mix, &frames.concat());
    eventually(Duration::from_secs(120), "all counted", || {
        let (c, gauges) = node.totals();
        c.received == packets as u64 && c.in_flight() == 0 && gauges == 0
    });
    let c = node.totals().0;
    let turned: u64 = node
        .node()
        .snapshots()
        .iter()
        .map(|s| s.replay_filter_generations_turned)
        .sum();
    eprintln!(
        "{} of {packets} forwarded, {} taken for replays, generations turned {turned}",
        c.forwarded,
        c.dropped[DropReason::Replay as usize]
    );
    assert!(turned >= 4, "the filter turned over: {turned}");
    // At 1e-5 per generation, 6,000 packets expect well under one false positive.
    assert!(
        c.forwarded as usize * 1000 >= packets * 999,
        "{} of {packets} forwarded",
        c.forwarded
    );
    // The most recent packets, sent again: every one is a replay.
    let replays_before = c.dropped[DropReason::Replay as usize];
    let _r = send(node.mix, &frames[packets - replayed..].concat());
    eventually(Duration::from_secs(60), "replays counted", || {
        node.totals().0.received == (packets + replayed) as u64
    });
    assert_balanced_and_idle(&node, "settles");
    let c = node.totals().0;
    assert_eq!(
        c.dropped[DropReason::Replay as usize] - replays_before,
        replayed as u64,
        "every recent packet sent again is a replay"
    );
}

/// Copies of one packet arriving at once on connections that different shards own: exactly
/// one copy is mixed, every other is a replay, and no copy reaches the next hop twice. Each
/// sender thread writes every packet in the same order on its own connection, all released by
/// one barrier, so the copies of each packet are read by different shards within microseconds
/// of each other, many times over.
#[test]
fn copies_racing_on_connections_of_different_shards_pass_exactly_once() {
    // Two shards: what the node runs on a 2-core machine (it runs at most one per CPU).
    const SHARDS: usize = 2;
    const SENDERS: usize = 6;
    const PACKETS: usize = 150;
    let (node, receiver) = (TestNode::start(SHARDS, |_| {}), Receiver::start());
    // Open connections until at least two shards own some (SO_REUSEPORT spreads them by a
    // hash of the addresses, so a few tries suffice).
    let mut connections = Vec::new();
    let mut spread = 0;
    for _ in 0..64 {
        let stream = std::net::TcpStream::connect(node.mix).unwrap();
        stream.set_nodelay(true).unwrap();
        connections.push(stream);
        if connections.len() < SENDERS {
            continue;
        }
        eventually(Duration::from_secs(5), "connections accepted", || {
            let accepted: u64 = node
                .node()
                .snapshots()
                .iter()
                .map(|s| s.connections_inbound)
                .sum();
            accepted == connections.len() as u64
        });
        spread = node
            .node()
            .snapshots()
            .iter()
            .filter(|s| s.connections_inbound > 0)
            .count();
        if spread >= 2 {
            break;
        }
    }
    assert!(spread >= 2, "the connections landed on {spread} shard(s)");
    let wire = frames_through(&node, &receiver, PACKETS, "race");
    let copies = connections.len();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(copies));
    let senders: Vec<_> = connections
        .into_iter()
        .map(|mut stream| {
            let (barrier, wire) = (barrier.clone(), wire.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // One frame per write, so that the shards read the copies side by side
                // instead of one connection's whole burst first.
                for chunk in wire.chunks(wire.len() / PACKETS) {
                    stream.write_all(chunk).unwrap();
                }
                stream
            })
        })
        .collect();
    let _streams: Vec<_> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let total = (PACKETS * copies) as u64;
    eventually(Duration::from_secs(120), "every copy counted", || {
        let (c, gauges) = node.totals();
        c.received == total && c.in_flight() == 0 && gauges == 0
    });
    assert_balanced_and_idle(&node, "settles");
    let arrivals = receiver.wait_for(PACKETS, Duration::from_secs(10));
    let c = node.totals().0;
    let read_by: Vec<u64> = node
        .node()
        .snapshots()
        .iter()
        .map(|s| s.counts.packets.received)
        .collect();
    eprintln!(
        "{copies} copies of {PACKETS} packets on {spread} shards (frames read per shard {read_by:?}): \
         {} forwarded, {} replays",
        c.forwarded,
        c.dropped[DropReason::Replay as usize]
    );
    assert!(
        read_by.iter().filter(|&&n| n > 0).count() >= 2,
        "copies were read by more than one shard: {read_by:?}"
    );
    assert_eq!(c.forwarded, PACKETS as u64, "exactly one copy of each");
    assert_eq!(
        c.dropped[DropReason::Replay as usize],
        total - PACKETS as u64,
        "every other copy is a replay"
    );
    assert_eq!(c.dropped_total(), total - PACKETS as u64);
    // Give a second copy time to arrive, if one had got through.
    std::thread::sleep(Duration::from_millis(200));
    let arrivals_now = receiver.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals_now.len(), PACKETS, "{} arrivals", arrivals.len());
    let mut unique: Vec<_> = arrivals_now.iter().map(|a| a.message.clone()).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), PACKETS, "no packet arrives twice");
}

/// With room for one packet in flight to each shard, a read's batch for the other shard is
/// cut to what fits: that part crosses, each packet of the rest is dropped as handoff_full,
/// and every packet is accounted for.
#[test]
fn a_batch_larger_than_the_cross_shard_room_sends_what_fits_and_counts_the_rest() {
    const PACKETS: usize = 300;
    let (node, receiver) = single(|c| c.engine.cross_shard_packets_max = 1);
    let wire = frames_through(&node, &receiver, PACKETS, "room");
    // One connection, written at once: its shard reads many frames per read.
    let _s = send(node.mix, &wire);
    eventually(Duration::from_secs(60), "every packet counted", || {
        let (c, gauges) = node.totals();
        c.received == PACKETS as u64 && c.in_flight() == 0 && gauges == 0
    });
    assert_balanced_and_idle(&node, "settles");
    let c = node.totals().0;
    let full = c.dropped[DropReason::HandoffFull as usize];
    let handed: u64 = node
        .node()
        .snapshots()
        .iter()
        .map(|s| s.counts.handed_off)
        .sum();
    eprintln!(
        "{} forwarded, {handed} crossed, {full} handoff_full",
        c.forwarded
    );
    assert!(
        full > 0,
        "some batches held more than one packet for the other shard"
    );
    assert!(handed > 0, "the part that fitted crossed");
    assert_eq!(
        c.forwarded + full,
        PACKETS as u64,
        "nothing else was dropped"
    );
    assert_eq!(
        receiver
            .wait_for(c.forwarded as usize, Duration::from_secs(10))
            .len() as u64,
        c.forwarded
    );
}
