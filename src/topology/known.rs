//! The addresses of known nodes: where the node forwards with `engine.forward_to = "known"`,
//! and whose inbound connections get the room `engine.connections_reserved_known` keeps.
//!
//! Like nym-node, the check is by IP address only: a node's mix port can change with its
//! announcement, its address is what an attacker cannot pick.
//!
//! [`KnownNodes`] is built once per refresh (off the shards) and shared read-only behind an
//! `Arc`: a shard swaps its copy between two packets and never waits for another thread.
//! Building is pure: [`KnownNodes::from_topology`] takes the resolver as an argument, and
//! [`parse_nym_api_page`] reads one page of nym-api's node list from bytes.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::{SkippedEntry, Topology, TopologyNode, TOPOLOGY_NODES_MAX};

/// `topology.source` naming nym-api's node list instead of a file.
pub const NYM_API_SOURCE: &str = "nym-api";
/// nym-api's list of nodes with their addresses, read page by page.
pub const NYM_API_NODES_PATH: &str = "/v2/unstable/nym-nodes/semi-skimmed";
/// Addresses one node may announce; more are ignored.
pub const ADDRESSES_PER_NODE_MAX: usize = 16;
/// Addresses kept in all.
pub const ADDRESSES_MAX: usize = TOPOLOGY_NODES_MAX * 4;

/// A set of IP addresses of known nodes, and where it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownNodes {
    addresses: HashSet<IpAddr>,
    /// Addresses of nodes that announce a Noise key: connections from them must speak Noise.
    noise_by_ip: HashMap<IpAddr, [u8; 32]>,
    /// Each such node's mix address and key: connections to it speak Noise.
    noise_by_address: HashMap<SocketAddr, [u8; 32]>,
    /// Nodes it was built from.
    nodes: usize,
    /// The path or URL, for logs and metrics.
    origin: String,
}

impl KnownNodes {
    /// Known nodes from `nodes` (each node's addresses), read from `origin`. IPv4-mapped
    /// IPv6 addresses are kept as IPv4, as sockets report them.
    pub fn from_addresses(
        nodes: impl IntoIterator<Item = Vec<IpAddr>>,
        origin: &str,
    ) -> KnownNodes {
        let mut known = KnownNodes {
            origin: origin.to_string(),
            ..KnownNodes::default()
        };
        for addresses in nodes.into_iter().take(TOPOLOGY_NODES_MAX) {
            known.nodes += 1;
            for address in addresses.into_iter().take(ADDRESSES_PER_NODE_MAX) {
                if known.addresses.len() >= ADDRESSES_MAX {
                    break;
                }
                known.addresses.insert(canonical(address));
            }
        }
        known
    }

    /// Known nodes from a topology file's nodes; host names go through `resolve` (which may
    /// return nothing: that node is then not known).
    pub fn from_topology(
        topology: &Topology,
        origin: &str,
        resolve: &mut impl FnMut(&str) -> Vec<IpAddr>,
    ) -> KnownNodes {
        let nodes: Vec<(Vec<IpAddr>, &TopologyNode)> = topology
            .nodes
            .iter()
            .map(|node| {
                let mut ips = match node.host.parse() {
                    Ok(ip) => vec![ip],
                    Err(_) => resolve(&node.host),
                };
                ips.extend(node.addresses.iter().copied());
                (ips, node)
            })
            .collect();
        let mut known =
            KnownNodes::from_addresses(nodes.iter().map(|(ips, _)| ips.clone()), origin);
        for (ips, node) in nodes.iter().take(TOPOLOGY_NODES_MAX) {
            let Some(key) = node.noise_key else {
                continue;
            };
            for ip in ips.iter().take(ADDRESSES_PER_NODE_MAX) {
                let ip = canonical(*ip);
                if known.noise_by_ip.len() < ADDRESSES_MAX {
                    known.noise_by_ip.insert(ip, key);
                    known
                        .noise_by_address
                        .insert(SocketAddr::new(ip, node.mix_port), key);
                }
            }
        }
        known
    }

    /// Whether connections from `ip` must speak Noise: it is the address of a node that
    /// announces a Noise key (by IP only, as nym-nodes decide it).
    pub fn expects_noise_from(&self, ip: IpAddr) -> bool {
        self.noise_by_ip.contains_key(&canonical(ip))
    }

    /// The Noise key of the node at mix address `address`, if it announces one.
    pub fn noise_key_of(&self, address: SocketAddr) -> Option<[u8; 32]> {
        let address = SocketAddr::new(canonical(address.ip()), address.port());
        self.noise_by_address.get(&address).copied()
    }

    /// Addresses of nodes that announce a Noise key.
    pub fn noise_addresses(&self) -> usize {
        self.noise_by_ip.len()
    }

    /// Whether `ip` is the address of a known node.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addresses.contains(&canonical(ip))
    }

    /// Distinct addresses.
    pub fn addresses(&self) -> usize {
        self.addresses.len()
    }

    /// Nodes it was built from.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Where it was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// One page of nym-api's node list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NymApiPage {
    /// The nodes that checked (each with its addresses, keys and mix port).
    pub nodes: Vec<TopologyNode>,
    /// Entries on this page that did not check, and why.
    pub skipped: Vec<SkippedEntry>,
    /// Nodes on this page, good or not.
    pub entries: usize,
    /// Nodes in the whole list, when the page says.
    pub total: Option<usize>,
}

/// VerLoc port assumed for nodes from nym-api (its node list does not carry one).
pub const NYM_API_VERLOC_PORT: u16 = 1790;

fn key_field(value: Option<&Value>, field: &str) -> Result<[u8; 32], String> {
    let text = value
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{field}` is missing"))?;
    super::decode_key(text, field)
}

/// One entry of the list: `basic` (`SkimmedNodeV1`) and the Noise key.
fn check_nym_api_node(node: &Value, rotation_id: Option<u32>) -> Result<TopologyNode, String> {
    let basic = node.get("basic").unwrap_or(node);
    let identity = key_field(
        basic.get("ed25519_identity_pubkey"),
        "ed25519_identity_pubkey",
    )?;
    let identity = ed25519_dalek::VerifyingKey::from_bytes(&identity)
        .map_err(|_| "`ed25519_identity_pubkey` is not a valid Ed25519 public key".to_string())?;
    let sphinx = key_field(basic.get("x25519_sphinx_pubkey"), "x25519_sphinx_pubkey")?;
    let addresses: Vec<IpAddr> = basic
        .get("ip_addresses")
        .and_then(Value::as_array)
        .ok_or("`ip_addresses` is missing")?
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|text| text.trim().parse().ok())
        .take(ADDRESSES_PER_NODE_MAX)
        .collect();
    let Some(first) = addresses.first() else {
        return Err("`ip_addresses` holds no IP address".to_string());
    };
    let mix_port = basic
        .get("mix_port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or("`mix_port` is missing or not 1 to 65535")?;
    let noise = node
        .get("x25519_noise_versioned_key")
        .or_else(|| node.get("noise_key"))
        .filter(|v| !v.is_null());
    let noise_key = match noise {
        Some(noise) => Some(key_field(noise.get("x25519_pubkey"), "x25519_pubkey")?),
        None => None,
    };
    Ok(TopologyNode {
        identity,
        sphinx_key: x25519_dalek::PublicKey::from(sphinx),
        host: first.to_string(),
        mix_port,
        verloc_port: NYM_API_VERLOC_PORT,
        addresses: addresses[1..].to_vec(),
        sphinx_rotation_id: rotation_id,
        noise_key,
    })
}

/// Read one page of `GET /v2/unstable/nym-nodes/semi-skimmed`
/// (`PaginatedCachedNodesResponseV2<SemiSkimmedNodeV1>`): the nodes are under `nodes.data`,
/// `nodes.pagination.total` counts the whole list, and `metadata.rotation_id` is the rotation
/// of the Sphinx keys listed. A bare `nodes` or `data` array is read too. An entry that does
/// not check (a bad key, no address, no mix port) is skipped with its reason.
pub fn parse_nym_api_page(body: &[u8]) -> Result<NymApiPage, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let nodes_value = value.get("nodes").unwrap_or(&value);
    let list = nodes_value
        .get("data")
        .and_then(Value::as_array)
        .or_else(|| nodes_value.as_array())
        .or_else(|| value.get("data").and_then(Value::as_array))
        .ok_or("there is no node list (`nodes.data`)")?;
    let total = nodes_value
        .get("pagination")
        .and_then(|p| p.get("total"))
        .and_then(Value::as_u64)
        .map(|t| t as usize);
    let rotation_id = value
        .get("metadata")
        .and_then(|m| m.get("rotation_id"))
        .and_then(Value::as_u64)
        .and_then(|r| u32::try_from(r).ok());
    let mut page = NymApiPage {
        entries: list.len(),
        total,
        ..NymApiPage::default()
    };
    for (index, node) in list.iter().enumerate().take(TOPOLOGY_NODES_MAX) {
        match check_nym_api_node(node, rotation_id) {
            Ok(node) => page.nodes.push(node),
            Err(reason) => page.skipped.push(SkippedEntry {
                index,
                identity_key: node
                    .get("basic")
                    .unwrap_or(node)
                    .get("ed25519_identity_pubkey")
                    .and_then(Value::as_str)
                    .map(|s| s.chars().take(64).collect()),
                reason,
            }),
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> IpAddr {
        text.parse().expect("an IP literal")
    }

    #[test]
    fn addresses_are_matched_by_ip_with_v4_mapped_v6_as_v4() {
        let known = KnownNodes::from_addresses(
            vec![
                vec![a("10.0.0.1"), a("2001:db8::1")],
                vec![a("::ffff:10.0.0.2")],
            ],
            "test",
        );
        assert_eq!((known.nodes(), known.addresses()), (2, 3));
        assert!(known.contains(a("10.0.0.1")));
        assert!(known.contains(a("::ffff:10.0.0.1")));
        assert!(known.contains(a("10.0.0.2")));
        assert!(known.contains(a("2001:db8::1")));
        assert!(!known.contains(a("10.0.0.3")));
        assert!(!KnownNodes::default().contains(a("10.0.0.1")));
    }

    #[test]
    fn one_node_cannot_announce_the_whole_internet() {
        let many: Vec<IpAddr> = (0..1000u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let known = KnownNodes::from_addresses(vec![many], "test");
        assert_eq!(known.addresses(), ADDRESSES_PER_NODE_MAX);
    }

    fn b58(bytes: &[u8]) -> String {
        bs58::encode(bytes).into_string()
    }

    fn identity(seed: u8) -> String {
        b58(ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .verifying_key()
            .as_bytes())
    }

    #[test]
    fn a_nym_api_page_gives_each_nodes_keys_addresses_and_the_total() {
        let body = format!(
            r#"{{"metadata":{{"status":null,"absolute_epoch_id":100,"rotation_id":4,"refreshed_at":"2026-11-30T10:00:00Z"}},
          "nodes":{{"pagination":{{"total":5,"page":0,"size":4}},"data":[
            {{"basic":{{"node_id":1,"ed25519_identity_pubkey":"{id1}","ip_addresses":["1.2.3.4","2001:db8::7"],"mix_port":1789,"x25519_sphinx_pubkey":"{s1}","role":"Inactive","entry":null,"performance":"1"}},"x25519_noise_versioned_key":{{"supported_version":1,"x25519_pubkey":"{n1}"}}}},
            {{"basic":{{"node_id":2,"ed25519_identity_pubkey":"{id2}","ip_addresses":["not an ip", "5.6.7.8"],"mix_port":1800,"x25519_sphinx_pubkey":"{s1}"}},"x25519_noise_versioned_key":null}},
            {{"basic":{{"node_id":3,"ed25519_identity_pubkey":"{id3}","ip_addresses":[],"mix_port":1789,"x25519_sphinx_pubkey":"{s1}"}}}},
            {{"basic":{{"node_id":4,"ed25519_identity_pubkey":"short","ip_addresses":["9.9.9.9"],"mix_port":1789,"x25519_sphinx_pubkey":"{s1}"}}}}
          ]}}}}"#,
            id1 = identity(1),
            id2 = identity(2),
            id3 = identity(3),
            s1 = b58(&[7; 32]),
            n1 = b58(&[8; 32]),
        );
        let page = parse_nym_api_page(body.as_bytes()).expect("parses");
        assert_eq!((page.total, page.entries), (Some(5), 4));
        assert_eq!(page.nodes.len(), 2);
        let first = &page.nodes[0];
        assert_eq!(first.identity_base58(), identity(1));
        assert_eq!(first.sphinx_key.to_bytes(), [7; 32]);
        assert_eq!(first.host, "1.2.3.4");
        assert_eq!(first.addresses, vec![a("2001:db8::7")]);
        assert_eq!(first.sphinx_rotation_id, Some(4));
        assert_eq!(first.noise_key, Some([8; 32]));
        assert_eq!(first.verloc_port, NYM_API_VERLOC_PORT);
        assert_eq!(
            (
                page.nodes[1].host.as_str(),
                page.nodes[1].mix_port,
                page.nodes[1].noise_key
            ),
            ("5.6.7.8", 1800, None)
        );
        let reasons: Vec<String> = page.skipped.iter().map(|s| s.to_string()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("no IP address"), "{reasons:?}");
        assert!(
            reasons[1].starts_with("nodes[3] (identity_key short)"),
            "{reasons:?}"
        );
        let topology = Topology {
            nodes: page.nodes,
            skipped: Vec::new(),
        };
        let known = KnownNodes::from_topology(&topology, "api", &mut |_| Vec::new());
        assert!(known.contains(a("2001:db8::7")) && known.contains(a("5.6.7.8")));
        assert_eq!(known.addresses(), 3);
        // Node 1 announces a Noise key on both its addresses; node 2 none.
        assert!(known.expects_noise_from(a("1.2.3.4")));
        assert!(known.expects_noise_from(a("::ffff:1.2.3.4")));
        assert!(known.expects_noise_from(a("2001:db8::7")));
        assert!(!known.expects_noise_from(a("5.6.7.8")));
        assert_eq!(
            known.noise_key_of("1.2.3.4:1789".parse().unwrap()),
            Some([8; 32])
        );
        assert_eq!(
            known.noise_key_of("[2001:db8::7]:1789".parse().unwrap()),
            Some([8; 32])
        );
        assert_eq!(
            known.noise_key_of("1.2.3.4:1790".parse().unwrap()),
            None,
            "keyed by mix address for connections out"
        );
        assert_eq!(known.noise_key_of("5.6.7.8:1800".parse().unwrap()), None);
        assert_eq!(known.noise_addresses(), 2);
        assert!(parse_nym_api_page(b"{\"nodes\": 5}").is_err());
        assert!(parse_nym_api_page(b"<html>").is_err());
    }

    #[test]
    fn topology_host_names_go_through_the_resolver() {
        use crate::topology::TopologyNode;
        use ed25519_dalek::SigningKey;
        let node = |host: &str| TopologyNode {
            identity: SigningKey::from_bytes(&[1; 32]).verifying_key(),
            sphinx_key: x25519_dalek::PublicKey::from([2; 32]),
            host: host.to_string(),
            mix_port: 1789,
            verloc_port: 1790,
            addresses: Vec::new(),
            sphinx_rotation_id: None,
            noise_key: None,
        };
        let topology = Topology {
            nodes: vec![node("10.1.1.1"), node("mix.example"), node("gone.example")],
            skipped: Vec::new(),
        };
        let mut asked = Vec::new();
        let known = KnownNodes::from_topology(&topology, "file", &mut |host| {
            asked.push(host.to_string());
            if host == "mix.example" {
                vec![a("10.2.2.2")]
            } else {
                Vec::new()
            }
        });
        assert_eq!(asked, ["mix.example", "gone.example"]);
        assert!(known.contains(a("10.1.1.1")));
        assert!(known.contains(a("10.2.2.2")));
        assert_eq!((known.nodes(), known.addresses()), (3, 2));
    }
}
