//! The node's configuration: where its files live, what `config.toml` holds, and how a file
//! written by an older version is brought up to date ([`upgrade`]).
//!
//! Loading checks everything before anything starts: a bad file is refused with a message that
//! names the file, the line or field, and the fix. This module does not touch keys beyond
//! naming their paths (see [`crate::keys`]).

pub mod description;
pub mod upgrade;

use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::keys::KeyPaths;
use crate::sphinx::HopProcessorKind;

/// The version this binary writes and runs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Environment variable that overrides the home folder (default `~/.nym`).
pub const HOME_ENV: &str = "NYM_MIXNODE_HOME";

/// Default port for mix traffic.
pub const DEFAULT_MIX_PORT: u16 = 1789;
/// Default port for VerLoc.
pub const DEFAULT_VERLOC_PORT: u16 = 1790;
/// Default port for the HTTP API.
pub const DEFAULT_HTTP_API_PORT: u16 = 8000;

/// A config problem, as a person reads it: the file, where, what, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not there.
    #[error("config file {path} does not exist. Fix: run `nym-mixnode init --id {id} --host <your IP>` first, or check --id and ${HOME_ENV}")]
    Missing {
        /// The config file.
        path: PathBuf,
        /// The node id asked for.
        id: String,
    },
    /// The file could not be read or written. (The I/O error is part of the message, not a
    /// `source`, so that it is printed once.)
    #[error("cannot access config file {path}: {cause}. Fix: {}", io_fix(.cause, .path))]
    Io {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type.
    #[error("config file {path} is invalid:\n{detail}\nFix: {fix}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the parser said, with line and column.
        detail: String,
        /// What to do.
        fix: String,
    },
    /// A value parsed but is not allowed.
    #[error("config file {path}: field `{field}` {problem}\nFix: {fix}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted field name, e.g. `mixnode.mix_port`.
        field: String,
        /// What is wrong with it.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The file was written by a version this binary does not run as is.
    #[error("config file {path} has version {found}, this binary is version {VERSION}. {fix}")]
    Version {
        /// The config file.
        path: PathBuf,
        /// The version in the file.
        found: String,
        /// What to do.
        fix: String,
    },
}

/// What to do about a config or description file that cannot be read or written.
fn io_fix(cause: &std::io::Error, path: &Path) -> String {
    match cause.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "run the node as the user that owns its home (see `ls -l {}`), or give that user the files with chown -R",
            path.display()
        ),
        std::io::ErrorKind::StorageFull => "free space on that disk, then try again".to_string(),
        _ => format!(
            "check that {} is a readable file on a working disk; restore it from your backup if it is damaged",
            path.display()
        ),
    }
}

/// The home folder: `$NYM_MIXNODE_HOME`, else `~/.nym`.
pub fn home_dir() -> PathBuf {
    if let Some(home) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let user_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    user_home.join(".nym")
}

/// The folders and files of one node id.
#[derive(Clone, Debug)]
pub struct NodePaths {
    /// `<home>/mixnodes/<id>`.
    pub root: PathBuf,
}

impl NodePaths {
    /// Paths of node `id` under `home`.
    pub fn new(home: &Path, id: &str) -> NodePaths {
        NodePaths {
            root: home.join("mixnodes").join(id),
        }
    }

    /// `config/`.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }

    /// `config/config.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.config_dir().join("config.toml")
    }

    /// `config/description.toml`.
    pub fn description_file(&self) -> PathBuf {
        self.config_dir().join("description.toml")
    }

    /// `data/`.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
}

/// Check a node id: it becomes a folder name.
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid id '{id}': use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

/// Parse a host given by a person: an IPv4 or IPv6 address, nothing else.
pub fn parse_host(text: &str) -> Result<IpAddr, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Err(format!(
            "'{text}' includes a port; pass the address alone ('{}') and set the port with --mix-port",
            addr.ip()
        ));
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        if inner.parse::<std::net::Ipv6Addr>().is_ok() {
            return Err(format!(
                "'{text}': pass the IPv6 address without brackets ('{inner}')"
            ));
        }
    }
    Err(format!(
        "'{text}' is not an IP address; pass an IPv4 address such as 203.0.113.7 or an IPv6 address such as 2001:db8::7 (host names are not accepted: resolve the name first, e.g. with `dig +short NAME`)"
    ))
}

/// The whole `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity, addresses, ports and key files.
    pub mixnode: MixnodeSection,
    /// Limits and timings of the packet engine.
    #[serde(default)]
    pub engine: EngineSection,
    /// The HTTP API.
    #[serde(default)]
    pub http: HttpSection,
    /// Latency measurements between nodes.
    #[serde(default)]
    pub verloc: VerlocSection,
    /// Log output.
    #[serde(default)]
    pub logging: LoggingSection,
    /// Sphinx key rotation.
    #[serde(default)]
    pub rotation: RotationSection,
    /// Which nodes exist.
    #[serde(default)]
    pub topology: TopologySection,
    /// How the node describes itself on `/api/v1/`.
    #[serde(default)]
    pub host: HostSection,
    /// The node's loops through itself and the network.
    #[serde(default)]
    pub monitor: MonitorSection,
}

/// `[monitor]`: loop packets the node sends through itself (and other nodes) to see that it
/// mixes: `/report` and `/history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSection {
    /// Whether to send loops at all.
    pub enabled: bool,
    /// Time between two rounds of loops.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Loops per round: the first through the node alone, the others through other nodes
    /// of the topology when there is one.
    pub loops_per_interval: usize,
    /// Mean of the delay a loop asks of each hop (exponential, as a client draws it).
    #[serde(with = "humantime_serde")]
    pub mean_delay: Duration,
    /// A loop back later than its delays plus this is late.
    #[serde(with = "humantime_serde")]
    pub late_after: Duration,
    /// A loop not back this long after it was sent is lost.
    #[serde(with = "humantime_serde")]
    pub lost_after: Duration,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            enabled: true,
            interval: Duration::from_secs(15),
            loops_per_interval: 3,
            mean_delay: Duration::from_millis(50),
            late_after: Duration::from_secs(2),
            lost_after: Duration::from_secs(30),
        }
    }
}

/// `[host]`: what the node says of itself on `/api/v1/` beyond its keys and addresses (the
/// addresses are `mixnode.announce_address`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSection {
    /// A DNS name of this machine for host-information (empty: none).
    pub hostname: String,
    /// ISO 3166 alpha-2 code of the country the machine is in, e.g. "DE" (empty: unsaid).
    pub location: String,
    /// Whether the operator accepted Nym's operator terms and conditions
    /// (<https://nymtech.net/terms-and-conditions/operators/v1.0.0>).
    pub accepted_operator_terms_and_conditions: bool,
}

/// `[rotation]`: where the Sphinx key schedule comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationSection {
    /// "off" (one static key, the 0.11 network; the default), "local" (the node's own
    /// schedule) or "network" (nym-api's).
    pub mode: crate::rotation::RotationMode,
    /// nym-api's base URL for `mode = "network"`, e.g. "https://validator.nymtech.net/api".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nym_api: Option<String>,
    /// How long an epoch lasts with `mode = "local"`.
    #[serde(with = "humantime_serde")]
    pub epoch: Duration,
    /// Epochs a key is primary for with `mode = "local"`.
    pub validity_epochs: u32,
    /// How often nym-api is asked for the schedule with `mode = "network"`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// Packets a static key's replay filter generation is sized for when
/// `engine.replay_filter_packets_max` is unset.
pub const REPLAY_FILTER_PACKETS_STATIC: u64 = 10_000_000;

impl Default for RotationSection {
    fn default() -> Self {
        RotationSection {
            mode: crate::rotation::RotationMode::Off,
            nym_api: None,
            epoch: Duration::from_secs(3600),
            validity_epochs: 24,
            poll_interval: Duration::from_secs(600),
        }
    }
}

/// `[mixnode]`: the fields of the operator guide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixnodeSection {
    /// The version of the binary that wrote this file.
    pub version: String,
    /// The node id (its folder name).
    pub id: String,
    /// The address the node binds.
    pub listening_address: IpAddr,
    /// The address the node announces to others.
    pub announce_address: IpAddr,
    /// Mix traffic port.
    pub mix_port: u16,
    /// VerLoc port.
    pub verloc_port: u16,
    /// HTTP API port.
    pub http_api_port: u16,
    /// Ed25519 private key file.
    pub private_identity_key_file: PathBuf,
    /// Ed25519 public key file.
    pub public_identity_key_file: PathBuf,
    /// X25519 private key file.
    pub private_sphinx_key_file: PathBuf,
    /// X25519 public key file.
    pub public_sphinx_key_file: PathBuf,
}

/// Where packets may be forwarded: config `engine.forward_to`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardTo {
    /// Only to IP addresses of nodes the topology lists (when one is configured).
    #[default]
    Known,
    /// Wherever a packet's routing says.
    Any,
}

/// Noise on mixnet links: config `engine.noise`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseMode {
    /// Announce the node's Noise key, and speak Noise with every peer the topology lists
    /// with a key (plain TCP with the others), as nym-nodes do.
    #[default]
    Auto,
    /// Announce no Noise key and never speak Noise.
    Off,
}

/// `[topology]`: which nodes exist, for forwarding, inbound room and VerLoc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologySection {
    /// A topology file (path), an http(s):// URL of one, or "nym-api" to read the nodes
    /// nym-api lists (`rotation.nym_api`); empty for none.
    pub source: String,
    /// How often the topology is read again.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How long one read may take (a file, a URL, or each page of nym-api's list); a read
    /// that takes longer fails and is tried again later.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
}

impl Default for TopologySection {
    fn default() -> Self {
        TopologySection {
            source: String::new(),
            refresh_interval: Duration::from_secs(600),
            read_timeout: Duration::from_secs(20),
        }
    }
}

/// A value of `field` in the file at `path` that the node cannot use: what is wrong and the fix.
fn invalid_field(path: &Path, field: &str, problem: String, fix: &str) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        problem,
        fix: fix.to_string(),
    }
}

/// Smallest per-next-hop and cross-shard byte limits: room for a few of the largest frames.
pub const PACKET_BYTES_LIMIT_MIN: u64 = 256 << 10;

/// `[engine]`: the packet engine's limits. Every queue and table has a maximum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Shards (cores) to run; 0 means one per available core.
    pub cores: usize,
    /// Which Sphinx implementation unwraps packets: "fast" (the default; the same bytes as
    /// the sphinx-packet crate, faster) or "crate" (the crate's own `process()`).
    pub hop_processor: HopProcessorKind,
    /// The longest delay a packet is held for; a packet asking for longer is held for this
    /// long and counted as clamped (as nym-node does).
    #[serde(with = "humantime_serde")]
    pub delay_max: Duration,
    /// On shutdown, how long to keep forwarding packets that fall due.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Inbound connections open at once, whole node (split between shards). When a shard is
    /// full, a new connection closes the one longest without a whole frame.
    pub connections_inbound_max: usize,
    /// Inbound connections from one source address, whole node (split between shards); more
    /// are refused and counted.
    pub connections_per_ip_max: usize,
    /// An inbound connection must deliver its first whole frame within this of the accept.
    #[serde(with = "humantime_serde")]
    pub first_frame_timeout: Duration,
    /// An inbound connection silent between frames for this long is closed.
    #[serde(with = "humantime_serde")]
    pub connection_idle_timeout: Duration,
    /// Next hops with state (queue, connection) at once, per shard: each shard keeps its own
    /// connection to each next hop it forwards to. When full, a new next hop takes the place
    /// of the least useful quiet one.
    #[serde(alias = "peers_max")]
    pub next_hops_max: usize,
    /// Packets queued per next hop while its connection opens or is busy.
    #[serde(alias = "peer_queue_packets_max")]
    pub next_hop_queue_packets_max: usize,
    /// Bytes queued and being written per next hop (packets and their records); past it
    /// packets for that next hop are dropped as next_hop_queue_full.
    pub next_hop_queue_bytes_max: u64,
    /// "known": with a topology (`[topology]`), forward only to IP addresses of the nodes it
    /// lists and drop the rest as next_hop_unknown; "any": forward wherever a packet says.
    pub forward_to: ForwardTo,
    /// Inbound connections kept for the addresses of known nodes, whole node (split between
    /// shards): connections from other addresses never fill these.
    pub connections_reserved_known: usize,
    /// A next hop with nothing to send for this long is closed and forgotten.
    #[serde(with = "humantime_serde")]
    pub next_hop_idle_timeout: Duration,
    /// A next hop whose connection fails this many times in a row is forgotten.
    pub next_hop_failures_max: u32,
    /// Packets held for their delay at once, per shard.
    pub held_packets_max: usize,
    /// Bytes of packets held at once (delay wheel, next-hop queues, writes under way), whole
    /// node (split between shards); past it packets are dropped as memory_full.
    pub packet_memory_bytes_max: u64,
    /// Packets in flight on each cross-shard channel.
    pub cross_shard_packets_max: usize,
    /// Bytes of packets in flight between shards, whole node (split between the shards
    /// they go to); past it packets are dropped as handoff_full.
    pub cross_shard_bytes_max: u64,
    /// Packets one replay filter generation is sized for under one key (whole node). Unset:
    /// 10 million with one static key, and from the measured packet rate with rotating keys
    /// (the key's lifetime x max(rate, 200/s) x 1.12, as nym-nodes size theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_filter_packets_max: Option<u64>,
    /// False-positive rate the replay filter keeps up to `replay_filter_packets_max`.
    pub replay_filter_false_positive_rate: f64,
    /// How often the replay filter is saved to `data/replay_filter.bin` (also at shutdown).
    #[serde(with = "humantime_serde")]
    pub replay_filter_save_interval: Duration,
    /// A frame must be whole within this of its first byte, or its connection is closed.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Outbound connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// "auto": Noise (XKpsk3) with peers the topology lists with a Noise key, plain TCP with
    /// the rest; "off": plain TCP only, and no Noise key announced.
    pub noise: NoiseMode,
    /// A Noise handshake, either side, must finish within this or its connection is closed.
    #[serde(with = "humantime_serde")]
    pub noise_handshake_timeout: Duration,
    /// After a failed Noise handshake from an address, its next handshakes wait this long
    /// (doubling with each failure in a row, up to 64 times); connections sooner are closed
    /// before any handshake work. "0s": no penalty.
    #[serde(with = "humantime_serde")]
    pub noise_failure_penalty: Duration,
    /// First wait after a failed connection to a next hop.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest wait between connection attempts.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            cores: 0,
            hop_processor: HopProcessorKind::Fast,
            delay_max: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(2),
            packet_memory_bytes_max: 512 << 20,
            connections_inbound_max: 4096,
            connections_per_ip_max: 256,
            first_frame_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(600),
            next_hops_max: 1024,
            next_hop_queue_packets_max: 2000,
            next_hop_queue_bytes_max: 8 << 20,
            forward_to: ForwardTo::Known,
            connections_reserved_known: 1024,
            next_hop_idle_timeout: Duration::from_secs(30),
            next_hop_failures_max: 3,
            held_packets_max: 500_000,
            cross_shard_packets_max: 8192,
            cross_shard_bytes_max: 64 << 20,
            replay_filter_packets_max: None,
            replay_filter_false_positive_rate: 1e-5,
            replay_filter_save_interval: Duration::from_secs(600),
            read_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_millis(1500),
            noise: NoiseMode::Auto,
            noise_handshake_timeout: Duration::from_millis(1500),
            noise_failure_penalty: Duration::from_secs(1),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// `[http]`: the HTTP API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// How often `/stats` is refreshed.
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
    /// Requests served at once; more wait in the accept backlog.
    pub concurrent_requests_max: usize,
    /// A request must be read within this time.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connections from one source address that workers take at once; more wait at the
    /// accept thread, which answers health checks and refuses the rest.
    pub connections_per_ip_max: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            stats_interval: Duration::from_secs(30),
            concurrent_requests_max: 64,
            request_timeout: Duration::from_secs(5),
            connections_per_ip_max: 8,
        }
    }
}

/// `[verloc]`: latency measurements between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerlocSection {
    /// Topology file (JSON), http(s) URL or "nym-api" (its node list) naming the nodes to
    /// measure; empty: the one of `[topology]`.
    pub topology: String,
    /// Echo packets sent to each node per run.
    pub packets_per_node: usize,
    /// Wait between two echo packets to one node.
    #[serde(with = "humantime_serde")]
    pub packet_spacing: Duration,
    /// How long to wait for one reply.
    #[serde(with = "humantime_serde")]
    pub packet_timeout: Duration,
    /// Connect timeout to a node being measured.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Nodes measured at once.
    pub batch_size: usize,
    /// Time between two full runs.
    #[serde(with = "humantime_serde")]
    pub run_interval: Duration,
    /// Time before retrying when the node list could not be had.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// VerLoc connections served at once; more are closed at once and counted.
    pub connections_max: usize,
    /// A VerLoc connection whose next echo does not arrive whole within this is closed.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// A VerLoc connection is closed after this long, whatever it does.
    #[serde(with = "humantime_serde")]
    pub connection_lifetime_max: Duration,
    /// A VerLoc connection is closed after answering this many echoes.
    pub echoes_per_connection_max: u64,
}

impl Default for VerlocSection {
    fn default() -> Self {
        VerlocSection {
            topology: String::new(),
            packets_per_node: 100,
            packet_spacing: Duration::from_millis(50),
            packet_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(5),
            batch_size: 50,
            run_interval: Duration::from_secs(12 * 3600),
            retry_interval: Duration::from_secs(30 * 60),
            connections_max: 256,
            read_timeout: Duration::from_secs(10),
            connection_lifetime_max: Duration::from_secs(600),
            echoes_per_connection_max: 1000,
        }
    }
}

/// `[logging]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or per module); RUST_LOG wins.
    pub level: String,
    /// How often a summary line of packets mixed and dropped is logged.
    #[serde(with = "humantime_serde")]
    pub summary_interval: Duration,
    /// "text" (`key=value` lines, the default) or "json" (one object per line).
    pub format: crate::logging::LogFormat,
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            level: "info".to_string(),
            summary_interval: Duration::from_secs(60),
            format: crate::logging::LogFormat::Text,
        }
    }
}

/// Levels a log filter may name.
pub const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Check a log filter as `logging.level` takes it: comma-separated directives, each a level
/// or `module=level` (module paths of letters, digits, `_` and `::`). A bare word that is not
/// a level would be read by the log filter as a module name and silence everything else.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Err("is empty".to_string());
    }
    for directive in filter.split(',').map(str::trim) {
        let (module, level) = match directive.split_once('=') {
            Some((module, level)) => (Some(module.trim()), level.trim()),
            None => (None, directive),
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("is {filter:?}: {level:?} is not a log level"));
        }
        if let Some(module) = module {
            let valid = !module.is_empty()
                && module.split("::").all(|part| {
                    !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !valid {
                return Err(format!("is {filter:?}: {module:?} is not a module path"));
            }
        }
    }
    Ok(())
}

/// What `init` sets; the rest takes defaults.
#[derive(Clone, Debug)]
pub struct InitSettings {
    /// Node id.
    pub id: String,
    /// Bind address.
    pub host: IpAddr,
    /// Announced address; the bind address when not given.
    pub announce_host: Option<IpAddr>,
    /// Mix port.
    pub mix_port: u16,
    /// VerLoc port.
    pub verloc_port: u16,
    /// HTTP API port.
    pub http_api_port: u16,
}

impl Config {
    /// A fresh config for `init`.
    pub fn new(settings: &InitSettings, paths: &NodePaths) -> Config {
        let keys = KeyPaths::in_data_dir(&paths.data_dir());
        Config {
            mixnode: MixnodeSection {
                version: VERSION.to_string(),
                id: settings.id.clone(),
                listening_address: settings.host,
                announce_address: settings.announce_host.unwrap_or(settings.host),
                mix_port: settings.mix_port,
                verloc_port: settings.verloc_port,
                http_api_port: settings.http_api_port,
                private_identity_key_file: keys.private_identity,
                public_identity_key_file: keys.public_identity,
                private_sphinx_key_file: keys.private_sphinx,
                public_sphinx_key_file: keys.public_sphinx,
            },
            engine: EngineSection::default(),
            http: HttpSection::default(),
            verloc: VerlocSection::default(),
            logging: LoggingSection::default(),
            rotation: RotationSection::default(),
            topology: TopologySection::default(),
            host: HostSection::default(),
            monitor: MonitorSection::default(),
        }
    }

    /// The key file paths this config names.
    pub fn key_paths(&self) -> KeyPaths {
        KeyPaths {
            private_identity: self.mixnode.private_identity_key_file.clone(),
            public_identity: self.mixnode.public_identity_key_file.clone(),
            private_sphinx: self.mixnode.private_sphinx_key_file.clone(),
            public_sphinx: self.mixnode.public_sphinx_key_file.clone(),
        }
    }

    /// Read, parse and check the config of node `id` for running: its version must be this
    /// binary's.
    pub fn load_for_run(paths: &NodePaths, id: &str) -> Result<Config, ConfigError> {
        let path = paths.config_file();
        let text = read_config_text(&path, id)?;
        let value = parse_toml(&path, &text)?;
        check_version_runnable(&path, &value, id)?;
        let config = deserialize(&path, &text)?;
        config.validate(&path)?;
        Ok(config)
    }

    /// Parse and check config text (any path, for messages).
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        parse_toml(path, text)?;
        let config = deserialize(path, text)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Serialise with a header comment.
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of strings, numbers and durations cannot fail.
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# nym-mixnode {VERSION} configuration. Durations read like \"1.5s\", \"10s\", \"12h\".\n\
             # Edit and restart the node to apply. `nym-mixnode upgrade` migrates older files.\n\n{body}"
        )
    }

    /// Write to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let io = |cause| ConfigError::Io {
            path: path.to_path_buf(),
            cause,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("toml.tmp");
        fs::write(&tmp, self.to_toml()).map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }

    /// Check the byte limits, the room kept for known nodes and `[topology]`.
    fn validate_topology(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, problem: String, fix: &str| invalid_field(path, field, problem, fix);
        let e = &self.engine;
        for (field, value) in [
            (
                "engine.next_hop_queue_bytes_max",
                e.next_hop_queue_bytes_max,
            ),
            ("engine.cross_shard_bytes_max", e.cross_shard_bytes_max),
        ] {
            if value < PACKET_BYTES_LIMIT_MIN {
                return Err(invalid(
                    field,
                    format!("is {value}"),
                    &format!("set at least {PACKET_BYTES_LIMIT_MIN} bytes (256 KiB: a few of the largest frames), or delete the line to use the default"),
                ));
            }
        }
        if e.connections_reserved_known >= e.connections_inbound_max {
            return Err(invalid(
                "engine.connections_reserved_known",
                format!(
                    "is {} with connections_inbound_max {}",
                    e.connections_reserved_known, e.connections_inbound_max
                ),
                "keep it below engine.connections_inbound_max (default 1024 of 4096)",
            ));
        }
        let t = &self.topology;
        if t.source.trim() == crate::topology::NYM_API_SOURCE && self.rotation.nym_api.is_none() {
            return Err(invalid(
                "topology.source",
                "is \"nym-api\" but rotation.nym_api is not set".to_string(),
                "set rotation.nym_api = \"https://validator.nymtech.net/api\", or give a topology file",
            ));
        }
        if t.source.trim() != crate::topology::NYM_API_SOURCE {
            if let Err(error) = crate::topology::TopologySource::parse(&t.source) {
                return Err(invalid(
                    "topology.source",
                    error.to_string(),
                    "give a file path, an http:// or https:// URL, or \"nym-api\"",
                ));
            }
        }
        if t.read_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "topology.read_timeout",
                format!("is {}", humantime::format_duration(t.read_timeout)),
                "set at least \"100ms\" (default \"20s\")",
            ));
        }
        if t.refresh_interval < Duration::from_secs(1) {
            return Err(invalid(
                "topology.refresh_interval",
                format!("is {}", humantime::format_duration(t.refresh_interval)),
                "set at least \"1s\" (default \"10m\")",
            ));
        }
        Ok(())
    }

    /// Check values serde accepted but the node cannot use.
    fn validate_rotation(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, problem: String, fix: &str| invalid_field(path, field, problem, fix);
        use crate::rotation::RotationMode;
        let r = &self.rotation;
        match r.mode {
            RotationMode::Off => {}
            RotationMode::Local => {
                if r.epoch < crate::rotation::EPOCH_MIN
                    || r.epoch > Duration::from_secs(30 * 86_400)
                {
                    return Err(invalid(
                        "rotation.epoch",
                        format!("is {}", humantime::format_duration(r.epoch)),
                        "set a duration from \"1s\" to \"30days\" (default \"1h\")",
                    ));
                }
                if r.validity_epochs == 0 {
                    return Err(invalid(
                        "rotation.validity_epochs",
                        "is 0".to_string(),
                        "set the epochs a key is primary for, at least 1 (default 24)",
                    ));
                }
            }
            RotationMode::Network => {
                let url = r.nym_api.as_deref().unwrap_or("");
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                    return Err(invalid(
                        "rotation.nym_api",
                        if url.is_empty() { "is not set".to_string() } else { format!("is {url:?}") },
                        "set nym-api's base URL, e.g. rotation.nym_api = \"https://validator.nymtech.net/api\", or use mode = \"local\" or \"off\"",
                    ));
                }
            }
        }
        if r.poll_interval < Duration::from_secs(1) {
            return Err(invalid(
                "rotation.poll_interval",
                format!("is {}", humantime::format_duration(r.poll_interval)),
                "set at least \"1s\" (default \"10m\")",
            ));
        }
        Ok(())
    }

    /// Check what serde accepted but the node cannot use, the key files included.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate_settings(path)?;
        self.validate_key_files(path)
    }

    /// That the four key files named exist.
    pub fn validate_key_files(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, problem: String, fix: &str| invalid_field(path, field, problem, fix);
        let m = &self.mixnode;
        for (field, file) in [
            (
                "mixnode.private_identity_key_file",
                &m.private_identity_key_file,
            ),
            (
                "mixnode.public_identity_key_file",
                &m.public_identity_key_file,
            ),
            (
                "mixnode.private_sphinx_key_file",
                &m.private_sphinx_key_file,
            ),
            ("mixnode.public_sphinx_key_file", &m.public_sphinx_key_file),
        ] {
            if !file.is_file() {
                return Err(invalid(
                    field,
                    format!("names {}, which does not exist", file.display()),
                    "restore the key file from your backup or correct the path",
                ));
            }
        }
        Ok(())
    }

    /// Every check of [`Self::validate`] but the key files' existence: what `init` checks
    /// before it writes anything.
    pub fn validate_settings(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, problem: String, fix: &str| invalid_field(path, field, problem, fix);
        let m = &self.mixnode;
        validate_id(&m.id)
            .map_err(|e| invalid("mixnode.id", e, "use the id of the node's folder"))?;
        for (field, port) in [
            ("mixnode.mix_port", m.mix_port),
            ("mixnode.verloc_port", m.verloc_port),
            ("mixnode.http_api_port", m.http_api_port),
        ] {
            if port == 0 {
                return Err(invalid(
                    field,
                    "is 0".to_string(),
                    "set a port between 1 and 65535 (defaults: mix 1789, verloc 1790, http api 8000)",
                ));
            }
        }
        let ports = [m.mix_port, m.verloc_port, m.http_api_port];
        if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
            return Err(invalid(
                "mixnode.mix_port",
                format!(
                    "{}, verloc_port {} and http_api_port {} must all differ",
                    ports[0], ports[1], ports[2]
                ),
                "give each service its own port",
            ));
        }
        let mo = &self.monitor;
        if mo.interval < Duration::from_secs(1) {
            return Err(invalid(
                "monitor.interval",
                format!("is {}", humantime::format_duration(mo.interval)),
                "set at least \"1s\" (default \"15s\")",
            ));
        }
        if mo.loops_per_interval == 0 || mo.loops_per_interval > 100 {
            return Err(invalid(
                "monitor.loops_per_interval",
                format!("is {}", mo.loops_per_interval),
                "set 1 to 100 (default 3), or monitor.enabled = false",
            ));
        }
        if mo.mean_delay > Duration::from_secs(1) {
            return Err(invalid(
                "monitor.mean_delay",
                format!("is {}", humantime::format_duration(mo.mean_delay)),
                "set at most \"1s\" (default \"50ms\")",
            ));
        }
        if mo.lost_after <= mo.late_after + Duration::from_secs(5) {
            return Err(invalid(
                "monitor.lost_after",
                format!(
                    "is {}, not more than late_after {} plus 5 s of delays",
                    humantime::format_duration(mo.lost_after),
                    humantime::format_duration(mo.late_after)
                ),
                "set lost_after well above late_after (defaults \"30s\" and \"2s\")",
            ));
        }
        let h = &self.host;
        let country_code =
            h.location.len() == 2 && h.location.bytes().all(|b| b.is_ascii_uppercase());
        if !h.location.is_empty() && !country_code {
            return Err(invalid(
                "host.location",
                format!("'{}' is not a two-letter country code", h.location),
                "give the ISO 3166 alpha-2 code in capitals (e.g. \"DE\"), or leave it empty",
            ));
        }
        let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if h.hostname.len() > 253 || !h.hostname.chars().all(name_ok) {
            return Err(invalid(
                "host.hostname",
                format!("'{}' is not a DNS name", h.hostname),
                "give the machine's DNS name (letters, digits, '-' and '.'), or leave it empty",
            ));
        }
        if m.announce_address.is_unspecified() {
            return Err(invalid(
                "mixnode.announce_address",
                format!("is {}, which no other node can reach", m.announce_address),
                "set the node's public IP address",
            ));
        }
        let e = &self.engine;
        let positive: [(&str, u64); 11] = [
            (
                "engine.connections_inbound_max",
                e.connections_inbound_max as u64,
            ),
            (
                "engine.connections_per_ip_max",
                e.connections_per_ip_max as u64,
            ),
            ("engine.packet_memory_bytes_max", e.packet_memory_bytes_max),
            ("engine.next_hops_max", e.next_hops_max as u64),
            (
                "engine.next_hop_queue_packets_max",
                e.next_hop_queue_packets_max as u64,
            ),
            (
                "engine.next_hop_failures_max",
                u64::from(e.next_hop_failures_max),
            ),
            ("engine.held_packets_max", e.held_packets_max as u64),
            (
                "engine.cross_shard_packets_max",
                e.cross_shard_packets_max as u64,
            ),
            (
                "engine.replay_filter_packets_max",
                e.replay_filter_packets_max.unwrap_or(1),
            ),
            (
                "http.concurrent_requests_max",
                self.http.concurrent_requests_max as u64,
            ),
            (
                "http.connections_per_ip_max",
                self.http.connections_per_ip_max as u64,
            ),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(
                    field,
                    "is 0".to_string(),
                    "set a positive limit, or delete the line to use the default",
                ));
            }
        }
        self.validate_rotation(path)?;
        self.validate_topology(path)?;
        if let Err(problem) = check_log_filter(&self.logging.level) {
            return Err(invalid(
                "logging.level",
                problem,
                "set one of \"error\", \"warn\", \"info\" (the default), \"debug\", \"trace\" or \"off\", or per module such as \"info,nym_mixnode::shard=debug\"",
            ));
        }
        let rate = e.replay_filter_false_positive_rate;
        if !(rate > 0.0 && rate < 0.01) {
            return Err(invalid(
                "engine.replay_filter_false_positive_rate",
                format!("is {rate}"),
                "set a rate above 0 and below 0.01 (default 1e-5)",
            ));
        }
        if e.delay_max > Duration::from_secs(3600) {
            return Err(invalid(
                "engine.delay_max",
                format!("is {}", humantime::format_duration(e.delay_max)),
                "set at most \"1h\" (default \"10s\")",
            ));
        }
        if e.backoff_initial.is_zero() || e.backoff_initial > e.backoff_max {
            return Err(invalid(
                "engine.backoff_initial",
                format!(
                    "is {} with backoff_max {}",
                    humantime::format_duration(e.backoff_initial),
                    humantime::format_duration(e.backoff_max)
                ),
                "set 0 < backoff_initial <= backoff_max (defaults \"10s\" and \"5m\")",
            ));
        }
        let v = &self.verloc;
        for (field, value, max) in [
            ("verloc.packets_per_node", v.packets_per_node as u64, 10_000),
            ("verloc.batch_size", v.batch_size as u64, 1_000),
            ("verloc.connections_max", v.connections_max as u64, 4_096),
            (
                "verloc.echoes_per_connection_max",
                v.echoes_per_connection_max,
                1_000_000,
            ),
        ] {
            if value == 0 || value > max {
                return Err(invalid(
                    field,
                    format!("is {value}"),
                    &format!("set a value from 1 to {max}, or delete the line to use the default"),
                ));
            }
        }
        for (field, d) in [
            ("verloc.packet_timeout", v.packet_timeout),
            ("verloc.connect_timeout", v.connect_timeout),
            ("verloc.run_interval", v.run_interval),
            ("verloc.retry_interval", v.retry_interval),
            ("verloc.read_timeout", v.read_timeout),
            ("verloc.connection_lifetime_max", v.connection_lifetime_max),
            ("engine.read_timeout", e.read_timeout),
            ("engine.first_frame_timeout", e.first_frame_timeout),
            ("engine.connection_idle_timeout", e.connection_idle_timeout),
            ("engine.connect_timeout", e.connect_timeout),
            ("engine.noise_handshake_timeout", e.noise_handshake_timeout),
            ("engine.next_hop_idle_timeout", e.next_hop_idle_timeout),
            (
                "engine.replay_filter_save_interval",
                e.replay_filter_save_interval,
            ),
            ("http.stats_interval", self.http.stats_interval),
            ("http.request_timeout", self.http.request_timeout),
            ("logging.summary_interval", self.logging.summary_interval),
        ] {
            if d.is_zero() {
                return Err(invalid(
                    field,
                    "is 0".to_string(),
                    "set a positive duration such as \"10s\"",
                ));
            }
        }
        Ok(())
    }
}

fn read_config_text(path: &Path, id: &str) -> Result<String, ConfigError> {
    fs::read_to_string(path).map_err(|cause| {
        if cause.kind() == std::io::ErrorKind::NotFound {
            ConfigError::Missing {
                path: path.to_path_buf(),
                id: id.to_string(),
            }
        } else {
            ConfigError::Io {
                path: path.to_path_buf(),
                cause,
            }
        }
    })
}

/// Parse TOML syntax only.
pub(crate) fn parse_toml(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        detail: indent(&e.to_string()),
        fix: "correct the TOML syntax at that line (strings need quotes, sections look like [mixnode])".to_string(),
    })
}

/// Deserialise from the original text, so that errors carry its line and column.
fn deserialize(path: &Path, text: &str) -> Result<Config, ConfigError> {
    toml::from_str::<Config>(text).map_err(|e| {
        let detail = indent(&e.to_string());
        let fix = if detail.contains("unknown field") {
            "remove or rename that key; `nym-mixnode init --help` and the README list the valid keys".to_string()
        } else if detail.contains("missing field") {
            "add the missing field, or run `nym-mixnode upgrade` if the file is from an older version".to_string()
        } else if detail.contains("hop processor") {
            "set engine.hop_processor to \"fast\" or \"crate\", or remove it for the default".to_string()
        } else if detail.contains("u16") {
            "ports are whole numbers from 1 to 65535".to_string()
        } else if detail.contains("IP address") || detail.contains("socket address") {
            "addresses are IP literals in quotes, such as \"0.0.0.0\", \"203.0.113.7\" or \"2001:db8::1\", not host names".to_string()
        } else if detail.contains("unknown variant") {
            "use one of the values the message lists, in quotes".to_string()
        } else if detail.contains("duration") || detail.contains("time unit") {
            "durations are strings such as \"1.5s\", \"10s\", \"5m\" or \"12h\"".to_string()
        } else {
            "correct the value at that line; see the README's Configuration section for each key".to_string()
        };
        ConfigError::Parse {
            path: path.to_path_buf(),
            detail,
            fix,
        }
    })
}

/// Version of the file: `mixnode.version`, or for 0.10/0.11 files the same place.
pub(crate) fn file_version(table: &toml::Table) -> Option<String> {
    table
        .get("mixnode")?
        .get("version")?
        .as_str()
        .map(|s| s.to_string())
}

fn check_version_runnable(path: &Path, table: &toml::Table, id: &str) -> Result<(), ConfigError> {
    let found = file_version(table).unwrap_or_else(|| "(none)".to_string());
    match Semver::parse(&found).map(|v| v.cmp_minor(&Semver::current())) {
        Some(std::cmp::Ordering::Equal) => Ok(()),
        Some(std::cmp::Ordering::Less) => Err(ConfigError::Version {
            path: path.to_path_buf(),
            found,
            fix: format!("Fix: run `nym-mixnode upgrade --id {id}` to migrate it (a copy of the old file is kept)."),
        }),
        Some(std::cmp::Ordering::Greater) => Err(ConfigError::Version {
            path: path.to_path_buf(),
            found,
            fix: "It was written by a newer binary. Fix: run that newer binary, or restore the backup the upgrade kept.".to_string(),
        }),
        None => Err(ConfigError::Version {
            path: path.to_path_buf(),
            found,
            fix: "Fix: set `version` under [mixnode] to the version that wrote the file (e.g. \"0.11.0\") and run `nym-mixnode upgrade`.".to_string(),
        }),
    }
}

/// A `major.minor.patch` version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Semver {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl Semver {
    /// Parse `1.2.3` (a pre-release or build suffix is ignored; `1.2` means `1.2.0`).
    pub fn parse(text: &str) -> Option<Semver> {
        let core = text.trim().split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let v = Semver {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next().unwrap_or(Some(0))?,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// This binary's version.
    pub fn current() -> Semver {
        // The crate version is always major.minor.patch.
        Semver::parse(VERSION).unwrap_or(Semver {
            major: 0,
            minor: 0,
            patch: 0,
        })
    }

    /// Compare by major and minor only: patch releases share a config layout.
    pub fn cmp_minor(&self, other: &Semver) -> std::cmp::Ordering {
        (self.major, self.minor).cmp(&(other.major, other.minor))
    }
}

impl fmt::Display for Semver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The parser's message, indented under the headline, without blank lines.
fn indent(text: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(parse_host("1.2.3.4").is_ok());
        assert!(parse_host("2001:db8::1").is_ok());
        assert!(parse_host("1.2.3.4:1789")
            .unwrap_err()
            .contains("--mix-port"));
        assert!(parse_host("[2001:db8::1]:1789")
            .unwrap_err()
            .contains("--mix-port"));
        assert!(parse_host("[2001:db8::1]")
            .unwrap_err()
            .contains("without brackets"));
        assert!(parse_host("example.com")
            .unwrap_err()
            .contains("not an IP address"));
    }

    #[test]
    fn ids() {
        assert!(validate_id("winston-smithnode").is_ok());
        assert!(validate_id("../x").is_err());
        assert!(validate_id("").is_err());
        assert!(validate_id(".hidden").is_err());
    }

    #[test]
    fn log_filters() {
        for good in [
            "info",
            "WARN",
            "off",
            "info,nym_mixnode::shard=debug",
            " debug ",
        ] {
            assert!(check_log_filter(good).is_ok(), "{good}");
        }
        for bad in [
            "loud",
            "",
            "info,loud",
            "=debug",
            "nym mixnode=info",
            "a::=info",
        ] {
            assert!(check_log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn semver() {
        assert_eq!(Semver::parse("0.11.0").unwrap().minor, 11);
        assert_eq!(Semver::parse("0.10.1-rc1").unwrap().patch, 1);
        assert!(Semver::parse("x").is_none());
        assert!(Semver::parse("1.2.3.4").is_none());
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let paths = NodePaths::new(dir.path(), "n1");
        let settings = InitSettings {
            id: "n1".into(),
            host: "127.0.0.1".parse().unwrap(),
            announce_host: None,
            mix_port: 1789,
            verloc_port: 1790,
            http_api_port: 8000,
        };
        let config = Config::new(&settings, &paths);
        let text = config.to_toml();
        assert!(text.contains("delay_max = \"10s\""), "{text}");
        assert!(text.contains("connect_timeout = \"1s 500ms\""), "{text}");
        assert!(text.contains("hop_processor = \"fast\""), "{text}");
        assert_eq!(deserialize(Path::new("c.toml"), &text).unwrap(), config);

        let crate_text = text.replace("hop_processor = \"fast\"", "hop_processor = \"crate\"");
        let parsed = deserialize(Path::new("c.toml"), &crate_text).unwrap();
        assert_eq!(parsed.engine.hop_processor, HopProcessorKind::Crate);

        let bad_text = text.replace("hop_processor = \"fast\"", "hop_processor = \"quick\"");
        let message = deserialize(Path::new("c.toml"), &bad_text)
            .unwrap_err()
            .to_string();
        assert!(message.contains("c.toml"), "{message}");
        assert!(message.contains("hop_processor"), "{message}");
        assert!(message.contains("\"quick\""), "{message}");
        assert!(message.contains("\"fast\" or \"crate\""), "{message}");
    }
}
