//! Noise on mixnet links against nym-noise's own `upgrade_noise_initiator` and
//! `upgrade_noise_responder`: a nym-noise initiator sends packets into the node (the node as
//! responder), and the node forwards them to a nym-noise responder (the node as initiator).
//! Peers are keyed by IP: the nym-noise initiator binds 127.0.0.2, the responder 127.0.0.3.

#[path = "../../tests/common/mixnet.rs"]
#[allow(dead_code)]
mod mixnet;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mixnet::{frame, header, packet, TestNode};
use nym_crypto::asymmetric::x25519;
use nym_mixnode::framing::{FrameDecoder, SizeTag, Version};
use nym_mixnode::noise::{NoiseCounts, Role};
use nym_mixnode::sphinx::RouteHop;
use nym_mixnode::topology::{TopologyEntry, TopologyFile};
use nym_noise::config::{
    NoiseConfig, NoiseNetworkView, NoiseNode, NoiseVersion, VersionedNoiseKeyV1,
};
use nym_noise::{upgrade_noise_initiator, upgrade_noise_responder};
use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(1500);

fn key_pair(seed: u8) -> x25519::KeyPair {
    x25519::KeyPair::from(x25519::PrivateKey::from_secret([seed; 32]))
}

fn versioned(key: [u8; 32]) -> VersionedNoiseKeyV1 {
    VersionedNoiseKeyV1 {
        supported_version: NoiseVersion::V1,
        x25519_pubkey: x25519::PublicKey::from_byte_array(&key),
    }
}

/// nym-noise's view of the network: each IP with its Noise key.
fn config(me: &x25519::KeyPair, peers: &[(&str, [u8; 32])]) -> NoiseConfig {
    let nodes: HashMap<IpAddr, NoiseNode> = peers
        .iter()
        .map(|(ip, key)| {
            (
                ip.parse().unwrap(),
                NoiseNode::new_nym_node(versioned(*key)),
            )
        })
        .collect();
    let me = x25519::KeyPair::from(x25519::PrivateKey::from_secret(me.private_key().to_bytes()));
    NoiseConfig::new(
        Arc::new(me),
        NoiseNetworkView::new(nodes),
        HANDSHAKE_TIMEOUT,
    )
}

fn entry(seed: u8, host: &str, mix_port: u16, noise: [u8; 32]) -> TopologyEntry {
    let identity = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
    TopologyEntry {
        identity_key: bs58::encode(identity.as_bytes()).into_string(),
        sphinx_key: bs58::encode([seed + 100; 32]).into_string(),
        host: host.to_string(),
        mix_port,
        verloc_port: 1790,
        noise_key: Some(bs58::encode(noise).into_string()),
        ..Default::default()
    }
}

fn noise_counts(node: &TestNode) -> NoiseCounts {
    node.node()
        .snapshots()
        .iter()
        .fold(NoiseCounts::default(), |sum, s| sum.plus(&s.noise))
}

/// A final hop behind nym-noise's responder: every message it opens, and whether each
/// connection was Noise.
async fn nym_noise_final_hop(
    listener: TcpListener,
    config: NoiseConfig,
    secret: x25519_dalek::StaticSecret,
    found: tokio::sync::mpsc::UnboundedSender<Result<Vec<u8>, String>>,
) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        let (config, secret, found) = (config.clone(), secret.clone(), found.clone());
        tokio::spawn(async move {
            let mut conn = match upgrade_noise_responder(conn, &config).await {
                Ok(conn) if conn.is_noise() => conn,
                Ok(_) => {
                    let _ = found.send(Err("the node's connection fell back to plain TCP".into()));
                    return;
                }
                Err(e) => {
                    let _ = found.send(Err(format!("responder handshake failed: {e}")));
                    return;
                }
            };
            let mut decoder = FrameDecoder::new();
            loop {
                let n = match conn.read(decoder.spare_mut()).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                decoder.advance(n);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    let message = SphinxPacket::from_bytes(frame.packet)
                        .ok()
                        .and_then(|p| p.process(&secret).ok())
                        .and_then(|p| match p.data {
                            ProcessedPacketData::FinalHop { payload, .. } => {
                                payload.recover_plaintext().ok()
                            }
                            ProcessedPacketData::ForwardHop { .. } => None,
                        })
                        .ok_or_else(|| "a frame that is not a final hop's packet".to_string());
                    let _ = found.send(message);
                }
            }
        });
    }
}

async fn connect_from(source: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn packets_cross_the_node_from_a_nym_noise_initiator_to_a_nym_noise_responder() {
    let initiator_keys = key_pair(1);
    let responder_keys = key_pair(2);
    let listener = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let hop_addr = listener.local_addr().unwrap();
    let hop_secret = x25519_dalek::StaticSecret::random();
    let hop = RouteHop {
        address: hop_addr,
        public_key: x25519_dalek::PublicKey::from(&hop_secret),
        delay: Duration::ZERO,
    };

    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.json");
    std::fs::write(
        &topology,
        TopologyFile {
            nodes: vec![
                entry(1, "127.0.0.2", 1789, initiator_keys.public_key().to_bytes()),
                entry(
                    2,
                    "127.0.0.3",
                    hop_addr.port(),
                    responder_keys.public_key().to_bytes(),
                ),
            ],
        }
        .to_json_pretty(),
    )
    .unwrap();
    let node = TestNode::start(1, |c| {
        c.topology.source = topology.display().to_string();
    });

    // nym-noise's responder knows the node (it connects from 127.0.0.1) as a Noise peer.
    let (found_tx, mut found) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(nym_noise_final_hop(
        listener,
        config(&responder_keys, &[("127.0.0.1", node.noise_public)]),
        hop_secret,
        found_tx,
    ));

    // nym-noise's initiator, from 127.0.0.2, to the node's Noise key.
    let conn = connect_from("127.0.0.2", node.mix).await;
    let mut conn = upgrade_noise_initiator(
        conn,
        &config(&initiator_keys, &[("127.0.0.1", node.noise_public)]),
    )
    .await
    .expect("the node answers nym-noise's handshake");
    assert!(conn.is_noise());
    let h = header(Version::V8, SizeTag::Ack);
    let mut sent = Vec::new();
    for i in 0..40 {
        let message = format!("across {i}").into_bytes();
        let bytes = frame(
            h,
            &packet(&[node.hop(Duration::ZERO), hop], SizeTag::Ack, &message),
        );
        conn.write_all(&bytes).await.unwrap();
        sent.push(message);
    }
    conn.flush().await.unwrap();

    let mut received = Vec::new();
    while received.len() < sent.len() {
        let next = tokio::time::timeout(Duration::from_secs(10), found.recv())
            .await
            .expect("the packets reach nym-noise's responder in time")
            .expect("the final hop runs");
        received.push(next.expect("a Noise link with a final hop's packet"));
    }
    received.sort();
    sent.sort();
    assert_eq!(received, sent);
    let counts = noise_counts(&node);
    assert_eq!(counts.handshakes[Role::Responder as usize], 1, "{counts:?}");
    assert_eq!(counts.handshakes[Role::Initiator as usize], 1, "{counts:?}");
}

#[tokio::test]
async fn a_nym_noise_initiator_with_the_wrong_key_for_the_node_is_refused_and_counted() {
    let initiator_keys = key_pair(3);
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.json");
    std::fs::write(
        &topology,
        TopologyFile {
            nodes: vec![entry(
                1,
                "127.0.0.2",
                1789,
                initiator_keys.public_key().to_bytes(),
            )],
        }
        .to_json_pretty(),
    )
    .unwrap();
    let node = TestNode::start(1, |c| {
        c.topology.source = topology.display().to_string();
    });
    let conn = connect_from("127.0.0.2", node.mix).await;
    let wrong = key_pair(9).public_key().to_bytes();
    let refused =
        upgrade_noise_initiator(conn, &config(&initiator_keys, &[("127.0.0.1", wrong)])).await;
    assert!(refused.is_err(), "the handshake must fail");
    let start = std::time::Instant::now();
    loop {
        let failures: u64 = noise_counts(&node).failures[Role::Responder as usize]
            .iter()
            .sum();
        if failures == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "failure counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
