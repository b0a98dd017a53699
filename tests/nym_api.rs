//! The node against a stub nym-api on loopback: its topology (addresses, keys, Noise keys)
//! read from the semi-skimmed node list page by page, the announcement to refresh-described,
//! the signed host-information it then serves, and what junk, slow and failing answers do.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::nym_api::{Answer, StubNode, StubNymApi};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use nym_mixnode::config::{Config, InitSettings, NodePaths};
use nym_mixnode::node::{self, NodeOptions, RunningNode};
use nym_mixnode::rotation::RotationMode;

struct Node {
    node: Option<RunningNode>,
    identity: VerifyingKey,
    api: SocketAddr,
    _home: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown();
        }
    }
}

fn config(home: &tempfile::TempDir, api: &StubNymApi) -> Config {
    let settings = InitSettings {
        id: "test".into(),
        host: "127.0.0.1".parse().unwrap(),
        announce_host: None,
        mix_port: 0,
        verloc_port: 0,
        http_api_port: 0,
    };
    let mut config = Config::new(&settings, &NodePaths::new(home.path(), "test"));
    config.engine.cores = 1;
    config.engine.drain_timeout = Duration::from_millis(200);
    config.engine.replay_filter_packets_max = Some(10_000);
    config.rotation.mode = RotationMode::Network;
    config.rotation.nym_api = Some(api.base());
    config.topology.source = "nym-api".into();
    config.topology.refresh_interval = Duration::from_secs(1);
    config.topology.read_timeout = Duration::from_secs(1);
    config
}

fn start(config: &Config, home: tempfile::TempDir) -> Result<Node, String> {
    let keys = nym_mixnode::keys::NodeKeys::generate().unwrap();
    let identity = keys.identity_public();
    let node = node::start(
        config,
        keys,
        Default::default(),
        NodeOptions { pin_shards: false },
    )
    .map_err(|e| e.to_string())?;
    let api = node.addresses.http_api;
    Ok(Node {
        node: Some(node),
        identity,
        api,
        _home: home,
    })
}

fn five_nodes() -> Vec<StubNode> {
    let mut nodes: Vec<StubNode> = (2..=6)
        .map(|i| StubNode::new(i, &format!("127.0.0.{i}")))
        .collect();
    nodes[0].noise = Some([9; 32]);
    nodes[1].ips.push("::1".into());
    nodes
}

fn known_addresses(api: SocketAddr) -> Option<u64> {
    common::metric_sum(api, "nym_mixnode_known_node_addresses", "")
}

fn wait_known(api: SocketAddr, addresses: u64) {
    common::wait_for(Duration::from_secs(10), "the known nodes published", || {
        (known_addresses(api) == Some(addresses)).then_some(())
    });
}

fn outbound(api: SocketAddr, outcome: &str) -> u64 {
    common::metric_sum(
        api,
        "nym_mixnode_outbound_requests_total",
        &format!("purpose=\"topology\",outcome=\"{outcome}\""),
    )
    .unwrap_or(0)
}

fn json(api: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = common::http_get(api, path).expect("the API answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn the_topology_comes_from_nym_api_page_by_page_and_the_node_announces_itself() {
    let stub = StubNymApi::start(five_nodes(), 2);
    let home = tempfile::tempdir().unwrap();
    let node = start(&config(&home, &stub), home).expect("starts");
    // Three pages of at most two nodes.
    let pages: Vec<String> = stub
        .requests()
        .into_iter()
        .filter(|r| r.contains("semi-skimmed"))
        .collect();
    assert!(pages.len() >= 3, "{pages:?}");
    for (page, request) in pages.iter().take(3).enumerate() {
        assert!(request.contains(&format!("page={page}&")), "{pages:?}");
    }
    // Six addresses (one node has two) gate forwarding (once the shards published them).
    wait_known(node.api, 6);

    // The announcement: nym-api's NodeRefreshBody, signed by the node's identity.
    let body = common::wait_for(Duration::from_secs(10), "refresh-described", || {
        stub.refresh_bodies().into_iter().next()
    });
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    let identity = bs58::decode(body["node_identity"].as_str().unwrap())
        .into_vec()
        .unwrap();
    assert_eq!(identity, node.identity.to_bytes());
    let timestamp = body["request_timestamp"].as_i64().unwrap();
    assert!((timestamp - common::nym_api::unix_now() as i64).abs() < 30);
    let signature: Vec<u8> = body["signature"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    let mut message = identity.clone();
    message.extend_from_slice(&timestamp.to_be_bytes());
    message.extend_from_slice(b"describe-cache-refresh-request");
    node.identity
        .verify(&message, &Signature::from_slice(&signature).unwrap())
        .expect("the refresh request verifies");

    // What nym-api then reads: the keys of the stub's rotation, signed.
    let (status, text) = common::http_get(node.api, "/api/v1/host-information").unwrap();
    assert_eq!(status, 200);
    let data = text
        .strip_prefix("{\"data\":")
        .and_then(|rest| rest.rsplit_once(",\"signature\":"))
        .map(|(data, _)| data)
        .expect("data, then the signature");
    let host: serde_json::Value = serde_json::from_str(&text).unwrap();
    let signature = bs58::decode(host["signature"].as_str().unwrap())
        .into_vec()
        .unwrap();
    node.identity
        .verify(data.as_bytes(), &Signature::from_slice(&signature).unwrap())
        .expect("host-information verifies over its data text");
    let keys = &host["data"]["keys"];
    let (_, rotation) = common::nym_api::epoch_and_rotation();
    assert_eq!(keys["primary_x25519_sphinx_key"]["rotation_id"], rotation);
    assert_eq!(
        keys["x25519_sphinx"],
        keys["primary_x25519_sphinx_key"]["public_key"]
    );
    assert_eq!(host["data"]["ip_address"][0], "127.0.0.1");

    // VerLoc measures the nodes nym-api lists.
    common::wait_for(Duration::from_secs(20), "VerLoc's run", || {
        (json(node.api, "/verloc")["total_tested"] == 5).then_some(())
    });
}

#[test]
fn junk_slow_and_failing_answers_are_counted_and_keep_the_last_nodes() {
    let stub = StubNymApi::start(five_nodes(), 2);
    let home = tempfile::tempdir().unwrap();
    let node = start(&config(&home, &stub), home).expect("starts");
    wait_known(node.api, 6);
    let health_is_quick = || {
        let asked = Instant::now();
        let health = json(node.api, "/api/v1/health");
        assert_eq!(health["status"], "up");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
    };

    stub.set_nodes_answer(Answer::Malformed);
    common::wait_for(Duration::from_secs(20), "a bad body counted", || {
        (outbound(node.api, "bad_body") >= 2).then_some(())
    });
    assert_eq!(known_addresses(node.api), Some(6), "the last nodes read");
    health_is_quick();

    // Slower than topology.read_timeout (1 s): a timeout, and the API still answers at once.
    stub.set_nodes_answer(Answer::Slow(Duration::from_secs(3)));
    common::wait_for(Duration::from_secs(30), "a timeout counted", || {
        (outbound(node.api, "timeout") >= 1).then_some(())
    });
    health_is_quick();
    assert_eq!(known_addresses(node.api), Some(6));

    stub.set_nodes_answer(Answer::Status(503));
    common::wait_for(Duration::from_secs(30), "an error status counted", || {
        (outbound(node.api, "status") >= 1).then_some(())
    });
    assert_eq!(known_addresses(node.api), Some(6));

    // nym-api answers again, with one node more: it is taken (after the retry wait).
    let mut nodes = five_nodes();
    nodes.push(StubNode::new(7, "127.0.0.7"));
    stub.set_nodes(nodes);
    stub.set_nodes_answer(Answer::Normal);
    common::wait_for(Duration::from_secs(90), "the new node list", || {
        (known_addresses(node.api) == Some(7)).then_some(())
    });
    assert!(outbound(node.api, "ok") >= 6);
}

#[test]
fn a_junk_or_slow_key_schedule_is_counted_and_the_node_keeps_its_keys() {
    let stub = StubNymApi::start(five_nodes(), 2);
    let home = tempfile::tempdir().unwrap();
    let mut config = config(&home, &stub);
    config.rotation.poll_interval = Duration::from_secs(1);
    let node = start(&config, home).expect("starts");
    let schedule = |outcome: &str| {
        common::metric_sum(
            node.api,
            "nym_mixnode_outbound_requests_total",
            &format!("purpose=\"key_rotation\",outcome=\"{outcome}\""),
        )
        .unwrap_or(0)
    };
    let primary = || {
        json(node.api, "/api/v1/host-information")["data"]["keys"]["primary_x25519_sphinx_key"]
            .clone()
    };
    let before = primary();
    assert!(schedule("ok") >= 1);

    stub.set_schedule_answer(Answer::Malformed);
    common::wait_for(Duration::from_secs(20), "a bad schedule counted", || {
        (schedule("bad_body") >= 1).then_some(())
    });
    assert_eq!(primary(), before);

    // Slower than the node waits for nym-api (10 s): a timeout, while the API answers at once.
    stub.set_schedule_answer(Answer::Slow(Duration::from_secs(15)));
    let asked = Instant::now();
    common::wait_for(Duration::from_secs(40), "a slow schedule counted", || {
        assert_eq!(json(node.api, "/api/v1/health")["status"], "up");
        (schedule("timeout") >= 1).then_some(())
    });
    assert!(
        asked.elapsed() >= Duration::from_secs(9),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(primary(), before);
}

#[test]
fn a_node_list_nym_api_cannot_give_at_start_is_refused_naming_it() {
    let stub = StubNymApi::start(five_nodes(), 2);
    stub.set_nodes_answer(Answer::Malformed);
    let home = tempfile::tempdir().unwrap();
    let config = config(&home, &stub);
    let Err(message) = start(&config, home) else {
        panic!("started without a node list");
    };
    assert!(
        message.contains("/api/v2/unstable/nym-nodes/semi-skimmed"),
        "{message}"
    );
    assert!(message.contains("not JSON"), "{message}");
}

/// A TLS server on loopback with a self-signed certificate (no public root signed it),
/// handshaking every connection it gets until dropped.
struct SelfSignedTls {
    addr: SocketAddr,
    handshakes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SelfSignedTls {
    fn start() -> SelfSignedTls {
        use std::sync::atomic::Ordering;
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("a certificate");
        let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .expect("a key");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .expect("a server config");
        let server = std::sync::Arc::new(server);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = std::sync::Arc::clone(&handshakes);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(mut tls) = rustls::ServerConnection::new(std::sync::Arc::clone(&server))
                else {
                    break;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                // The client refuses the certificate and says so with an alert.
                while tls.is_handshaking() {
                    if tls.complete_io(&mut stream).is_err() {
                        break;
                    }
                }
            }
        });
        SelfSignedTls { addr, handshakes }
    }
}

#[test]
fn https_with_a_certificate_no_root_signed_is_a_counted_tls_failure() {
    let tls = SelfSignedTls::start();
    let stub = StubNymApi::start(five_nodes(), 2);
    let home = tempfile::tempdir().unwrap();
    let mut config = config(&home, &stub);
    config.rotation.mode = RotationMode::Off;
    config.topology.source = format!("https://{}/topology.json", tls.addr);
    let Err(message) = start(&config, home) else {
        panic!("started with a topology from a server it cannot trust");
    };
    assert!(message.contains("TLS failed"), "{message}");
    assert!(
        message.to_ascii_lowercase().contains("certificate"),
        "{message}"
    );
    assert!(tls.handshakes.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let counted = nym_mixnode::topology::fetch::COUNTERS
        .snapshot()
        .into_iter()
        .find(|(purpose, outcome, _)| *purpose == "topology" && *outcome == "tls")
        .map(|(_, _, n)| n);
    assert!(counted >= Some(1), "{counted:?}");
}
