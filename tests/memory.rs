//! Floods that must not grow the node's memory or cut it off, measured on the node itself (a
//! child process running the real binary), not on the test process: junk frames, and packets
//! for thousands of distinct next hops that refuse connections (the next-hop table heals
//! itself: next hops not seen yet are still served).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::mixnet::{frame, header, packet, send, Receiver};
use common::{metric_sum, BinaryNode};
use nym_mixnode::framing::{SizeTag, Version};
use nym_mixnode::sphinx::RouteHop;

/// Distinct next hops in the flood: more than the default table holds (4,096 whole node).
const FLOOD_NEXT_HOPS: usize = 6_000;
/// Packets then sent to one fresh next hop.
const FRESH_PACKETS: usize = 2_000;

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line")
}

/// A running node of the real binary and its resident memory.
struct ChildNode {
    node: BinaryNode,
    running: common::Running,
}

fn start_child() -> ChildNode {
    let node = BinaryNode::init();
    let running = node.start(2);
    ChildNode { node, running }
}

impl std::ops::Deref for ChildNode {
    type Target = BinaryNode;
    fn deref(&self) -> &BinaryNode {
        &self.node
    }
}

impl ChildNode {
    fn rss_kib(&self) -> u64 {
        rss_kib(self.running.pid())
    }
}

/// Well-framed junk: each frame costs the node one scalar multiplication, then is dropped.
const JUNK_FRAMES: usize = 20_000;

#[test]
fn a_flood_of_junk_does_not_grow_the_nodes_memory_and_it_keeps_serving() {
    let node = start_child();
    let receiver = Receiver::start();
    let h = header(Version::V8, SizeTag::Regular);
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Warm the node's allocator with a first flood as large as the measured one: under load
    // (other tests running) the allocator's working set keeps growing well past a small
    // warm-up, and only retention across a second flood means junk is kept.
    let flood = |frames: usize, next: &mut dyn FnMut() -> u64| {
        let mut streams = Vec::new();
        for _ in 0..frames / 200 {
            let mut junk = Vec::new();
            for _ in 0..200 {
                let body: Vec<u8> = (0..SizeTag::Regular.packet_len())
                    .map(|_| next() as u8)
                    .collect();
                junk.extend(frame(h, &body));
            }
            streams.push(send(node.mix, &junk));
            if streams.len() > 16 {
                streams.remove(0);
            }
        }
    };
    flood(JUNK_FRAMES, &mut next);
    node.wait_received(JUNK_FRAMES as u64, Duration::from_secs(120));
    // A moment for the allocator to give back what it frees lazily, before each reading.
    std::thread::sleep(Duration::from_secs(1));
    let before = node.rss_kib();
    flood(JUNK_FRAMES, &mut next);
    node.wait_received(2 * JUNK_FRAMES as u64, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    let after = node.rss_kib();
    let junk_kib = (JUNK_FRAMES * h.frame_len() / 1024) as u64;
    eprintln!("resident memory: {before} KiB before, {after} KiB after {junk_kib} KiB of junk");
    // Keeping even half the junk would cost more than this.
    assert!(
        after < before + junk_kib / 2,
        "memory grew from {before} KiB to {after} KiB under {junk_kib} KiB of junk"
    );
    assert_eq!(
        node.dropped("bad_packet"),
        2 * JUNK_FRAMES as u64,
        "every junk frame dropped as bad_packet"
    );
    let _s = send(
        node.mix,
        &frame(
            h,
            &packet(&[node.hop, receiver.hop()], SizeTag::Regular, b"still here"),
        ),
    );
    assert_eq!(receiver.wait_for(1, Duration::from_secs(10)).len(), 1);
}

#[test]
fn thousands_of_dead_next_hops_cannot_fill_the_table_and_memory_stays_bounded() {
    let node = start_child();
    let (mix, api, node_hop) = (node.mix, node.api, node.hop);
    let receiver = Receiver::start();
    // Nothing listens on this port at any 127.x address: every connection is refused.
    let closed_port = common::free_port();
    let h = header(Version::V8, SizeTag::Ack);
    let mut flood = Vec::new();
    for i in 0..FLOOD_NEXT_HOPS {
        let dead = RouteHop {
            address: SocketAddr::from(([127, 3, (i >> 8) as u8, i as u8], closed_port)),
            public_key: receiver.public_key,
            delay: Duration::ZERO,
        };
        flood.extend(frame(h, &packet(&[node_hop, dead], SizeTag::Ack, b"flood")));
    }
    let idle_kib = node.rss_kib();
    let _flood = send(mix, &flood);
    node.wait_received(FLOOD_NEXT_HOPS as u64, Duration::from_secs(120));
    let flooded_kib = node.rss_kib();
    let table_max = metric_sum(api, "nym_mixnode_next_hops", "").expect("metrics");
    assert!(
        table_max <= 4_096,
        "the table stays within engine.next_hops_max: {table_max}"
    );

    // Packets for a next hop the node has not seen: every one is forwarded.
    let fresh: Vec<u8> = (0..FRESH_PACKETS)
        .flat_map(|i| {
            frame(
                h,
                &packet(
                    &[node_hop, receiver.hop()],
                    SizeTag::Ack,
                    format!("fresh {i}").as_bytes(),
                ),
            )
        })
        .collect();
    let _fresh = send(mix, &fresh);
    let arrived = receiver.wait_for(FRESH_PACKETS, Duration::from_secs(120));
    let after_kib = node.rss_kib();
    let refused = node.dropped("next_hop_table_full");
    let evicted = metric_sum(
        api,
        "nym_mixnode_next_hops_removed_total",
        "reason=\"evicted\"",
    )
    .expect("metrics");
    eprintln!(
        "resident memory: idle {idle_kib} KiB, after {FLOOD_NEXT_HOPS} dead next hops \
         {flooded_kib} KiB, after {FRESH_PACKETS} fresh packets {after_kib} KiB; \
         table {table_max}, evicted {evicted}, refused {refused}"
    );
    assert_eq!(
        arrived.len(),
        FRESH_PACKETS,
        "every packet for the fresh next hop"
    );
    assert!(evicted > 0, "the flood must have filled the table");
    // Before, each next hop reserved a 2,000-slot queue and an 80 KB write buffer: 6,000 of
    // them took the node from 86 MB to 1.1 GB. A dead next hop now costs its table entry and
    // its task, and the table is bounded. The node's heap also grows by about 80 MB once,
    // whatever the next hops (the same with one next hop; flat from 12,000 to 30,000
    // packets), so the bound is set well above that and well below the old cost.
    let grown_kib = after_kib.saturating_sub(idle_kib);
    assert!(
        grown_kib < 256 * 1024,
        "resident memory grew by {grown_kib} KiB (idle {idle_kib}, after {after_kib})"
    );
    drop(node);
}

/// 32 KiB packets for next hops that accept and never read: the queues fill, and the byte
/// budget (`engine.packet_memory_bytes_max`) bounds what the node holds.
#[test]
fn large_packets_for_next_hops_that_never_read_stay_within_the_byte_budget() {
    const BUDGET_MIB: u64 = 2;
    const PACKETS: usize = 800;
    const NEXT_HOPS: usize = 2;
    let node = BinaryNode::init();
    common::set_config_value(
        &node.home,
        BinaryNode::ID,
        "packet_memory_bytes_max",
        &(BUDGET_MIB << 20).to_string(),
    );
    // Packets between shards have a budget of their own: small here too.
    common::set_config_value(
        &node.home,
        BinaryNode::ID,
        "cross_shard_bytes_max",
        &(1u64 << 20).to_string(),
    );
    let running = node.start(2);
    // Next hops that accept connections and never read from them (small receive buffers, so
    // that the kernel takes little of the load off the node).
    let sinks: Vec<std::net::TcpListener> = (0..NEXT_HOPS)
        .map(|_| {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
            socket.bind(&addr.into()).unwrap();
            socket.listen(16).unwrap();
            socket.into()
        })
        .collect();
    let held: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
    for sink in &sinks {
        let (sink, held) = (sink.try_clone().unwrap(), std::sync::Arc::clone(&held));
        std::thread::spawn(move || {
            while let Ok((stream, _)) = sink.accept() {
                held.lock().unwrap().push(stream);
            }
        });
    }
    let receiver = Receiver::start();
    let addresses: Vec<SocketAddr> = sinks.iter().map(|s| s.local_addr().unwrap()).collect();
    let h = header(Version::V8, SizeTag::Extended32);
    // Building a 32 KiB packet is slow in a debug build: two threads.
    let halves: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|half| {
                let (addresses, receiver_key, node_hop) =
                    (&addresses, receiver.public_key, node.hop);
                scope.spawn(move || {
                    let mut wire = Vec::new();
                    for i in (half..PACKETS).step_by(2) {
                        let next = RouteHop {
                            address: addresses[i % NEXT_HOPS],
                            public_key: receiver_key,
                            delay: Duration::ZERO,
                        };
                        wire.extend(frame(
                            h,
                            &packet(
                                &[node_hop, next],
                                SizeTag::Extended32,
                                format!("{i}").as_bytes(),
                            ),
                        ));
                    }
                    wire
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let idle_kib = rss_kib(running.pid());
    let _a = send(node.mix, &halves[0]);
    let _b = send(node.mix, &halves[1]);
    node.wait_received(PACKETS as u64, Duration::from_secs(120));
    // Let the node settle: what it could write is in the kernel's buffers, the rest held.
    std::thread::sleep(Duration::from_secs(1));
    let loaded_kib = rss_kib(running.pid());
    let memory_full = node.dropped("memory_full");
    let held_bytes = metric_sum(node.api, "nym_mixnode_packet_memory_bytes", "").expect("metrics");
    eprintln!(
        "{PACKETS} packets of 32 KiB ({} MiB) for {NEXT_HOPS} next hops that never read: \
         resident memory {idle_kib} KiB idle, {loaded_kib} KiB loaded; {held_bytes} bytes held, \
         {memory_full} dropped as memory_full (budget {BUDGET_MIB} MiB)",
        (PACKETS * SizeTag::Extended32.packet_len()) >> 20
    );
    assert!(memory_full > 0, "the budget was reached");
    assert!(held_bytes <= BUDGET_MIB << 20, "held {held_bytes} bytes");
    // The budget (which counts the writes under way too) and the heap's one-time growth
    // (about 80 MB, see above) bound the growth.
    let grown_kib = loaded_kib.saturating_sub(idle_kib);
    assert!(
        grown_kib < (BUDGET_MIB + 100) * 1024,
        "resident memory grew by {grown_kib} KiB (idle {idle_kib}, loaded {loaded_kib})"
    );
    drop(running);
}
