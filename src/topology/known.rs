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

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::Value;

use super::{Topology, TOPOLOGY_NODES_MAX};

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
        let nodes = topology.nodes.iter().map(|node| match node.host.parse() {
            Ok(ip) => vec![ip],
            Err(_) => resolve(&node.host),
        });
        KnownNodes::from_addresses(nodes.collect::<Vec<_>>(), origin)
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
    /// Each node's announced addresses (entries without any are left out).
    pub nodes: Vec<Vec<IpAddr>>,
    /// Nodes on this page, with or without addresses.
    pub entries: usize,
    /// Nodes in the whole list, when the page says.
    pub total: Option<usize>,
}

/// Read one page of `GET /v2/unstable/nym-nodes/semi-skimmed`: the nodes are under
/// `nodes.data` (each with its addresses in `basic.ip_addresses`), and `nodes.pagination.total`
/// counts the whole list. Other shapes seen from nym-api (a bare `nodes` or `data` array,
/// `ip_addresses` at the node's top) are read too; unparsable addresses are skipped.
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
    let mut page = NymApiPage {
        entries: list.len(),
        total,
        ..NymApiPage::default()
    };
    for node in list.iter().take(TOPOLOGY_NODES_MAX) {
        let basic = node.get("basic").unwrap_or(node);
        let Some(addresses) = basic.get("ip_addresses").and_then(Value::as_array) else {
            continue;
        };
        let ips: Vec<IpAddr> = addresses
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|text| text.trim().parse().ok())
            .take(ADDRESSES_PER_NODE_MAX)
            .collect();
        if !ips.is_empty() {
            page.nodes.push(ips);
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

    #[test]
    fn a_nym_api_page_gives_each_nodes_addresses_and_the_total() {
        let body = br#"{"status":"fresh","refreshed_at":"2026-11-30T10:00:00Z",
          "nodes":{"pagination":{"total":3,"page":0,"size":2},"data":[
            {"basic":{"node_id":1,"ed25519_identity_pubkey":"x","ip_addresses":["1.2.3.4","2001:db8::7"],"mix_port":1789},"x25519_noise_versioned_pubkey":null},
            {"basic":{"node_id":2,"ip_addresses":["not an ip", "5.6.7.8"]}},
            {"basic":{"node_id":3,"ip_addresses":[]}}
          ]}}"#;
        let page = parse_nym_api_page(body).expect("parses");
        assert_eq!(page.total, Some(3));
        assert_eq!(page.entries, 3);
        assert_eq!(
            page.nodes,
            vec![vec![a("1.2.3.4"), a("2001:db8::7")], vec![a("5.6.7.8")],]
        );
        let bare = parse_nym_api_page(br#"{"nodes":[{"ip_addresses":["9.9.9.9"]}]}"#).unwrap();
        assert_eq!(bare.nodes, vec![vec![a("9.9.9.9")]]);
        assert_eq!(bare.total, None);
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
