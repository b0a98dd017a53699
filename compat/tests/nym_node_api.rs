//! The node's `/api/v1/` read as nym-api reads it: every answer parsed with nym-node-requests'
//! own types, host-information verified with its own verification; and the stub nym-api's
//! documents (which the main suite feeds the node) parsed with nym-api-requests' own types,
//! as is the refresh-described body the node sends, verified with nym-api's own check.

#[path = "../../tests/common/nym_api.rs"]
mod stub;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nym_mixnode::config::{Config, InitSettings, NodePaths};
use nym_mixnode::node::{self, NodeOptions, RunningNode};
use nym_mixnode::rotation::RotationMode;
use nym_node_requests::api::v1::gateway::models::WebSockets;
use nym_node_requests::api::v1::health::models::NodeHealth;
use nym_node_requests::api::v1::metrics::models::packets::PacketsStats;
use nym_node_requests::api::v1::metrics::models::{LegacyMixingStats, VerlocStats};
use nym_node_requests::api::v1::mixnode::models::Mixnode;
use nym_node_requests::api::v1::node::models::{
    AuxiliaryDetailsV1, BinaryBuildInformationOwned, HostSystem, NodeDescription, NodeRoles,
};
use nym_node_requests::api::v1::node_load::models::NodeLoad;
use nym_node_requests::api::{ErrorResponse, SignedHostInformation};
use nym_node_requests::routes::api::v1;

struct Node {
    node: Option<RunningNode>,
    identity: String,
    sphinx: String,
    /// The Noise key it announces (base58).
    noise: Option<String>,
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

fn start(tune: impl FnOnce(&mut Config)) -> Node {
    let home = tempfile::tempdir().unwrap();
    let settings = InitSettings {
        id: "compat".into(),
        host: "127.0.0.1".parse().unwrap(),
        announce_host: None,
        mix_port: 0,
        verloc_port: 0,
        http_api_port: 0,
    };
    let mut config = Config::new(&settings, &NodePaths::new(home.path(), "compat"));
    config.engine.cores = 1;
    config.engine.drain_timeout = Duration::from_millis(200);
    config.engine.replay_filter_packets_max = Some(10_000);
    config.host.location = "DE".into();
    config.host.hostname = "mix.example.org".into();
    config.host.accepted_operator_terms_and_conditions = true;
    tune(&mut config);
    let keys = nym_mixnode::keys::NodeKeys::generate().unwrap();
    let identity = keys.identity_base58();
    let sphinx = keys.sphinx_base58();
    let noise = keys.noise.as_ref().map(|k| k.public_base58());
    let node = node::start(
        &config,
        keys,
        Default::default(),
        NodeOptions { pin_shards: false },
    )
    .expect("the node starts");
    let api = node.addresses.http_api;
    Node {
        node: Some(node),
        identity,
        sphinx,
        noise,
        api,
        _home: home,
    }
}

fn get(api: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&api, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: compat\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("an answer");
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

fn parse<T: serde::de::DeserializeOwned>(api: SocketAddr, path: &str) -> T {
    let (status, body) = get(api, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// nym-node-requests' own route constant (already absolute: `/api/v1/...`).
fn route(absolute: String) -> String {
    assert!(absolute.starts_with("/api/v1/"), "{absolute}");
    absolute
}

#[test]
fn every_api_v1_answer_parses_with_nym_node_requests_types() {
    let node = start(|_| {});
    let api = node.api;

    let health: NodeHealth = parse(api, &route(v1::health_absolute()));
    assert!(health.status.is_up());

    let signed: SignedHostInformation = parse(api, &route(v1::host_info_absolute()));
    assert!(
        signed.verify_host_information(),
        "nym-node-requests verifies the signature"
    );
    let keys = &signed.data.keys;
    assert_eq!(keys.ed25519_identity.to_base58_string(), node.identity);
    // A static key (rotation.mode = "off") is announced with the legacy rotation id.
    assert!(keys.primary_x25519_sphinx_key.is_legacy());
    assert_eq!(
        keys.primary_x25519_sphinx_key.public_key.to_base58_string(),
        node.sphinx
    );
    assert!(keys.pre_announced_x25519_sphinx_key.is_none());
    // The Noise key, as nym-nodes announce it: version 1 and the base58 key.
    let noise = keys
        .x25519_versioned_noise
        .as_ref()
        .expect("the node announces its Noise key");
    assert_eq!(u8::from(noise.supported_version), 1);
    assert_eq!(
        Some(noise.x25519_pubkey.to_base58_string()),
        node.noise,
        "the node's own Noise key"
    );
    assert_eq!(
        signed.data.ip_address,
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(signed.data.hostname.as_deref(), Some("mix.example.org"));

    let build: BinaryBuildInformationOwned = parse(api, &route(v1::build_info_absolute()));
    assert_eq!(build.binary_name, "nym-mixnode");
    assert_eq!(build.build_version, nym_mixnode::config::VERSION);

    let roles: NodeRoles = parse(api, &route(v1::roles_absolute()));
    assert!(roles.mixnode_enabled && !roles.gateway_enabled);
    assert!(!roles.can_operate_entry_gateway() && !roles.can_operate_exit_gateway());

    let aux: AuxiliaryDetailsV1 = parse(api, &route(v1::auxiliary_absolute()));
    assert_eq!(aux.location.map(|c| c.alpha2), Some("DE"));
    assert!(aux.accepted_operator_terms_and_conditions);
    assert!(aux.announce_ports.mix_port.is_some() && aux.announce_ports.verloc_port.is_some());

    let ws: WebSockets = parse(
        api,
        &route(v1::gateway::client_interfaces::mixnet_websockets_absolute()),
    );
    assert_eq!(ws.wss_port, None);

    let _: NodeDescription = parse(api, &route(v1::description_absolute()));
    let system: HostSystem = parse(api, &route(v1::system_info_absolute()));
    assert!(system.hardware.is_some_and(|h| h.total_memory > 0));
    let _: NodeLoad = parse(api, &route(v1::load_absolute()));
    let _: Mixnode = parse(api, &route(v1::mixnode_absolute()));
    let mixing: LegacyMixingStats = parse(api, &route(v1::metrics::legacy_mixing_absolute()));
    assert_eq!(mixing.received_since_startup, 0);
    let _: PacketsStats = parse(api, &route(v1::metrics::packets_stats_absolute()));
    let _: VerlocStats = parse(api, &route(v1::metrics::verloc_absolute()));
    let (status, prometheus) = get(api, &route(v1::metrics::prometheus_absolute()));
    assert_eq!(status, 200);
    assert!(prometheus.contains("# TYPE nym_mixnode_packets_received_total counter"));

    let (status, body) = get(api, &route(v1::metrics::sessions_absolute()));
    assert_eq!(status, 404);
    let error: ErrorResponse = serde_json::from_str(&body).expect("an ErrorResponse");
    assert!(error.message.contains("/api/v1/metrics/sessions"));
}

#[test]
fn rotating_keys_are_announced_with_their_rotation_ids_and_verify() {
    // Local epochs of 2 s, two per rotation: within a few seconds the node pre-announces a
    // key, and the signed text changes with it.
    let node = start(|c| {
        c.rotation.mode = RotationMode::Local;
        c.rotation.epoch = Duration::from_secs(2);
        c.rotation.validity_epochs = 2;
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_pre_announced = false;
    let mut primaries = std::collections::BTreeSet::new();
    while Instant::now() < deadline && !(seen_pre_announced && primaries.len() >= 2) {
        let signed: SignedHostInformation = parse(node.api, &route(v1::host_info_absolute()));
        assert!(signed.verify_host_information());
        let keys = &signed.data.keys;
        assert!(!keys.primary_x25519_sphinx_key.is_legacy());
        primaries.insert(keys.primary_x25519_sphinx_key.rotation_id);
        if let Some(pre) = &keys.pre_announced_x25519_sphinx_key {
            assert_eq!(
                pre.rotation_id,
                keys.primary_x25519_sphinx_key.rotation_id + 1
            );
            seen_pre_announced = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(seen_pre_announced, "a pre-announced key was listed");
    assert!(primaries.len() >= 2, "the primary rotated: {primaries:?}");
}

#[test]
fn the_stub_nym_api_documents_and_the_announcement_parse_with_nym_api_requests_types() {
    use nym_api_requests::models::node_status::NodeRefreshBody;
    use nym_api_requests::nym_nodes::{PaginatedCachedNodesResponseV2, SemiSkimmedNodeV1};

    let mut nodes: Vec<stub::StubNode> = (2..=4)
        .map(|i| stub::StubNode::new(i, &format!("127.0.0.{i}")))
        .collect();
    nodes[0].noise = Some([9; 32]);
    let page = stub::page_json(&nodes, 0, 3, 3);
    let parsed: PaginatedCachedNodesResponseV2<SemiSkimmedNodeV1> =
        serde_json::from_str(&page).unwrap_or_else(|e| panic!("{e}: {page}"));
    assert_eq!(parsed.nodes.data.len(), 3);
    assert_eq!(parsed.nodes.pagination.total, 3);
    assert!(parsed.nodes.data[0].x25519_noise_versioned_key.is_some());
    assert_eq!(
        parsed.metadata.rotation_id as u64,
        stub::epoch_and_rotation().1
    );
    let schedule: nym_api_requests::models::mixnet::KeyRotationInfoResponse =
        serde_json::from_str(&stub::schedule_json()).expect("the schedule parses");
    assert_eq!(
        schedule.details.key_rotation_state.validity_epochs as u64,
        stub::VALIDITY_EPOCHS
    );

    // A node with nym-api's schedule announces itself; nym-api's own check accepts it.
    let api = stub::StubNymApi::start(nodes, 2);
    let node = start(|c| {
        c.rotation.mode = RotationMode::Network;
        c.rotation.nym_api = Some(api.base());
        c.topology.source = "nym-api".into();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Some(body) = api.refresh_bodies().into_iter().next() {
            break body;
        }
        assert!(Instant::now() < deadline, "no refresh-described request");
        std::thread::sleep(Duration::from_millis(50));
    };
    let refresh: NodeRefreshBody = serde_json::from_str(&body).expect("a NodeRefreshBody");
    assert!(refresh.verify_signature(), "nym-api verifies the request");
    assert!(!refresh.is_stale());
    assert_eq!(refresh.node_identity.to_base58_string(), node.identity);
    let signed: SignedHostInformation = parse(node.api, &route(v1::host_info_absolute()));
    assert!(signed.verify_host_information());
    assert_eq!(
        signed.data.keys.primary_x25519_sphinx_key.rotation_id as u64,
        stub::epoch_and_rotation().1
    );
}
