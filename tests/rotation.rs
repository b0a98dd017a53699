//! Sphinx key rotation through a running node, with a schedule of seconds: 2 s epochs, 3
//! epochs a rotation, so rotation `r` runs from `6r` to `6r + 6` seconds of Unix time, its
//! successor is pre-announced in its last epoch and it stays as the secondary for the first
//! epoch of the next one.
//!
//! In each phase the test reads the keys the node lists (`data/sphinx_keys.json`, what
//! node-details prints), builds packets for them, and checks what passes: packets for the
//! pre-announced key with its rotation byte; during the overlap, packets for the old key with
//! its byte and v7 or byte-0 packets for either key; after the purge, packets for the old key
//! are dropped as expired_key (with its byte) or fail their MAC (without one). The same runs
//! with `mode = "local"` and with `mode = "network"` against a stub nym-api on loopback that
//! serves the same schedule. Forwarded packets keep their rotation byte.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mixnet::{frame, packet, send, Receiver, TestNode};
use nym_mixnode::accounting::DropReason;
use nym_mixnode::framing::{FrameHeader, KeyRotation, PacketType, SizeTag, Version};
use nym_mixnode::rotation::store::{KeyStore, Manifest};
use nym_mixnode::rotation::{KeyState, RotationMode};
use nym_mixnode::sphinx::RouteHop;
use x25519_dalek::PublicKey;

const EPOCH: Duration = Duration::from_secs(2);
const VALIDITY: u64 = 3;
const PER_KIND: usize = 8;

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Wait until the clock is at least 400 ms into an epoch at position `position` of its
/// rotation (and at most 600 ms: the rest of the epoch is left for sending).
fn wait_for_position(position: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = unix_now();
        let epoch = now.as_secs() / EPOCH.as_secs();
        let into = now - Duration::from_secs(epoch * EPOCH.as_secs());
        if epoch % VALIDITY == position
            && into >= Duration::from_millis(400)
            && into <= Duration::from_millis(600)
        {
            return epoch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "epoch position {position} never came"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn manifest(node: &TestNode) -> Manifest {
    KeyStore::new(node.data_dir.clone())
        .read_manifest()
        .expect("readable manifest")
        .expect("the node wrote its keys")
}

/// The live keys as (rotation id, public key, state), primary first.
fn keys(node: &TestNode) -> Vec<(u32, PublicKey, KeyState)> {
    manifest(node)
        .keys
        .into_iter()
        .map(|k| {
            let bytes = nym_mixnode::keys::decode_base58_key(&k.public_key).unwrap();
            (k.rotation_id, PublicKey::from(bytes), k.state)
        })
        .collect()
}

fn byte_for(rotation_id: u32) -> KeyRotation {
    if rotation_id % 2 == 1 {
        KeyRotation::Odd
    } else {
        KeyRotation::Even
    }
}

fn header(version: Version, key_rotation: KeyRotation) -> FrameHeader {
    FrameHeader {
        version,
        size_tag: SizeTag::Ack,
        packet_type: PacketType::Sphinx,
        key_rotation,
    }
}

/// `PER_KIND` frames for the node key `key`, each with `header`.
fn frames(node: &TestNode, key: PublicKey, header: FrameHeader, receiver: &Receiver) -> Vec<u8> {
    let hop = RouteHop {
        address: node.mix,
        public_key: key,
        delay: Duration::ZERO,
    };
    (0..PER_KIND)
        .flat_map(|i| {
            frame(
                header,
                &packet(
                    &[hop, receiver.hop()],
                    SizeTag::Ack,
                    format!("{i}").as_bytes(),
                ),
            )
        })
        .collect()
}

fn dropped(node: &TestNode, reason: DropReason) -> u64 {
    node.totals().0.dropped[reason as usize]
}

/// Send `wire` and wait until the node settled it (forwarded or dropped every packet).
fn send_and_settle(node: &TestNode, wire: &[u8], packets: usize) {
    let before = node.totals().0.received;
    let _stream = send(node.mix, wire);
    common::mixnet::eventually(Duration::from_secs(20), "packets settled", || {
        let (totals, in_flight) = node.totals();
        totals.received >= before + packets as u64 && in_flight == 0
    });
}

/// The three phases; `node` follows the 2 s x 3 schedule, by its clock or a stub nym-api's.
fn rotate_through_the_phases(node: &TestNode) {
    let receiver = Receiver::start();
    let v7 = |_| header(Version::V7, KeyRotation::Unknown);
    let v8 = |id| header(Version::V8, byte_for(id));
    let mut expected_arrivals = 0;

    // Phase 1: the last epoch of rotation r: r primary, r + 1 pre-announced.
    let epoch = wait_for_position(VALIDITY - 1);
    let r = (epoch / VALIDITY) as u32;
    std::thread::sleep(Duration::from_millis(100));
    let live = keys(node);
    assert_eq!(
        live.iter().map(|k| (k.0, k.2)).collect::<Vec<_>>(),
        vec![(r, KeyState::Primary), (r + 1, KeyState::PreAnnounced)],
        "phase 1 keys"
    );
    let (old, new) = (live[0].1, live[1].1);
    let mut wire = frames(node, new, v8(r + 1), &receiver);
    wire.extend(frames(node, old, v7(r), &receiver));
    wire.extend(frames(
        node,
        old,
        header(Version::V8, KeyRotation::Unknown),
        &receiver,
    ));
    send_and_settle(node, &wire, 3 * PER_KIND);
    expected_arrivals += 3 * PER_KIND;
    assert_eq!(
        receiver
            .wait_for(expected_arrivals, Duration::from_secs(10))
            .len(),
        expected_arrivals,
        "phase 1: pre-announced key with its byte, primary by v7 and byte 0"
    );
    assert!(
        (unix_now().as_secs() / EPOCH.as_secs()) == epoch,
        "phase 1 ran past its epoch: the machine is too slow for this schedule"
    );

    // Phase 2: the first epoch of rotation r + 1: r + 1 primary, r the secondary.
    let epoch = wait_for_position(0);
    assert_eq!((epoch / VALIDITY) as u32, r + 1);
    std::thread::sleep(Duration::from_millis(100));
    let live = keys(node);
    assert_eq!(
        live.iter().map(|k| (k.0, k.1, k.2)).collect::<Vec<_>>(),
        vec![
            (r + 1, new, KeyState::Primary),
            (r, old, KeyState::Secondary)
        ],
        "phase 2 keys"
    );
    let mut wire = frames(node, new, v8(r + 1), &receiver);
    wire.extend(frames(node, old, v8(r), &receiver));
    wire.extend(frames(node, old, v7(r), &receiver));
    wire.extend(frames(node, new, v7(r + 1), &receiver));
    send_and_settle(node, &wire, 4 * PER_KIND);
    expected_arrivals += 4 * PER_KIND;
    assert_eq!(
        receiver
            .wait_for(expected_arrivals, Duration::from_secs(10))
            .len(),
        expected_arrivals,
        "phase 2: both keys pass, with their bytes and with v7"
    );
    assert_eq!(dropped(node, DropReason::ExpiredKey), 0);
    assert!(
        (unix_now().as_secs() / EPOCH.as_secs()) == epoch,
        "phase 2 ran past its epoch: the machine is too slow for this schedule"
    );

    // Phase 3: the second epoch of rotation r + 1: the old key is purged.
    wait_for_position(1);
    std::thread::sleep(Duration::from_millis(100));
    let live = keys(node);
    assert_eq!(
        live.iter().map(|k| (k.0, k.2)).collect::<Vec<_>>(),
        vec![(r + 1, KeyState::Primary)],
        "phase 3 keys"
    );
    let store = KeyStore::new(node.data_dir.clone());
    assert!(!store.key_path(r).exists(), "the purged key's file is gone");
    assert!(store.key_path(r + 1).exists());
    let bad_before = dropped(node, DropReason::BadPacket);
    let mut wire = frames(node, old, v8(r), &receiver);
    wire.extend(frames(node, old, v7(r), &receiver));
    wire.extend(frames(node, new, v7(r + 1), &receiver));
    send_and_settle(node, &wire, 3 * PER_KIND);
    expected_arrivals += PER_KIND;
    assert_eq!(
        dropped(node, DropReason::ExpiredKey),
        PER_KIND as u64,
        "the old key's packets with its byte are expired"
    );
    assert_eq!(
        dropped(node, DropReason::BadPacket) - bad_before,
        PER_KIND as u64,
        "the old key's v7 packets fail the MAC under the only live key"
    );
    let arrivals = receiver.wait_for(expected_arrivals, Duration::from_secs(10));
    assert_eq!(arrivals.len(), expected_arrivals);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        receiver.count(),
        expected_arrivals,
        "nothing else got through"
    );
    // Forwarded packets kept the version and rotation byte they came with.
    let odd = arrivals
        .iter()
        .filter(|a| {
            a.header.version == Version::V8 && a.header.key_rotation != KeyRotation::Unknown
        })
        .count();
    assert_eq!(
        odd,
        3 * PER_KIND,
        "v8 frames with a rotation byte arrive with it"
    );
    let v7_arrived = arrivals
        .iter()
        .filter(|a| a.header.version == Version::V7)
        .count();
    assert_eq!(v7_arrived, 4 * PER_KIND);
    let (totals, in_flight) = node.totals();
    assert_eq!(
        totals.received,
        totals.forwarded + totals.dropped_total() + in_flight
    );
}

#[test]
fn a_local_schedule_rotates_keys_with_an_overlap_and_expires_the_old_key() {
    let node = TestNode::start(2, |c| {
        c.rotation.mode = RotationMode::Local;
        c.rotation.epoch = EPOCH;
        c.rotation.validity_epochs = VALIDITY as u32;
    });
    rotate_through_the_phases(&node);
}

/// A stub nym-api serving `GET /v1/epoch/key-rotation-info` for the 2 s x 3 schedule, with
/// epochs counted from the clock as nym-api counts them from its chain.
struct StubNymApi {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl StubNymApi {
    fn start() -> StubNymApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (Arc::clone(&requests), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut request = [0u8; 2048];
                let n = stream.read(&mut request).unwrap_or(0);
                let text = String::from_utf8_lossy(&request[..n]).to_string();
                let body = if text.starts_with("GET /api/v1/epoch/key-rotation-info ") {
                    count.fetch_add(1, Ordering::Relaxed);
                    let epoch = unix_now().as_secs() / EPOCH.as_secs();
                    let start =
                        time::OffsetDateTime::from_unix_timestamp((epoch * EPOCH.as_secs()) as i64)
                            .unwrap()
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap();
                    Some(format!(
                        r#"{{"key_rotation_state":{{"validity_epochs":{VALIDITY},"initial_epoch_id":0}},"current_absolute_epoch_id":{epoch},"current_epoch_start":"{start}","epoch_duration":{{"secs":{},"nanos":0}},"progress":{{"current_key_rotation_id":{},"current_rotation_starting_epoch":0,"current_rotation_ending_epoch":0}}}}"#,
                        EPOCH.as_secs(),
                        epoch / VALIDITY
                    ))
                } else {
                    None
                };
                let response = match body {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string(),
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        StubNymApi {
            addr,
            requests,
            stop,
        }
    }
}

impl Drop for StubNymApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_network_schedule_from_a_stub_nym_api_rotates_the_same_way() {
    let api = StubNymApi::start();
    let url = format!("http://{}/api/", api.addr);
    let node = TestNode::start(2, |c| {
        c.rotation.mode = RotationMode::Network;
        c.rotation.nym_api = Some(url);
        c.rotation.poll_interval = Duration::from_secs(1);
    });
    assert!(api.requests.load(Ordering::Relaxed) >= 1, "asked at start");
    rotate_through_the_phases(&node);
    assert!(
        api.requests.load(Ordering::Relaxed) >= 4,
        "polled while running"
    );
}

#[test]
fn network_mode_without_nym_api_or_a_saved_schedule_refuses_to_start_naming_the_fix() {
    use nym_mixnode::config::{Config, InitSettings, NodePaths};
    let home = tempfile::tempdir().unwrap();
    let settings = InitSettings {
        id: "test".into(),
        host: "127.0.0.1".parse().unwrap(),
        announce_host: None,
        mix_port: 0,
        verloc_port: 0,
        http_api_port: 0,
    };
    let mut config = Config::new(&settings, &NodePaths::new(home.path(), "test"));
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    config.rotation.mode = RotationMode::Network;
    config.rotation.nym_api = Some(format!("http://{closed}/api"));
    let keys = nym_mixnode::keys::NodeKeys::generate().unwrap();
    let result = nym_mixnode::node::start(
        &config,
        keys,
        Default::default(),
        nym_mixnode::node::NodeOptions { pin_shards: false },
    );
    let message = match result {
        Ok(_) => panic!("started without a schedule"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("rotation.nym_api"), "{message}");
    assert!(message.contains(&closed.to_string()), "{message}");
}
