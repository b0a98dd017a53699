//! The topology file: the list of nodes that VerLoc measures, that the local-mixnet scripts
//! write and that the probe reads.
//!
//! ```json
//! {
//!   "nodes": [
//!     {
//!       "identity_key": "<base58 Ed25519 public key>",
//!       "sphinx_key": "<base58 X25519 public key>",
//!       "host": "127.0.0.1",
//!       "mix_port": 1789,
//!       "verloc_port": 1790
//!     }
//!   ]
//! }
//! ```
//!
//! `host` is an IP address or a DNS name. Optional fields, as nym-api describes today's nodes:
//! `ip_addresses` (more addresses of the node, for the egress filter and inbound room),
//! `sphinx_rotation_id` (the rotation of `sphinx_key`) and `noise_key` (base58 X25519 Noise
//! public key). Other fields, at the top or in an entry, are ignored so that writers may add
//! their own. An entry that does not check (a key that is not 32
//! base58 bytes, a port of 0, a missing field) is skipped and reported by its index and
//! identity key; the rest of the file still counts.
//!
//! The file comes from a path or from an `http://` or `https://` URL ([`TopologySource`],
//! fetched with ureq over rustls). nym-api's node list is read by [`known`] and
//! [`refresh`] into the same [`Topology`]. Limits: [`TOPOLOGY_BYTES_MAX`] bytes and
//! [`TOPOLOGY_NODES_MAX`] entries.
//!
//! Parsing ([`parse_topology`]) is pure; only [`TopologySource::load`] does I/O.

pub mod fetch;
pub mod known;
pub mod refresh;

pub use fetch::{http_get, FetchError};

pub use known::{KnownNodes, NYM_API_SOURCE};

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest topology document read, in bytes.
pub const TOPOLOGY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most entries read; later ones are skipped.
pub const TOPOLOGY_NODES_MAX: usize = 10_000;
/// Longest host name accepted.
const HOST_LENGTH_MAX: usize = 253;

/// One entry as written in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyEntry {
    /// Ed25519 identity public key, base58.
    pub identity_key: String,
    /// X25519 Sphinx public key, base58.
    pub sphinx_key: String,
    /// IP address or DNS name.
    pub host: String,
    /// Mix port.
    pub mix_port: u16,
    /// VerLoc port.
    pub verloc_port: u16,
    /// More IP addresses of the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// The rotation `sphinx_key` belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sphinx_rotation_id: Option<u32>,
    /// X25519 Noise public key, base58.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_key: Option<String>,
}

/// The file as written: what scripts and tests serialise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyFile {
    /// The nodes.
    pub nodes: Vec<TopologyEntry>,
}

impl TopologyFile {
    /// Pretty JSON text of the file.
    pub fn to_json_pretty(&self) -> String {
        // Plain strings and numbers always serialise.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// One node, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyNode {
    /// Identity key.
    pub identity: VerifyingKey,
    /// Sphinx key.
    pub sphinx_key: x25519_dalek::PublicKey,
    /// IP address or DNS name.
    pub host: String,
    /// Mix port.
    pub mix_port: u16,
    /// VerLoc port.
    pub verloc_port: u16,
    /// Its other IP addresses (besides `host`).
    pub addresses: Vec<IpAddr>,
    /// The rotation of `sphinx_key`, when the source says.
    pub sphinx_rotation_id: Option<u32>,
    /// Its Noise public key, if it has one.
    pub noise_key: Option<[u8; 32]>,
}

impl TopologyNode {
    /// The identity key in base58.
    pub fn identity_base58(&self) -> String {
        bs58::encode(self.identity.as_bytes()).into_string()
    }
}

/// An entry that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEntry {
    /// Position in `nodes`, from 0.
    pub index: usize,
    /// Its `identity_key` as written, when there is one.
    pub identity_key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for SkippedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.identity_key {
            Some(key) => write!(
                f,
                "nodes[{}] (identity_key {key}): {}",
                self.index, self.reason
            ),
            None => write!(f, "nodes[{}]: {}", self.index, self.reason),
        }
    }
}

/// A parsed topology: the good nodes and the skipped entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Nodes that checked, in file order.
    pub nodes: Vec<TopologyNode>,
    /// Entries that did not.
    pub skipped: Vec<SkippedEntry>,
}

/// The topology could not be had at all.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The source string is not a path or an `http://` URL.
    #[error("topology source '{source_text}' {problem}. Fix: give a file path or an http:// URL")]
    BadSource {
        /// What was given.
        source_text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The file could not be read.
    #[error("cannot read topology file {path}: {source}. Fix: check the path (`source` in [topology], `topology` in [verloc], or --topology)")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The URL could not be fetched.
    #[error("cannot fetch topology from {url}: {detail}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
        /// Its class ([`FetchError::kind`]).
        kind: &'static str,
    },
    /// The document is larger than [`TOPOLOGY_BYTES_MAX`].
    #[error("topology from {origin} is larger than {TOPOLOGY_BYTES_MAX} bytes")]
    TooLarge {
        /// The path or URL.
        origin: String,
    },
    /// The document is not JSON of the expected shape.
    #[error("topology from {origin} is not valid: {detail}. Fix: it must be a JSON object {{\"nodes\": [...]}} (see the README, section VerLoc)")]
    Invalid {
        /// The path or URL.
        origin: String,
        /// What the parser said.
        detail: String,
    },
}

/// Parse a topology document. `origin` (a path or URL) only goes into error messages.
pub fn parse_topology(text: &str, origin: &str) -> Result<Topology, TopologyError> {
    let invalid = |detail: String| TopologyError::Invalid {
        origin: origin.to_string(),
        detail,
    };
    if text.len() > TOPOLOGY_BYTES_MAX {
        return Err(TopologyError::TooLarge {
            origin: origin.to_string(),
        });
    }
    let value: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let entries = value
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("there is no array `nodes` at the top".to_string()))?;
    let mut topology = Topology::default();
    for (index, entry) in entries.iter().enumerate() {
        let identity_key = entry
            .get("identity_key")
            .and_then(Value::as_str)
            .map(|s| s.chars().take(64).collect::<String>());
        if index >= TOPOLOGY_NODES_MAX {
            topology.skipped.push(SkippedEntry {
                index,
                identity_key,
                reason: format!("more than {TOPOLOGY_NODES_MAX} entries"),
            });
            continue;
        }
        match check_entry(entry) {
            Ok(node) => topology.nodes.push(node),
            Err(reason) => topology.skipped.push(SkippedEntry {
                index,
                identity_key,
                reason,
            }),
        }
    }
    Ok(topology)
}

fn decode_key(text: &str, field: &str) -> Result<[u8; 32], String> {
    let bytes = bs58::decode(text)
        .into_vec()
        .map_err(|e| format!("`{field}` is not base58 ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("`{field}` decodes to {} bytes, not 32", bytes.len()))
}

fn check_entry(entry: &Value) -> Result<TopologyNode, String> {
    let entry: TopologyEntry = serde_json::from_value(entry.clone()).map_err(|e| e.to_string())?;
    let identity = VerifyingKey::from_bytes(&decode_key(&entry.identity_key, "identity_key")?)
        .map_err(|_| "`identity_key` is not a valid Ed25519 public key".to_string())?;
    let sphinx_key = x25519_dalek::PublicKey::from(decode_key(&entry.sphinx_key, "sphinx_key")?);
    let host = entry.host.trim();
    if host.is_empty()
        || host.len() > HOST_LENGTH_MAX
        || host.chars().any(|c| c.is_whitespace() || c == '/')
    {
        return Err(format!(
            "`host` '{}' is not an IP address or host name",
            entry.host
        ));
    }
    for (field, port) in [
        ("mix_port", entry.mix_port),
        ("verloc_port", entry.verloc_port),
    ] {
        if port == 0 {
            return Err(format!("`{field}` is 0"));
        }
    }
    let mut addresses = Vec::new();
    for text in entry
        .ip_addresses
        .iter()
        .take(known::ADDRESSES_PER_NODE_MAX)
    {
        let ip = text
            .trim()
            .parse()
            .map_err(|_| format!("`ip_addresses` has '{text}', not an IP address"))?;
        addresses.push(ip);
    }
    let noise_key = match &entry.noise_key {
        Some(text) => Some(decode_key(text, "noise_key")?),
        None => None,
    };
    Ok(TopologyNode {
        identity,
        sphinx_key,
        host: host.to_string(),
        mix_port: entry.mix_port,
        verloc_port: entry.verloc_port,
        addresses,
        sphinx_rotation_id: entry.sphinx_rotation_id,
        noise_key,
    })
}

/// Where the topology comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologySource {
    /// A JSON file.
    File(PathBuf),
    /// An `http://` or `https://` URL of one.
    Url(String),
}

impl TopologySource {
    /// Read `text` as an http(s) URL or, failing that, a file path. Empty means no source.
    pub fn parse(text: &str) -> Result<Option<TopologySource>, TopologyError> {
        let text = text.trim();
        let bad = |problem: &str| TopologyError::BadSource {
            source_text: text.to_string(),
            problem: problem.to_string(),
        };
        if text.is_empty() {
            return Ok(None);
        }
        let Some(rest) = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))
        else {
            if text.contains("://") {
                return Err(bad("has a scheme other than http:// or https://"));
            }
            return Ok(Some(TopologySource::File(PathBuf::from(text))));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed '[' in its host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || authority.contains('@') {
            return Err(bad("has no host, or has user info"));
        }
        if port.is_some_and(|p| p.parse::<u16>().ok().filter(|p| *p != 0).is_none()) {
            return Err(bad("has a port that is not 1 to 65535"));
        }
        Ok(Some(TopologySource::Url(text.to_string())))
    }

    /// The path or URL, for messages.
    pub fn origin(&self) -> String {
        match self {
            TopologySource::File(path) => path.display().to_string(),
            TopologySource::Url(url) => url.clone(),
        }
    }

    /// Read and parse the topology. `timeout` bounds a fetch as a whole.
    pub fn load(&self, timeout: Duration) -> Result<Topology, TopologyError> {
        let text = match self {
            TopologySource::File(path) => read_file_capped(path)?,
            TopologySource::Url(url) => {
                let body = http_get(url, timeout, TOPOLOGY_BYTES_MAX).map_err(|e| match e {
                    FetchError::TooLarge => TopologyError::TooLarge {
                        origin: url.clone(),
                    },
                    other => TopologyError::Http {
                        url: url.clone(),
                        detail: other.to_string(),
                        kind: other.kind(),
                    },
                })?;
                String::from_utf8(body).map_err(|_| TopologyError::Invalid {
                    origin: url.clone(),
                    detail: "the body is not UTF-8".to_string(),
                })?
            }
        };
        parse_topology(&text, &self.origin())
    }
}

fn read_file_capped(path: &PathBuf) -> Result<String, TopologyError> {
    let io = |source| TopologyError::File {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(TOPOLOGY_BYTES_MAX as u64 + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() > TOPOLOGY_BYTES_MAX {
        return Err(TopologyError::TooLarge {
            origin: path.display().to_string(),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use std::io::Write;

    fn entry(seed: u8) -> TopologyEntry {
        TopologyEntry {
            identity_key: bs58::encode(
                SigningKey::from_bytes(&[seed; 32])
                    .verifying_key()
                    .as_bytes(),
            )
            .into_string(),
            sphinx_key: bs58::encode([seed; 32]).into_string(),
            host: "127.0.0.1".to_string(),
            mix_port: 1789,
            verloc_port: 1790,
            ip_addresses: Vec::new(),
            sphinx_rotation_id: None,
            noise_key: None,
        }
    }

    #[test]
    fn round_trip() {
        let file = TopologyFile {
            nodes: vec![entry(1), entry(2)],
        };
        let topology = parse_topology(&file.to_json_pretty(), "t.json").unwrap();
        assert_eq!(topology.nodes.len(), 2);
        assert!(topology.skipped.is_empty());
        assert_eq!(topology.nodes[0].identity_base58(), entry(1).identity_key);
        assert_eq!(topology.nodes[1].verloc_port, 1790);
    }

    #[test]
    fn bad_entries_are_skipped_by_name() {
        let mut short_key = entry(3);
        short_key.identity_key = "abc".into();
        let mut zero_port = entry(4);
        zero_port.verloc_port = 0;
        let mut bad_host = entry(5);
        bad_host.host = "a b".into();
        let text = serde_json::json!({
            "network": "local",
            "nodes": [entry(1), short_key, {"identity_key": "X"}, zero_port, bad_host, entry(2), 7]
        })
        .to_string();
        let topology = parse_topology(&text, "t.json").unwrap();
        assert_eq!(topology.nodes.len(), 2);
        let skipped: Vec<String> = topology.skipped.iter().map(|s| s.to_string()).collect();
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(
            skipped[0].starts_with("nodes[1] (identity_key abc)"),
            "{skipped:?}"
        );
        assert!(skipped[0].contains("not 32"), "{skipped:?}");
        assert!(skipped[1].contains("missing field"), "{skipped:?}");
        assert!(skipped[2].contains("`verloc_port` is 0"), "{skipped:?}");
        assert!(skipped[3].contains("`host`"), "{skipped:?}");
        assert!(skipped[4].starts_with("nodes[6]:"), "{skipped:?}");
    }

    #[test]
    fn not_a_topology() {
        assert!(matches!(
            parse_topology("[1,2]", "t.json"),
            Err(TopologyError::Invalid { .. })
        ));
        assert!(matches!(
            parse_topology("{", "t.json"),
            Err(TopologyError::Invalid { .. })
        ));
    }

    #[test]
    fn sources() {
        assert_eq!(TopologySource::parse("  ").unwrap(), None);
        assert_eq!(
            TopologySource::parse("/etc/nym/topology.json").unwrap(),
            Some(TopologySource::File("/etc/nym/topology.json".into()))
        );
        for url in [
            "http://127.0.0.1:8080/topology.json?x=1",
            "http://[::1]/t",
            "http://example.org",
            "https://example.org/t",
            "https://[2001:db8::1]:8443/t",
        ] {
            assert_eq!(
                TopologySource::parse(url).unwrap(),
                Some(TopologySource::Url(url.into()))
            );
        }
        assert!(TopologySource::parse("ftp://example.org/t").is_err());
        assert!(TopologySource::parse("http://h:0/t").is_err());
        assert!(TopologySource::parse("http://h:x/t").is_err());
        assert!(TopologySource::parse("http://:80/t").is_err());
        assert!(TopologySource::parse("http://u@h/t").is_err());
        assert!(TopologySource::parse("http://[::1/t").is_err());
    }

    #[test]
    fn http_fetch() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = TopologyFile {
            nodes: vec![entry(1)],
        }
        .to_json_pretty();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = s.read(&mut request).unwrap();
            let request = String::from_utf8_lossy(&request[..n]).to_string();
            write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}"
            )
            .unwrap();
            request
        });
        let source = TopologySource::parse(&format!("http://{addr}/t.json"))
            .unwrap()
            .unwrap();
        let topology = source.load(Duration::from_secs(5)).unwrap();
        assert_eq!(topology.nodes.len(), 1);
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /t.json HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn http_error_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request).unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap();
        });
        let source = TopologySource::parse(&format!("http://{addr}/t.json"))
            .unwrap()
            .unwrap();
        let error = source.load(Duration::from_secs(5)).unwrap_err().to_string();
        assert!(error.contains("404"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn missing_file_names_the_path() {
        let source = TopologySource::parse("/nonexistent/topology.json")
            .unwrap()
            .unwrap();
        let error = source.load(Duration::from_secs(1)).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/topology.json"), "{error}");
    }
}
