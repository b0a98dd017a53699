//! Migration of config files written by older versions (the 0.10 and 0.11 layouts of the
//! Nym mixnode) to this version's layout.
//!
//! Pure: text in, a [`Config`] and a list of notes for the operator out. The caller keeps a
//! copy of the old file before writing the new one. A file newer than this binary, or older
//! than 0.10, is refused.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::{
    Config, ConfigError, EngineSection, HttpSection, LoggingSection, MixnodeSection, Semver,
    VerlocSection, DEFAULT_HTTP_API_PORT, DEFAULT_MIX_PORT, DEFAULT_VERLOC_PORT, VERSION,
};

/// What an upgrade did.
#[derive(Debug)]
pub enum Upgrade {
    /// The file already has this version's layout.
    Current,
    /// The file was migrated.
    Migrated {
        /// The version the file had.
        from: Semver,
        /// The new config.
        config: Box<Config>,
        /// What changed, for the operator.
        notes: Vec<String>,
    },
}

/// Migrate `text` (the contents of `path`) to this version; `id` is the node's id.
pub fn upgrade(path: &Path, text: &str, id: &str) -> Result<Upgrade, ConfigError> {
    let table = super::parse_toml(path, text)?;
    let found = super::file_version(&table).ok_or_else(|| ConfigError::Invalid {
        path: path.to_path_buf(),
        field: "mixnode.version".to_string(),
        problem: "is missing".to_string(),
        fix: "add `version = \"0.11.0\"` (the version that wrote the file) under [mixnode] and run upgrade again".to_string(),
    })?;
    let from = Semver::parse(&found).ok_or_else(|| ConfigError::Invalid {
        path: path.to_path_buf(),
        field: "mixnode.version".to_string(),
        problem: format!("is '{found}', which is not a version like 0.11.0"),
        fix: "set it to the version that wrote the file".to_string(),
    })?;
    let current = Semver::current();
    match (from.major, from.minor) {
        _ if from.cmp_minor(&current) == std::cmp::Ordering::Greater => Err(ConfigError::Version {
            path: path.to_path_buf(),
            found,
            fix: "It was written by a newer binary and cannot be downgraded. Fix: run the newer binary."
                .to_string(),
        }),
        _ if from.cmp_minor(&current) == std::cmp::Ordering::Equal => Ok(Upgrade::Current),
        (0, 10) | (0, 11) => {
            let mut notes = Vec::new();
            let config = migrate_legacy(path, &table, from, id, &mut notes)?;
            Ok(Upgrade::Migrated {
                from,
                config: Box::new(config),
                notes,
            })
        }
        _ => Err(ConfigError::Version {
            path: path.to_path_buf(),
            found,
            fix: "Only files from 0.10.x and 0.11.x can be migrated. Fix: run `init` with a new --id, or migrate with a 0.10 binary first."
                .to_string(),
        }),
    }
}

struct Reader<'a> {
    path: &'a Path,
    section: &'a str,
    table: Option<&'a Table>,
}

impl<'a> Reader<'a> {
    fn new(path: &'a Path, root: &'a Table, section: &'a str) -> Result<Reader<'a>, ConfigError> {
        let table = match root.get(section) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    field: section.to_string(),
                    problem: "is not a section".to_string(),
                    fix: format!("write it as a [{section}] section"),
                })
            }
        };
        Ok(Reader {
            path,
            section,
            table,
        })
    }

    fn invalid(&self, key: &str, problem: String, fix: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: format!("{}.{key}", self.section),
            problem,
            fix: fix.to_string(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.table?.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.invalid(
                key,
                format!("is {other}, expected a string"),
                "quote the value",
            )),
        }
    }

    fn required_string(&self, key: &str) -> Result<&'a str, ConfigError> {
        self.string(key)?.ok_or_else(|| {
            self.invalid(key, "is missing".to_string(), "restore it from your backup")
        })
    }

    fn integer(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i)),
            Some(other) => Err(self.invalid(
                key,
                format!("is {other}, expected a whole number"),
                "write a number without quotes",
            )),
        }
    }

    fn port(&self, key: &str) -> Result<Option<u16>, ConfigError> {
        match self.integer(key)? {
            None => Ok(None),
            Some(p) if (1..=65535).contains(&p) => Ok(Some(p as u16)),
            Some(p) => Err(self.invalid(
                key,
                format!("is {p}"),
                "ports are whole numbers from 1 to 65535",
            )),
        }
    }

    fn count(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        match self.integer(key)? {
            None => Ok(None),
            Some(n) if n > 0 => Ok(Some(n as usize)),
            Some(n) => Err(self.invalid(key, format!("is {n}"), "set a positive number")),
        }
    }

    /// 0.10/0.11 `[debug]` durations: integer milliseconds or a humantime string.
    fn debug_duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(ms)) if *ms >= 0 => Ok(Some(Duration::from_millis(*ms as u64))),
            Some(Value::String(s)) => humantime::parse_duration(s).map(Some).map_err(|e| {
                self.invalid(
                    key,
                    format!("is '{s}': {e}"),
                    "write a duration such as \"10s\"",
                )
            }),
            Some(other) => Err(self.invalid(
                key,
                format!("is {other}"),
                "write a duration such as \"10s\"",
            )),
        }
    }

    /// 0.10/0.11 `[verloc]`/`[rtt_measurement]` durations: a `{ secs, nanos }` table.
    fn table_duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Table(t)) => {
                let secs = t.get("secs").and_then(Value::as_integer);
                let nanos = t.get("nanos").and_then(Value::as_integer).unwrap_or(0);
                match secs {
                    Some(s) if s >= 0 && (0..1_000_000_000).contains(&nanos) => {
                        Ok(Some(Duration::new(s as u64, nanos as u32)))
                    }
                    _ => Err(self.invalid(
                        key,
                        "is not a { secs, nanos } duration".to_string(),
                        "restore it from your backup or delete the line",
                    )),
                }
            }
            Some(other) => Err(self.invalid(
                key,
                format!("is {other}"),
                "delete the line to use the default",
            )),
        }
    }
}

/// `ip`, `ip:port`, `[ip6]:port`; a host name is refused.
fn split_address(
    reader: &Reader,
    key: &str,
    text: &str,
) -> Result<(IpAddr, Option<u16>), ConfigError> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip(), Some(addr.port())));
    }
    Err(reader.invalid(
        key,
        format!("is '{text}', which is not an IP address (with an optional port)"),
        "this node announces IP addresses only: replace the host name with the node's public IP and run upgrade again",
    ))
}

fn migrate_legacy(
    path: &Path,
    root: &Table,
    from: Semver,
    id: &str,
    notes: &mut Vec<String>,
) -> Result<Config, ConfigError> {
    let known_sections = ["mixnode", "logging", "debug", "rtt_measurement", "verloc"];
    if let Some(unknown) = root.keys().find(|k| !known_sections.contains(&k.as_str())) {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            field: unknown.clone(),
            problem: format!("is not a section of a {from} config"),
            fix: "remove that section and run upgrade again".to_string(),
        });
    }
    let m = Reader::new(path, root, "mixnode")?;
    if m.table.is_none() {
        return Err(m.invalid(
            "",
            "section is missing".to_string(),
            "restore the file from your backup",
        ));
    }
    let file_id = m.required_string("id")?;
    if file_id != id {
        notes.push(format!(
            "the file names id '{file_id}'; it now carries '{id}', the folder's id"
        ));
    }

    let listening = m.required_string("listening_address")?;
    let (listening_ip, listening_port) = split_address(&m, "listening_address", listening)?;
    let (announce_ip, announce_port) = match m.string("announce_address")? {
        Some(a) => split_address(&m, "announce_address", a)?,
        None => (listening_ip, None),
    };
    // 0.11 carries the port on its own; 0.10 inside the addresses (the announce port wins, as
    // Nym's own 0.11 upgrade did).
    let mix_port = match m.port("mix_port")? {
        Some(p) => p,
        None => announce_port.or(listening_port).unwrap_or(DEFAULT_MIX_PORT),
    };
    if let (Some(a), Some(l)) = (announce_port, listening_port) {
        if a != l {
            notes.push(format!(
                "announce port {a} differs from listening port {l}; mix_port is now {a} for both"
            ));
        }
    }
    let verloc_port = m.port("verloc_port")?.unwrap_or(DEFAULT_VERLOC_PORT);
    let http_api_port = m.port("http_api_port")?.unwrap_or(DEFAULT_HTTP_API_PORT);

    for dropped in [
        "layer",
        "validator_rest_urls",
        "validator_rest_url",
        "metrics_server_url",
        "mixnet_contract_address",
        "nym_root_directory",
        "location",
    ] {
        if m.get(dropped).is_some() {
            notes.push(format!(
                "mixnode.{dropped} is no longer used and was removed"
            ));
        }
    }

    let mut engine = EngineSection::default();
    let mut http = HttpSection::default();
    let mut logging = LoggingSection::default();
    let debug = Reader::new(path, root, "debug")?;
    if let Some(d) = debug.debug_duration("packet_forwarding_initial_backoff")? {
        engine.backoff_initial = d;
    }
    if let Some(d) = debug.debug_duration("packet_forwarding_maximum_backoff")? {
        engine.backoff_max = d;
    }
    if let Some(d) = debug.debug_duration("initial_connection_timeout")? {
        engine.connect_timeout = d;
    }
    if let Some(n) = debug.count("maximum_connection_buffer_size")? {
        engine.next_hop_queue_packets_max = n;
        if n < EngineSection::default().next_hop_queue_packets_max {
            notes.push(format!(
                "engine.next_hop_queue_packets_max keeps your debug.maximum_connection_buffer_size of {n}; 2000 is recommended"
            ));
        }
    }
    if let Some(d) = debug.debug_duration("node_stats_updating_delay")? {
        http.stats_interval = d;
    }
    let logging_delay = debug
        .debug_duration("node_stats_logging_delay")?
        .or(debug.debug_duration("metrics_running_stats_logging_delay")?);
    if let Some(d) = logging_delay {
        logging.summary_interval = d;
    }

    let mut verloc = VerlocSection::default();
    let section = if root.contains_key("verloc") {
        "verloc"
    } else {
        "rtt_measurement"
    };
    let v = Reader::new(path, root, section)?;
    if let Some(n) = v.count("packets_per_node")? {
        verloc.packets_per_node = n;
    }
    if let Some(n) = v.count("tested_nodes_batch_size")? {
        verloc.batch_size = n;
    }
    for (key, slot) in [
        ("connection_timeout", &mut verloc.connect_timeout),
        ("packet_timeout", &mut verloc.packet_timeout),
        ("delay_between_packets", &mut verloc.packet_spacing),
        ("testing_interval", &mut verloc.run_interval),
        ("retry_timeout", &mut verloc.retry_interval),
    ] {
        if let Some(d) = v.table_duration(key)? {
            *slot = d;
        }
    }

    let config = Config {
        mixnode: MixnodeSection {
            version: VERSION.to_string(),
            id: id.to_string(),
            listening_address: listening_ip,
            announce_address: announce_ip,
            mix_port,
            verloc_port,
            http_api_port,
            private_identity_key_file: m.required_string("private_identity_key_file")?.into(),
            public_identity_key_file: m.required_string("public_identity_key_file")?.into(),
            private_sphinx_key_file: m.required_string("private_sphinx_key_file")?.into(),
            public_sphinx_key_file: m.required_string("public_sphinx_key_file")?.into(),
        },
        engine,
        http,
        verloc,
        logging,
        rotation: super::RotationSection::default(),
        topology: super::TopologySection::default(),
        host: super::HostSection::default(),
        monitor: super::MonitorSection::default(),
    };
    notes.push(format!(
        "listening on {listening_ip}, announcing {announce_ip}; ports mix {mix_port}, verloc {verloc_port}, http api {http_api_port}"
    ));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrated(text: &str) -> (Config, Vec<String>) {
        match upgrade(Path::new("config.toml"), text, "fixture-node").unwrap() {
            Upgrade::Migrated { config, notes, .. } => (*config, notes),
            Upgrade::Current => panic!("expected a migration"),
        }
    }

    #[test]
    fn from_0_10_splits_addresses_and_keeps_keys() {
        let (c, notes) = migrated(include_str!("../../tests/fixtures/config-0.10.toml"));
        assert_eq!(c.mixnode.version, VERSION);
        assert_eq!(
            c.mixnode.listening_address,
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.mixnode.announce_address,
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            (
                c.mixnode.mix_port,
                c.mixnode.verloc_port,
                c.mixnode.http_api_port
            ),
            (1789, 1790, 8000)
        );
        assert_eq!(
            c.mixnode.private_sphinx_key_file,
            Path::new("/home/nym/.nym/mixnodes/fixture-node/data/private_sphinx.pem")
        );
        assert!(notes.iter().any(|n| n.contains("mixnode.layer")));
    }

    #[test]
    fn from_0_11_keeps_announce_and_ports() {
        let (c, _) = migrated(include_str!("../../tests/fixtures/config-0.11.toml"));
        assert_eq!(
            c.mixnode.listening_address,
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.mixnode.announce_address,
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c.engine, EngineSection::default());
    }

    #[test]
    fn debug_and_verloc_sections_carry_over() {
        let text = format!(
            "{}\n[debug]\npacket_forwarding_initial_backoff = 5000\npacket_forwarding_maximum_backoff = \"2m\"\nmaximum_connection_buffer_size = 128\n\n[verloc]\npackets_per_node = 10\ntesting_interval = {{ secs = 3600, nanos = 0 }}\n",
            include_str!("../../tests/fixtures/config-0.11.toml").replace("[logging]\n", "[logging]\n")
        );
        let (c, notes) = migrated(&text);
        assert_eq!(c.engine.backoff_initial, Duration::from_secs(5));
        assert_eq!(c.engine.backoff_max, Duration::from_secs(120));
        assert_eq!(c.engine.next_hop_queue_packets_max, 128);
        assert!(notes.iter().any(|n| n.contains("2000 is recommended")));
        assert_eq!(c.verloc.packets_per_node, 10);
        assert_eq!(c.verloc.run_interval, Duration::from_secs(3600));
    }

    #[test]
    fn refuses_newer_older_and_host_names() {
        let newer = "[mixnode]\nversion = '99.0.0'\n";
        let err = upgrade(Path::new("c.toml"), newer, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("newer binary"), "{err}");
        let older = "[mixnode]\nversion = '0.9.2'\n";
        let err = upgrade(Path::new("c.toml"), older, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("0.10.x and 0.11.x"), "{err}");
        let named = include_str!("../../tests/fixtures/config-0.11.toml").replace(
            "announce_address = '5.6.7.8'",
            "announce_address = 'nymtech.net'",
        );
        let err = upgrade(Path::new("c.toml"), &named, "fixture-node")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mixnode.announce_address") && err.contains("public IP"),
            "{err}"
        );
    }

    #[test]
    fn current_is_left_alone() {
        let text = format!("[mixnode]\nversion = '{VERSION}'\n");
        assert!(matches!(
            upgrade(Path::new("c.toml"), &text, "x").unwrap(),
            Upgrade::Current
        ));
    }
}
