//! A restart does not forget replays: the real binary, stopped with SIGTERM (or killed with
//! SIGKILL once a save has happened) and started again, drops the same frames as replays; and
//! a corrupt saved filter is refused with a message naming the file and the fix.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::mixnet::{frame, header, packet, send, Receiver};
use common::{metric_sum, set_config_value, stderr, wait_for, Home};
use nym_mixnode::framing::{SizeTag, Version};
use nym_mixnode::keys::{KeyPaths, NodeKeys};
use nym_mixnode::sphinx::RouteHop;

const FRAMES: usize = 300;

struct Node {
    home: Home,
    mix: SocketAddr,
    api: SocketAddr,
    hop: RouteHop,
}

impl Node {
    fn init() -> Node {
        let home = Home::new();
        let (mix_port, _, http_port) = home.init_local("r");
        let data = home.node_dir("r").join("data");
        let keys = NodeKeys::load(&KeyPaths::in_data_dir(&data)).expect("keys written by init");
        let mix = SocketAddr::from((Ipv4Addr::LOCALHOST, mix_port));
        Node {
            hop: RouteHop {
                address: mix,
                public_key: keys.sphinx_public(),
                delay: Duration::ZERO,
            },
            home,
            mix,
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
        }
    }

    fn filter_file(&self) -> PathBuf {
        self.home
            .node_dir("r")
            .join("data")
            .join("replay_filter.bin")
    }

    fn start(&self) -> common::Running {
        let running = self.home.spawn_run("r", 2);
        wait_for(Duration::from_secs(30), "the node's /metrics", || {
            metric_sum(self.api, "nym_mixnode_packets_received_total", "")
        });
        running
    }

    fn counted(&self, received: u64) {
        wait_for(Duration::from_secs(60), "frames counted", || {
            let got = metric_sum(self.api, "nym_mixnode_packets_received_total", "")?;
            let forwarded = metric_sum(self.api, "nym_mixnode_packets_forwarded_total", "")?;
            let dropped = metric_sum(self.api, "nym_mixnode_packets_dropped_total", "")?;
            (got >= received && forwarded + dropped == got).then_some(())
        });
    }

    fn replays(&self) -> u64 {
        metric_sum(
            self.api,
            "nym_mixnode_packets_dropped_total",
            "reason=\"replay\"",
        )
        .expect("metrics")
    }
}

fn frames(node: &Node, receiver: &Receiver) -> Vec<u8> {
    let h = header(Version::V8, SizeTag::Ack);
    (0..FRAMES)
        .flat_map(|i| {
            frame(
                h,
                &packet(
                    &[node.hop, receiver.hop()],
                    SizeTag::Ack,
                    format!("{i}").as_bytes(),
                ),
            )
        })
        .collect()
}

#[test]
fn frames_sent_again_after_a_sigterm_and_restart_are_replays() {
    let node = Node::init();
    let receiver = Receiver::start();
    let wire = frames(&node, &receiver);
    let running = node.start();
    let _s = send(node.mix, &wire);
    assert_eq!(
        receiver.wait_for(FRAMES, Duration::from_secs(60)).len(),
        FRAMES
    );
    let out = running.stop_with(libc::SIGTERM, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("saved the replay filter"),
        "{}",
        stderr(&out)
    );
    let _running = node.start();
    let _s = send(node.mix, &wire);
    node.counted(FRAMES as u64);
    assert_eq!(
        node.replays(),
        FRAMES as u64,
        "every frame sent again is a replay"
    );
    assert_eq!(
        receiver.count(),
        FRAMES,
        "nothing reached the receiver twice"
    );
}

#[test]
fn frames_sent_again_after_a_save_a_sigkill_and_restart_are_replays() {
    let node = Node::init();
    set_config_value(&node.home, "r", "replay_filter_save_interval", "\"1s\"");
    let receiver = Receiver::start();
    let wire = frames(&node, &receiver);
    let running = node.start();
    let _s = send(node.mix, &wire);
    assert_eq!(
        receiver.wait_for(FRAMES, Duration::from_secs(60)).len(),
        FRAMES
    );
    // Two saves after every frame was mixed: the later one was requested after them.
    let mixed_at = SystemTime::now();
    let mut saves = Vec::new();
    wait_for(
        Duration::from_secs(30),
        "two saves after the frames",
        || {
            let modified = std::fs::metadata(node.filter_file())
                .ok()?
                .modified()
                .ok()?;
            if modified > mixed_at && !saves.contains(&modified) {
                saves.push(modified);
            }
            (saves.len() >= 2).then_some(())
        },
    );
    let out = running.stop_with(libc::SIGKILL, Duration::from_secs(10));
    assert!(!out.status.success(), "killed");
    let _running = node.start();
    let _s = send(node.mix, &wire);
    node.counted(FRAMES as u64);
    assert_eq!(
        node.replays(),
        FRAMES as u64,
        "every frame sent again is a replay"
    );
    assert_eq!(receiver.count(), FRAMES);
}

#[test]
fn a_corrupt_saved_filter_is_refused_with_the_file_and_the_fix() {
    let node = Node::init();
    let file = node.filter_file();
    for (what, bytes) in [
        ("garbage", b"not a filter at all".to_vec()),
        ("truncated", b"NYMRPLF1\x00\x01".to_vec()),
    ] {
        std::fs::write(&file, &bytes).unwrap();
        let out = node.home.run_bounded(
            &["run", "--id", "r", "--cores", "1"],
            Duration::from_secs(30),
        );
        let text = stderr(&out);
        assert!(!out.status.success(), "{what}: the node must not start");
        assert!(
            text.contains(&file.display().to_string()) && text.contains("delete it"),
            "{what}: {text}"
        );
    }
}
