//! A restart does not forget replays: the real binary, stopped with SIGTERM (or killed with
//! SIGKILL once a save has happened) and started again, drops the same frames as replays; and
//! a corrupt saved filter is refused with a message naming the file and the fix.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::mixnet::{frame, header, packet, send, Receiver};
use common::{add_config_line, set_config_value, stderr, wait_for, BinaryNode};
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

#[test]
fn rotating_keys_and_their_filters_survive_a_restart() {
    use nym_mixnode::framing::{FrameHeader, KeyRotation, PacketType};
    use nym_mixnode::rotation::store::KeyStore;
    let node = BinaryNode::init();
    // A local schedule of 30-day epochs: no key change during the test.
    set_config_value(&node.home, BinaryNode::ID, "mode", "\"local\"");
    set_config_value(&node.home, BinaryNode::ID, "epoch", "\"30days\"");
    add_config_line(
        &node.home,
        BinaryNode::ID,
        "engine",
        "replay_filter_packets_max = 100000",
    );
    let data = node.home.node_dir(BinaryNode::ID).join("data");
    let store = KeyStore::new(data);
    let receiver = Receiver::start();
    let running = node.start(2);
    let manifest = store.read_manifest().unwrap().expect("keys listed");
    let primary = manifest.keys[0].clone();
    // node-details lists what the node holds, the primary first, and names it sphinx_key.
    let out = node
        .home
        .run(&["node-details", "--id", BinaryNode::ID, "--output", "json"]);
    let details: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(details["rotation_mode"], "local");
    assert_eq!(details["sphinx_key"], primary.public_key.as_str());
    assert_eq!(
        details["sphinx_keys"][0]["rotation_id"],
        primary.rotation_id
    );
    assert_eq!(details["sphinx_keys"][0]["state"], "primary");
    assert_eq!(
        details["sphinx_keys"].as_array().map(Vec::len),
        Some(manifest.keys.len())
    );
    let key = nym_mixnode::keys::decode_base58_key(&primary.public_key).unwrap();
    let hop = nym_mixnode::sphinx::RouteHop {
        public_key: x25519_dalek::PublicKey::from(key),
        ..node.hop
    };
    assert_ne!(
        hop.public_key, node.hop.public_key,
        "a rotating key, not the static one"
    );
    let h = FrameHeader {
        version: Version::V8,
        size_tag: SizeTag::Ack,
        packet_type: PacketType::Sphinx,
        key_rotation: if primary.rotation_id % 2 == 1 {
            KeyRotation::Odd
        } else {
            KeyRotation::Even
        },
    };
    let wire: Vec<u8> = (0..FRAMES)
        .flat_map(|i| {
            frame(
                h,
                &packet(
                    &[hop, receiver.hop()],
                    SizeTag::Ack,
                    format!("{i}").as_bytes(),
                ),
            )
        })
        .collect();
    let _s = send(node.mix, &wire);
    assert_eq!(
        receiver.wait_for(FRAMES, Duration::from_secs(60)).len(),
        FRAMES
    );
    let out = running.stop_with(libc::SIGTERM, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        store.filter_path(primary.rotation_id).exists(),
        "the key's filter is saved under its rotation id"
    );
    let _running = node.start(2);
    let after = store.read_manifest().unwrap().expect("keys listed");
    assert_eq!(after.keys[0], primary, "the same key after the restart");
    let _s = send(node.mix, &wire);
    node.wait_settled(FRAMES as u64, Duration::from_secs(60));
    assert_eq!(node.dropped("replay"), FRAMES as u64);
    assert_eq!(receiver.count(), FRAMES);
}
