//! A restart does not forget replays: the real binary, stopped with SIGTERM (or killed with
//! SIGKILL once a save has happened) and started again, drops the same frames as replays; and
//! a corrupt saved filter is refused with a message naming the file and the fix.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::mixnet::{frame, header, packet, send, Receiver};
use common::{set_config_value, stderr, wait_for, BinaryNode};
use nym_mixnode::framing::{SizeTag, Version};

const FRAMES: usize = 300;

fn filter_file(node: &BinaryNode) -> PathBuf {
    node.home
        .node_dir(BinaryNode::ID)
        .join("data")
        .join("replay_filter.bin")
}

fn frames(node: &BinaryNode, receiver: &Receiver) -> Vec<u8> {
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
    let node = BinaryNode::init();
    let receiver = Receiver::start();
    let wire = frames(&node, &receiver);
    let running = node.start(2);
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
    let _running = node.start(2);
    let _s = send(node.mix, &wire);
    node.wait_settled(FRAMES as u64, Duration::from_secs(60));
    assert_eq!(
        node.dropped("replay"),
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
    let node = BinaryNode::init();
    set_config_value(
        &node.home,
        BinaryNode::ID,
        "replay_filter_save_interval",
        "\"1s\"",
    );
    let receiver = Receiver::start();
    let wire = frames(&node, &receiver);
    let running = node.start(2);
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
            let modified = std::fs::metadata(filter_file(&node))
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
    let _running = node.start(2);
    let _s = send(node.mix, &wire);
    node.wait_settled(FRAMES as u64, Duration::from_secs(60));
    assert_eq!(
        node.dropped("replay"),
        FRAMES as u64,
        "every frame sent again is a replay"
    );
    assert_eq!(receiver.count(), FRAMES);
}

#[test]
fn a_corrupt_saved_filter_is_refused_with_the_file_and_the_fix() {
    let node = BinaryNode::init();
    let file = filter_file(&node);
    for (what, bytes) in [
        ("garbage", b"not a filter at all".to_vec()),
        ("truncated", b"NYMRPLF1\x00\x01".to_vec()),
    ] {
        std::fs::write(&file, &bytes).unwrap();
        let out = node.home.run_bounded(
            &["run", "--id", BinaryNode::ID, "--cores", "1"],
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
