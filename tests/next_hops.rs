//! The next-hop table heals itself, over real sockets: a flood of packets for thousands of
//! distinct next hops that refuse connections cannot cut the node off from next hops it has
//! not seen yet, and the node's own memory (a child process) stays bounded.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::mixnet::{frame, header, packet, send, Receiver};
use common::{http_get, wait_for, Home};
use nym_mixnode::framing::{SizeTag, Version};
use nym_mixnode::keys::{KeyPaths, NodeKeys};
use nym_mixnode::sphinx::RouteHop;

/// Distinct next hops in the flood: more than the default table holds (4,096 whole node).
const FLOOD_NEXT_HOPS: usize = 6_000;
/// Packets then sent to one fresh next hop.
const FRESH_PACKETS: usize = 2_000;

/// Sum of a per-shard metric in the node's /metrics.
fn metric(api: SocketAddr, name: &str) -> Option<u64> {
    let (status, body) = http_get(api, "/metrics")?;
    if status != 200 {
        return None;
    }
    let prefix = format!("{name}{{");
    Some(
        body.lines()
            .filter(|line| line.starts_with(&prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

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

#[test]
fn thousands_of_dead_next_hops_cannot_fill_the_table_and_memory_stays_bounded() {
    let home = Home::new();
    let (mix_port, _, http_port) = home.init_local("hops");
    let data = home.node_dir("hops").join("data");
    let keys = NodeKeys::load(&KeyPaths::in_data_dir(&data)).expect("keys written by init");
    let node = home.spawn_run("hops", 2);
    let api = SocketAddr::from((Ipv4Addr::LOCALHOST, http_port));
    let mix = SocketAddr::from((Ipv4Addr::LOCALHOST, mix_port));
    wait_for(Duration::from_secs(30), "the node's /metrics", || {
        metric(api, "nym_mixnode_packets_received_total")
    });
    let node_hop = RouteHop {
        address: mix,
        public_key: keys.sphinx_public(),
        delay: Duration::ZERO,
    };
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
    let idle_kib = rss_kib(node.pid());
    let _flood = send(mix, &flood);
    wait_for(Duration::from_secs(120), "the flood counted", || {
        let received = metric(api, "nym_mixnode_packets_received_total")?;
        (received >= FLOOD_NEXT_HOPS as u64).then_some(())
    });
    let flooded_kib = rss_kib(node.pid());
    let table_max = metric(api, "nym_mixnode_next_hops").expect("metrics");
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
    let after_kib = rss_kib(node.pid());
    let refused = wait_for(Duration::from_secs(30), "drop counters", || {
        let (_, body) = http_get(api, "/metrics")?;
        Some(
            body.lines()
                .filter(|l| {
                    l.starts_with("nym_mixnode_packets_dropped_total{")
                        && l.contains("reason=\"next_hop_table_full\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>(),
        )
    });
    let evicted = wait_for(Duration::from_secs(30), "evictions", || {
        let (_, body) = http_get(api, "/metrics")?;
        Some(
            body.lines()
                .filter(|l| {
                    l.starts_with("nym_mixnode_next_hops_removed_total{")
                        && l.contains("reason=\"evicted\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>(),
        )
    });
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
